"""Hybrid stacks: per-layer mechanisms in every backbone, the pattern syntax, decoding
through mixed states, and patterns as run settings."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnarena.arena.run.config import RunConfig
from attnarena.models import (
    CausalLM,
    DualEncoder,
    EncoderClassifier,
    EncoderDecoder,
    SequenceRegressor,
)
from attnarena.stack import canonical, is_hybrid, layer_mixers, parse_stack, path_name
from conftest import run_tiny_suite

NAMES = ["gla", "softmax", "deltanet", "mamba2", "local"]


def _names(model):
    return [type(block.mixer).__name__ for block in model.blocks]


@given(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6), st.integers(1, 3),
       st.sampled_from(["+", ","]))
def test_pattern_forms_agree_and_repeat_to_the_depth(period, repeats, sep):
    """A list, its pattern string and its run-length form name the same stack; the stack
    is the period repeated to the depth."""
    runs, i = [], 0
    while i < len(period):
        j = i
        while j < len(period) and period[j] == period[i]:
            j += 1
        runs.append(period[i] if j == i + 1 else f"{j - i}*{period[i]}")
        i = j
    spelled = [sep.join(period), "+".join(runs), period, f"{repeats}*({'+'.join(period)})"]
    assert len({canonical(s) for s in spelled}) == 1
    depth = len(period) * repeats
    assert [name for name, _ in layer_mixers(sep.join(period), depth)] == period * repeats
    assert canonical(period * repeats) == canonical(period)


def test_canonical_is_the_shortest_period_and_a_plain_name_stays_plain():
    assert canonical("gla,gla,gla,softmax") == "3*gla+softmax"
    assert canonical("gla+softmax+gla+softmax") == "gla+softmax"
    assert canonical("gla,gla") == "gla" and not is_hybrid("gla,gla")
    assert canonical(["gla", ("local", {"window": 4})]) == "gla+local(window=4)"
    assert canonical([{"mixer": "local", "window": 4}]) == "local(window=4)"
    assert is_hybrid("local(window=4)") and is_hybrid("3*gla+softmax")
    assert path_name("3*gla+local(window=4)") == "3xgla+local[window-4]"


@pytest.mark.parametrize("bad, message", [
    ("gla+", "expected a mechanism name"),
    ("3gla", "expected '\\*' after a repeat count"),
    ("0*gla", "repeat count >= 1"),
    ("(gla+softmax", "'\\)' closing the group"),
    ("gla(window)", "key=value"),
    ("gla(chunk=4)", "did you mean 'chunk_size'"),
    ("glaa+softmax", "did you mean 'gla'"),
    ("", "mixer is empty"),
    ([], "non-empty list"),
    ([3], "a layer of a mixer list"),
])
def test_bad_patterns_say_what_was_expected(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_stack(bad)


def test_depth_and_model_wide_options_are_checked():
    with pytest.raises(ValueError, match="do not divide the depth 4"):
        layer_mixers("gla+softmax+gla", 4)
    with pytest.raises(ValueError, match="taken by no layer"):
        layer_mixers("gla+softmax", 2, {"window": 3})
    layers = layer_mixers("gla+gla(chunk_size=8)+softmax", 3, {"chunk_size": 4})
    assert layers == [("gla", {"chunk_size": 4}), ("gla", {"chunk_size": 8}), ("softmax", {})]


def test_in_mixer_positions_go_to_the_layers_that_take_them():
    model = CausalLM(20, depth=2, mixer="gla+softmax", position="rope")
    assert model.blocks[1].mixer.rope is not None and not hasattr(model.blocks[0].mixer, "rope")
    with pytest.raises(ValueError, match="acts inside attention"):
        CausalLM(20, depth=2, mixer="gla+deltanet", position="rope")


def test_every_backbone_takes_a_stack():
    torch.manual_seed(0)
    tokens = torch.randint(0, 20, (2, 9))
    lm = CausalLM(20, dim=16, depth=4, heads=2, mixer="3*gla+softmax")
    assert _names(lm) == ["GatedLinearAttention"] * 3 + ["SoftmaxAttention"]
    assert lm(tokens).shape == (2, 9, 20)
    encoder = EncoderClassifier(3, vocab_size=20, dim=16, depth=2, heads=2,
                                mixer=["linear", ("local", {"window": 2})])
    assert not encoder.causal and encoder(tokens).shape == (2, 3)
    # a layer without a noncausal form makes the task's encoder causal
    from attnarena.tasks.kinds import encoder_settings
    assert encoder_settings("log_linear+softmax", {})["causal"]
    assert not encoder_settings("mamba2+softmax", {})["causal"]
    dual = DualEncoder(2, vocab_size=20, dim=16, depth=2, heads=2, mixer="gla+softmax")
    assert dual(tokens, tokens[:, :5]).shape == (2, 2)
    regressor = SequenceRegressor(3, dim=16, depth=2, heads=2, mixer="deltanet,softmax")
    assert regressor(torch.randn(2, 7, 3)).shape == (2, 7)
    seq2seq = EncoderDecoder(20, 20, dim=16, depth=2, heads=2, encoder_mixer="linear+softmax",
                             decoder_mixer="gla+softmax", cross_mixer="softmax+linear")
    assert [type(b.cross_mixer).__name__ for b in seq2seq.decoder] == ["SoftmaxAttention",
                                                                      "LinearAttention"]
    assert seq2seq(tokens, tokens[:, :4]).shape == (2, 4, 20)
    with pytest.raises(ValueError, match="no cross pattern"):
        EncoderDecoder(20, 20, depth=2, cross_mixer="softmax+mamba2")


@pytest.mark.parametrize("stack", [
    "3*gla+softmax",
    "mamba2+local(window=3)+deltanet+softmax",
    "2*(retention+gated_deltanet)",
    "gla+sparse(block=4)",  # a layer without a recurrent form: full forwards
])
def test_generate_through_mixed_states_equals_full_forwards(stack):
    torch.manual_seed(0)
    model = CausalLM(30, dim=16, depth=4, heads=2, mixer=stack, max_len=32)
    prompt = torch.randint(0, 30, (3, 5))
    full = prompt
    for _ in range(10):
        full = torch.cat([full, model(full)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(model.generate(prompt, 10), full)


def test_run_ids_name_the_canonical_stack():
    spelled = [RunConfig(task="mqar", mixer=m, model={"depth": 4})
               for m in ("gla,gla,gla,softmax", "3*gla+softmax", ["gla", "gla", "gla", "softmax"])]
    ids = {c.resolve().id for c in spelled}
    assert len(ids) == 1
    (run_id,) = ids
    assert run_id.startswith("mqar-3xgla+softmax-s0-")
    assert spelled[0].resolve()["mixer"] == "3*gla+softmax"
    assert RunConfig(task="mqar", mixer="gla").resolve().id.startswith("mqar-gla-s0-")
    with pytest.raises(ValueError, match="do not divide the depth 2"):
        RunConfig(task="mqar", mixer="3*gla+softmax").resolve()
    with pytest.raises(ValueError, match="no causal pattern"):
        RunConfig(task="mqar", mixer="gla+nystromformer").resolve()


def test_suites_sweep_stacks_and_the_store_shows_them(tmp_path):
    from attnarena.arena.report.leaderboard import leaderboard_markdown
    from attnarena.arena.store import Store

    store, _ = run_tiny_suite(tmp_path, ["gla,softmax", "softmax"], "steps = 2, batch = 4",
                              model="dim = 16, depth = 2, heads = 2")
    runs = Store(store).runs(status="done")
    assert sorted(r["mixer"] for r in runs) == ["gla+softmax", "softmax"]
    assert "| gla+softmax |" in leaderboard_markdown(Store(store))
