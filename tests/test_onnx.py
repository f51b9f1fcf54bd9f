"""ONNX export and ONNX Runtime: every mechanism's graph against the torch model (padding,
another batch size and length than traced), the compression methods that end in ONNX
Runtime, bfloat16, and their refusals in one line."""
import copy
import sys

import pytest
import torch
from test_compress import data_for, outputs, relative_error, tiny

from attnarena.compress.ort import OrtModel, export_onnx
from attnarena.compress.recipe import apply_recipe, check_recipe, make_step
from attnarena.models.encoder import EncoderClassifier
from attnarena.models.lm import CausalLM
from attnarena.registry import list_mixers, mixer_info


def small_model(name):
    """A one-block model of ``name`` and a maker of its inputs: an encoder classifier
    over a right-padded batch when the mechanism has the self pattern, else a causal LM."""
    torch.manual_seed(0)
    if "self" in mixer_info(name).patterns:
        model = EncoderClassifier(3, vocab_size=50, dim=32, depth=1, heads=2, mixer=name,
                                  max_len=256)

        def inputs(batch, length):
            mask = torch.ones(batch, length, dtype=torch.bool)
            mask[-1, (2 * length) // 3:] = False
            return (torch.randint(0, 50, (batch, length)),), {"mask": mask}
    else:
        model = CausalLM(50, dim=32, depth=1, heads=2, mixer=name, max_len=256)

        def inputs(batch, length):
            return (torch.randint(0, 50, (batch, length)),), {}
    return model.eval(), inputs


@pytest.mark.parametrize("name", list_mixers())
def test_every_mechanism_exports_or_is_listed_with_the_reason(name):
    model, inputs = small_model(name)
    args, kwargs = inputs(2, 48)
    caveat = mixer_info(name).export_caveat
    if caveat:  # the reason `attnarena list` gives holds: the export is refused
        with pytest.raises(ValueError, match=f"^{name} (cannot be exported|exports to ONNX, but)"):
            export_onnx(model, lambda m: m(*args, **kwargs), name=name)
        return
    graph = export_onnx(model, lambda m: m(*args, **kwargs), name=name)
    # at lengths export_onnx did not check, called as the model is; 150 spans several
    # chunks of a chunk form (64 tokens by default)
    for batch, length in ((3, 53), (1, 17), (2, 150)):
        args, kwargs = inputs(batch, length)
        with torch.no_grad():
            expected = model(*args, **kwargs)
        got = graph(*args, **kwargs)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1e-3 * expected.abs().max()


def test_a_saved_signature_names_only_a_model_output_class(tmp_path):
    from attnarena.compress.ort import Signature

    for path in ("os:system", "subprocess:run", "transformers.utils:logging"):
        signature = Signature([], {}, {"kind": "model_output", "class": path, "keys": ["a"]})
        with pytest.raises(ValueError, match="must be a transformers ModelOutput"):
            signature.rebuild([torch.zeros(1).numpy()])


def test_a_graph_refuses_a_call_unlike_the_traced_one():
    model, inputs = small_model("softmax")
    args, kwargs = inputs(2, 16)
    graph = export_onnx(model, lambda m: m(*args, **kwargs))
    with pytest.raises(ValueError, match="keywords \\['mask'\\]; got 1 and none"):
        graph(*args)
    with pytest.raises(ValueError, match="must be a tensor"):
        graph(args[0], mask=[[True]])
    with pytest.raises(ValueError, match="^ONNX Runtime cannot run this graph on input_0 "
                                         "\\(2, 16, 1\\), mask \\(2, 16\\): "):
        graph(args[0][..., None], **kwargs)
    # int32 ids where int64 were traced: converted, the same outputs
    assert torch.equal(graph(args[0].int(), **kwargs), graph(*args, **kwargs))
    with pytest.raises(ValueError, match="holds torch.bfloat16 weights; export a float32"):
        export_onnx(copy.deepcopy(model).to(torch.bfloat16), lambda m: m(*args, **kwargs))


class _Functions(torch.nn.Module):
    """Functions whose ONNX forms the exporter registers, on one input."""

    def forward(self, x):
        return torch.nn.functional.logsigmoid(x), torch.expm1(x)


def test_registered_onnx_forms_hold_where_torchs_export_loses_precision():
    x = torch.cat([torch.linspace(-60, 30, 901), torch.logspace(-8, -1, 8),
                   -torch.logspace(-8, -1, 8)])[None]
    graph = export_onnx(_Functions(), lambda m: m(x))
    for got, want in zip(graph(x), _Functions()(x)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


class _Attention(torch.nn.Module):
    """``F.scaled_dot_product_attention`` in each way a model calls it: key mask, float masks
    (the lowest float: a row of padding alone gets uniform weights; -inf: zeros), a 4-D mask
    under which padded queries see no key, causal, none, a scale given."""

    def forward(self, x, mask):
        F = torch.nn.functional
        B, L, _ = x.shape
        q, k, v = (t.reshape(B, L, 2, 4).transpose(1, 2) for t in x.chunk(3, dim=-1))
        keys = mask[:, None, None, :]
        pairs = mask[:, None, :, None] & keys  # a padded query sees nothing
        additive = torch.zeros(B, 1, 1, L).masked_fill(~keys, float("-inf"))
        lowest = torch.zeros(B, 1, 1, L).masked_fill(~keys, torch.finfo(x.dtype).min)
        return (F.scaled_dot_product_attention(q, k, v, attn_mask=keys),
                F.scaled_dot_product_attention(q, k, v, attn_mask=lowest),  # as transformers
                F.scaled_dot_product_attention(q, k, v, attn_mask=pairs, scale=0.3),
                F.scaled_dot_product_attention(q, k, v, attn_mask=additive),
                F.scaled_dot_product_attention(q, k, v, is_causal=True),
                F.scaled_dot_product_attention(q, k, v))


def test_attention_exports_as_torch_computes_it_without_a_pass_over_its_weights():
    torch.manual_seed(0)
    x = torch.randn(3, 12, 24) * 3
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2] = False  # a sequence of padding alone: torch gives its queries zeros
    graph = export_onnx(_Attention(), lambda m: m(x, mask))
    assert "IsNaN" not in graph.operators()
    for length in (12, 5, 30):
        inputs = (torch.randn(3, length, 24) * 3, mask[:, :1].expand(3, length).clone())
        inputs[1][1, length // 2:] = False
        with torch.no_grad():
            expected = _Attention()(*inputs)
        got = graph(*inputs)
        for out, want in zip(got, expected):
            torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        assert not got[0][2].any() and not got[2][2].any() and not got[3][2].any()
        assert got[1][2].abs().amax() > 0.1  # uniform weights, as torch


def test_a_gla_with_saturated_gates_exports():
    """Trained gates reach pre-activations far below -18, where log(sigmoid(x)) in ONNX
    Runtime stops following x."""
    from attnarena.registry import create_mixer

    torch.manual_seed(0)
    mixer = create_mixer("gla", dim=32, heads=2, causal=True).eval()
    with torch.no_grad():
        mixer.gate[1].weight.mul_(20.0)
        mixer.gate[1].bias.fill_(-25.0)
    x = torch.randn(2, 40, 32)
    assert float(mixer.gate(x).detach().min()) < -40
    graph = export_onnx(mixer, lambda m: m(x))
    torch.testing.assert_close(graph(x), mixer(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["linear", "mlstm", "hedgehog"])
def test_a_graph_traced_longer_than_a_block_runs_at_every_length(name, monkeypatch):
    """Chunk forms without gradients run in blocks of a length fixed in Python; a graph
    traced from a mixer over several blocks' worth of tokens (blocks of 16 here, nothing
    recorded for autograd) still holds at other lengths (the exporter traces the parallel
    form, which has no blocks)."""
    from attnarena.ops import _blocks
    from attnarena.registry import create_mixer

    monkeypatch.setattr(_blocks, "INFERENCE_BLOCK", 16)
    torch.manual_seed(0)
    mixer = create_mixer(name, dim=32, heads=2, causal=True, chunk_size=8).eval()
    mixer.requires_grad_(False)  # nothing recorded for autograd while tracing
    x = torch.randn(2, 50, 32)
    graph = export_onnx(mixer, lambda m: m(x))
    for length in (50, 21, 77):
        x = torch.randn(2, length, 32)
        torch.testing.assert_close(graph(x), mixer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mixer", ["softmax", "gla", "mamba2"])
def test_onnx_runtime_methods_against_the_float_model(mixer):
    task, model = tiny(mixer)
    data = data_for(task, model)
    reference = outputs(model, data)
    errors = {}
    for name in ("ort", "ort_int8", "ort_int8_static"):
        compressed, reports = apply_recipe(copy.deepcopy(model), [make_step(name)], data,
                                           log=lambda m: None)
        assert isinstance(compressed, OrtModel) and reports[0]["backend"] == "onnxruntime"
        errors[name] = relative_error(outputs(compressed, data), reference)
        if name != "ort":  # every linear layer's product became an int8 one
            assert reports[0]["int8_nodes"] > 0 and reports[0]["float_weight_products"] == 0
    # float32 in another runtime: rounding only; int8: about 1% (8 bits, per-channel
    # weights), static activation ranges a little more
    assert errors["ort"] < 1e-5
    assert 1e-4 < errors["ort_int8"] < 0.05
    assert 1e-4 < errors["ort_int8_static"] < 0.1


def test_bf16_against_the_float_model(monkeypatch):
    from attnarena.compress import quantize

    task, model = tiny("gla")
    data = data_for(task, model)
    monkeypatch.setattr(quantize, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    compressed, reports = apply_recipe(copy.deepcopy(model), [make_step("bf16")], data,
                                       log=lambda m: None)
    assert {p.dtype for p in compressed.parameters()} == {torch.bfloat16}
    got = outputs(compressed, data)
    assert got.dtype == torch.float32  # outputs come back in float32
    # bfloat16 keeps 8 significant bits: errors of a few parts in a thousand per operation
    assert 1e-4 < relative_error(got, outputs(model, data)) < 0.03
    assert reports[0]["dtype"] == "bfloat16"


def test_refusals_in_one_line(monkeypatch):
    from attnarena.compress import quantize
    from attnarena.extras import MissingExtraError

    _, model = tiny("softmax")
    monkeypatch.setattr(quantize, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(ValueError, match="^bf16: this CPU has no bfloat16 instructions") as error:
        check_recipe(model, [make_step("bf16")])
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="ort must be the last step of a recipe"):
        check_recipe(model, [make_step("ort"), make_step("prune_heads")])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError, match="pip install 'attnarena\\[compress\\]'") as error:
        check_recipe(model, [make_step("ort_int8")])
    assert "\n" not in str(error.value)
    fnet, inputs = small_model("fnet")
    args, kwargs = inputs(2, 16)
    monkeypatch.delitem(sys.modules, "onnxruntime")
    with pytest.raises(ValueError, match="^fnet cannot be exported to ONNX: .*fft"):
        export_onnx(fnet, lambda m: m(*args, **kwargs), name="fnet")


def test_cli_exports_a_run_and_minilm_as_onnx(tmp_path, capsys):
    from attnarena.arena.store import Store
    from attnarena.cli import main
    from conftest import run_tiny_suite

    store, _ = run_tiny_suite(tmp_path, ["gla"], "steps = 2, batch = 8, eval_every = 2")
    run = Store(store).runs()[0]["id"]
    out = tmp_path / "onnx"
    assert main(["export", run, "--format", "onnx", "--out", str(out),
                 "--results", str(tmp_path)]) == 0
    assert "model.onnx" in capsys.readouterr().out
    from attnarena.arena.run.artifacts import load_run_subject

    subject = load_run_subject(run, results_dir=str(tmp_path))
    graph = OrtModel.load(out)
    batch = subject.batch(5, 7, "cpu", "test")
    with torch.no_grad():
        expected = subject.model(batch["inputs"])
    assert (graph(batch["inputs"]) - expected).abs().max() <= 1e-4 * expected.abs().max()
    # a causal LM's decoding step comes with it, and decodes as the model does
    from attnarena.compress.ort_decode import OrtDecoder

    prompt = batch["inputs"][:, :6]
    assert torch.equal(OrtDecoder.load(out).generate(prompt, 5),
                       subject.model.generate(prompt, 5))
    assert "`step.onnx` decodes one token" in (out / "README.md").read_text()

    assert main(["export", "--model", "minilm", "--out", str(tmp_path / "m")]) == 2
    assert "add --format onnx" in capsys.readouterr().err
    pytest.importorskip("transformers")
    assert main(["export", "--model", "minilm", "--format", "onnx",
                 "--out", str(tmp_path / "m")]) == 0
    from attnarena.pretrained import load_pretrained

    encoder = load_pretrained("minilm")
    ids, mask = encoder.tokenize(["an exported encoder", "reads sentences of any length, "
                                                         "padded on the right"])
    graph = OrtModel.load(tmp_path / "m")
    with torch.no_grad():
        expected = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
    got = graph(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert (tmp_path / "m" / "tokenizer.json").is_file()


DECODERS = [n for n in list_mixers() if mixer_info(n).decodes]


@pytest.mark.parametrize("name", DECODERS)
def test_the_step_graph_decodes_like_the_model_or_is_listed_with_the_reason(name):
    from attnarena.compress.ort_decode import (export_decoder, graph_states, prefill,
                                               torch_step)

    torch.manual_seed(0)
    lm = CausalLM(40, dim=32, depth=1, heads=2, mixer=name, max_len=64).eval()
    caveat = mixer_info(name).step_export_caveat
    if caveat:
        with pytest.raises(ValueError, match=f"^{name}'s decoding step"):
            export_decoder(lm, name=name)
        return
    decoder = export_decoder(lm, name=name)  # itself checked over tokens against `step`
    prompt = torch.randint(0, 40, (3, 7))
    # greedy decoding in ONNX Runtime alone equals the torch model's
    assert torch.equal(decoder.generate(prompt, 6), lm.generate(prompt, 6))
    # a sequence continued from the torch prefill's state, step by step, as `step` does
    logits, torch_states = prefill(lm, prompt)
    states = graph_states(lm, torch_states)
    token = logits.argmax(-1)
    for position in range(7, 10):
        got, states = decoder.step(token.numpy(), position, states)
        expected = torch_step(lm, token, position, torch_states)
        assert (torch.from_numpy(got) - expected).abs().max() <= 1e-3 * expected.abs().max()
        token = expected.argmax(-1)


@pytest.mark.parametrize("mixer", ["softmax", "gla"])
def test_an_int8_step_graph_within_int8s_tolerance(mixer):
    from attnarena.compress.ort import weight_products
    from attnarena.compress.ort_decode import export_decoder, states_after

    torch.manual_seed(0)
    lm = CausalLM(300, dim=64, depth=2, heads=2, mixer=mixer, max_len=64).eval()
    decoder = export_decoder(lm, name=mixer)
    quantized = decoder.int8()
    # every product by a weight now in int8, none left in float32
    assert len(weight_products(decoder.graph)) > 6 * 2 and not weight_products(quantized.graph)
    assert len(quantized.graph) < len(decoder.graph)
    logits, states = states_after(lm, torch.randint(0, 300, (2, 9)))
    token = logits.argmax(-1).numpy()
    a, b = list(states), list(states)
    for position in range(9, 13):
        exact, a = decoder.step(token, position, a)
        close, b = quantized.step(token, position, b)
        assert abs(close - exact).max() <= 0.05 * abs(exact).max()
        token = exact.argmax(-1)


def test_a_stack_without_a_step_has_no_step_graph():
    from attnarena.compress.ort_decode import export_decoder

    lm = CausalLM(40, dim=32, depth=2, heads=2, mixer="softmax+log_linear", max_len=64)
    with pytest.raises(ValueError, match="has a layer without a recurrent form"):
        export_decoder(lm, name="softmax+log_linear")


@pytest.mark.parametrize("name,options", [("softmax", {"rope": True}),
                                          ("softmax", {"alibi": True}),
                                          ("local", {"window": 8})])
def test_a_step_on_plain_tensors_equals_the_cache_step(name, options):
    from attnarena.registry import create_mixer

    torch.manual_seed(0)
    mixer = create_mixer(name, 32, heads=2, causal=True, **options).eval()
    x = torch.randn(2, 20, 32)
    state = mixer.init_state(2)
    keys = values = torch.zeros(2, 2, 0, 16)
    with torch.no_grad():
        for t in range(20):
            expected, state = mixer.step(x[:, t], state)
            got, keys, values = mixer.step_on_tensors(x[:, t], keys, values, torch.tensor([t]))
            torch.testing.assert_close(got, expected)
            torch.testing.assert_close(keys, state.keys())
