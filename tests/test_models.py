import math

import pytest
import torch

import attnarena as aa
from attnarena.models import Block, CausalLM, EncoderClassifier

CAUSAL = [n for n in aa.list_mixers() if "causal" in aa.mixer_info(n).patterns]


def positions_for(name):
    options = aa.mixer_options(name)
    return ["learned", "sinusoidal", "none"] + [p for p in ("rope", "alibi") if p in options]


# Mixers whose view of a real token depends on the padded length by design: a DFT over the
# whole sequence, projections, landmarks or agents pooled over its length, random blocks
# drawn per length, hash chunks that padded tokens also fill.
LENGTH_DEPENDENT = {"fnet", "linformer", "nystromformer", "bigbird", "agent", "reformer"}

GEN_CASES = [(n, p) for n in CAUSAL for p in positions_for(n)]


def greedy_by_full_forwards(model, prompt, n):
    tokens = prompt
    with torch.no_grad():
        for _ in range(n):
            next_token = model(tokens)[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], dim=1)
    return tokens


@pytest.mark.parametrize("name, position", GEN_CASES, ids=[f"{n}-{p}" for n, p in GEN_CASES])
def test_generate_equals_greedy_full_forwards(name, position):
    torch.manual_seed(0)
    model = CausalLM(37, dim=32, depth=2, heads=4, mixer=name, position=position,
                     max_len=64, mixer_options={"window": 5} if name == "local" else None)
    model = model.double().eval()
    prompt = torch.randint(0, 37, (3, 9))
    out = model.generate(prompt, 25)
    assert out.shape == (3, 34) and torch.equal(out[:, :9], prompt)
    assert torch.equal(out, greedy_by_full_forwards(model, prompt, 25))


@pytest.mark.parametrize("name", CAUSAL)
def test_generate_float32(name):
    torch.manual_seed(1)
    model = CausalLM(29, dim=32, depth=2, heads=4, mixer=name, max_len=64).eval()
    prompt = torch.randint(0, 29, (2, 5))
    assert torch.equal(model.generate(prompt, 12), greedy_by_full_forwards(model, prompt, 12))


def test_generate_sampling_is_reproducible_and_respects_top_k():
    torch.manual_seed(0)
    model = CausalLM(20, dim=16, depth=1, heads=2, mixer="linear").eval()
    prompt = torch.randint(0, 20, (2, 3))
    a = model.generate(prompt, 10, temperature=1.0, top_k=1,
                       generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, model.generate(prompt, 10))  # top_k=1 is greedy
    b = model.generate(prompt, 10, temperature=1.5, generator=torch.Generator().manual_seed(5))
    c = model.generate(prompt, 10, temperature=1.5, generator=torch.Generator().manual_seed(5))
    assert torch.equal(b, c)


def test_generate_bad_input():
    model = CausalLM(20, dim=16, depth=1, heads=2, max_len=8)
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        model.generate(torch.tensor([[25]]), 2)
    with pytest.raises(TypeError, match="integer"):
        model.generate(torch.zeros(1, 3), 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), -1)
    with pytest.raises(ValueError, match="max_len=8"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), 10)


def test_in_mixer_positions_need_a_mixer_that_takes_them():
    with pytest.raises(ValueError, match="mixers that do: local, .*softmax"):
        CausalLM(10, dim=16, heads=2, mixer="linear", position="rope")
    with pytest.raises(ValueError, match="unknown position"):
        CausalLM(10, dim=16, heads=2, position="relative")


def test_rope_makes_attention_depend_on_relative_position_only():
    torch.manual_seed(0)
    mixer = aa.create_mixer("softmax", dim=16, heads=2, causal=True, rope=True).eval()
    x = torch.randn(1, 10, 16)
    shifted = mixer.prefill(torch.cat([torch.randn(1, 3, 16), x], 1))[0][:, 3:]
    assert not torch.allclose(shifted, mixer(x), atol=1e-4)  # earlier tokens are seen
    q, k, _ = mixer.project(x)
    rq, rk = mixer._positions(q, k)
    rq5, rk5 = mixer._positions(q, k, offset=5)
    torch.testing.assert_close(rq @ rk.transpose(-1, -2), rq5 @ rk5.transpose(-1, -2),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in aa.list_mixers()
                                  if "self" in aa.mixer_info(n).patterns])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encoder_classifier_ignores_padding(name, pooling):
    torch.manual_seed(0)
    model = EncoderClassifier(5, vocab_size=30, dim=16, depth=2, heads=2, mixer=name,
                              pooling=pooling, max_len=20).eval()
    tokens = torch.randint(1, 30, (3, 12))
    keep = torch.ones(3, 12, dtype=torch.bool)
    keep[0, 8:] = False
    keep[2, 5:] = False
    logits = model(tokens, mask=keep)
    assert logits.shape == (3, 5)
    noisy = tokens.masked_fill(~keep, 7)
    torch.testing.assert_close(model(noisy, mask=keep), logits, rtol=1e-5, atol=1e-5)
    if name not in LENGTH_DEPENDENT:
        short = model(tokens[2:, :5])  # the same sequence without its padding
        torch.testing.assert_close(short, logits[2:], rtol=1e-5, atol=1e-5)


def test_encoder_entry_points_and_patches():
    model = EncoderClassifier(10, image_size=16, patch_size=4, channels=3, dim=16, depth=3,
                              heads=2, mixer="performer", pooling="cls").eval()
    images = torch.rand(2, 3, 16, 16)
    outputs, _ = model.forward_intermediates(images)
    assert len(outputs) == 3 and outputs[0].shape == (2, 17, 16)
    features, mask = model.forward_features(images)
    pooled = model.forward_head(features, mask, pre_logits=True)
    assert pooled.shape == (2, 16)
    torch.testing.assert_close(model.head(pooled), model(images))
    with pytest.raises(ValueError, match=r"\(batch, 3, 16, 16\)"):
        model(torch.rand(2, 1, 16, 16))


def test_causal_encoder_puts_cls_last():
    torch.manual_seed(0)
    model = EncoderClassifier(3, vocab_size=10, dim=16, heads=2, mixer="linear", causal=True,
                              pooling="cls").eval()
    tokens = torch.randint(0, 10, (1, 6))
    changed = tokens.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 10
    assert not torch.allclose(model(tokens), model(changed))  # CLS sees the first token


def test_encoder_bad_input():
    with pytest.raises(ValueError, match="exactly one"):
        EncoderClassifier(2)
    with pytest.raises(ValueError, match="pooling"):
        EncoderClassifier(2, vocab_size=5, pooling="max")
    model = EncoderClassifier(2, vocab_size=5, dim=8, heads=2)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        model(torch.tensor([[1, 9]]))
    with pytest.raises(ValueError, match="mask must have shape"):
        model(torch.tensor([[1, 2]]), mask=torch.ones(1, 3, dtype=torch.bool))


def test_block_without_mlp():
    block = Block(8, "softmax", heads=2, mlp_dim=0)
    assert block.mlp is None
    assert block(torch.randn(1, 4, 8)).shape == (1, 4, 8)


CROSS = [n for n in aa.list_mixers() if "cross" in aa.mixer_info(n).patterns]


@pytest.mark.parametrize("cross", CROSS)
def test_encoder_decoder_uses_its_source_causally_and_ignores_padding(cross):
    from attnarena.models import EncoderDecoder

    torch.manual_seed(0)
    model = EncoderDecoder(11, 13, dim=16, depth=2, heads=2, encoder_mixer="linear",
                           decoder_mixer="gla", cross_mixer=cross, max_len=32,
                           mixer_options=None).eval()
    src = torch.randint(0, 11, (2, 9))
    tgt = torch.randint(0, 13, (2, 7))
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, 6:] = False
    logits = model(src, tgt, keep)
    assert logits.shape == (2, 7, 13)
    other = src.clone()
    other[0, 0] = (other[0, 0] + 1) % 11
    assert not torch.allclose(model(other, tgt, keep)[0], logits[0])  # it reads the source
    noisy = src.masked_fill(~keep, 3)
    torch.testing.assert_close(model(noisy, tgt, keep), logits, rtol=1e-5, atol=1e-5)
    later = tgt.clone()
    later[:, 4:] = (later[:, 4:] + 1) % 13
    torch.testing.assert_close(model(src, later, keep)[:, :4], logits[:, :4], rtol=1e-5,
                               atol=1e-5)


def test_encoder_decoder_learns_to_reverse():
    from attnarena.models import EncoderDecoder

    torch.manual_seed(0)
    model = EncoderDecoder(8, 9, dim=32, depth=1, heads=2, max_len=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(250):
        src = torch.randint(0, 8, (32, 6))
        tgt = torch.cat([torch.full((32, 1), 8), src.flip(1)], dim=1)  # 8 = start token
        loss = torch.nn.functional.cross_entropy(model(src, tgt[:, :-1]).transpose(1, 2),
                                                 tgt[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    src = torch.randint(0, 8, (64, 6))
    out = model.generate(src, torch.full((64, 1), 8), 6)[:, 1:]
    assert (out == src.flip(1)).float().mean() > 0.9


def test_encoder_decoder_rejects_a_cross_mixer_without_cross_pattern():
    from attnarena.models import EncoderDecoder

    with pytest.raises(ValueError, match="no cross pattern"):
        EncoderDecoder(5, 5, dim=8, heads=2, cross_mixer="mamba")


@pytest.mark.parametrize("name", ["softmax", "gla", "mamba2"])
def test_mixer_dim_keeps_generation_exact(name):
    torch.manual_seed(2)
    model = CausalLM(23, dim=32, depth=2, heads=2, mixer=name, mixer_dim=16,
                     max_len=40).double().eval()
    assert model.blocks[0].mixer.dim == 16
    prompt = torch.randint(0, 23, (2, 4))
    assert torch.equal(model.generate(prompt, 10), greedy_by_full_forwards(model, prompt, 10))


def test_block_without_norms_is_linear_in_the_mixer_path():
    from torch import nn

    block = Block(8, "linear", heads=1, mlp_dim=0, norm=False,
                  mixer_options={"feature_map": "identity", "normalize": False})
    assert isinstance(block.norm1, nn.Identity)
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    block = block.double()
    # no norm: scaling the input scales the attention term by the cube of the scale
    # (q, k and v are each linear, bias included only through the projections)
    for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
        getattr(block.mixer, p).bias.data.zero_()
    y1, y2 = block(x) - x, block(2 * x) - 2 * x
    torch.testing.assert_close(y2, 8 * y1)


def test_sequence_regressor_checks_its_input():
    from attnarena.models import SequenceRegressor

    model = SequenceRegressor(4, dim=8, depth=1, heads=2, max_len=6)
    assert model(torch.randn(3, 6, 4)).shape == (3, 6)
    with pytest.raises(ValueError, match=r"\(batch, length, 4\)"):
        model(torch.randn(3, 6, 5))
    with pytest.raises(ValueError, match="float tensor"):
        model(torch.ones(3, 6, 4, dtype=torch.long))


@pytest.mark.parametrize("vocab", [16, 1000])
@pytest.mark.parametrize("tied", [False, True])
def test_the_language_models_initial_loss_is_near_ln_vocab(vocab, tied):
    torch.manual_seed(0)
    lm = CausalLM(vocab, dim=64, depth=2, heads=4, mixer="gla", tie_embeddings=tied)
    tokens = torch.randint(0, vocab, (8, 32))
    logits = lm(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
    assert abs(loss.item() - math.log(vocab)) < 0.5


def test_an_encoder_of_depth_zero_takes_a_mask():
    from attnarena.models import EncoderClassifier

    torch.manual_seed(0)
    model = EncoderClassifier(3, vocab_size=10, depth=0, pooling="cls")
    tokens = torch.randint(0, 10, (2, 5))
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[0, -1] = False
    assert model(tokens, mask=keep).shape == (2, 3)
