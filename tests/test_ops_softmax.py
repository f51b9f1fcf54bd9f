"""ops.softmax_attention against an explicit masked softmax written from the definition."""
import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attnarena as aa
from attnarena import ops
from attnarena.ops import alibi_slopes, softmax_attention


def reference(q, k, v, causal=False, key_mask=None, window=None, slopes=None):
    q, k, v = q.double(), k.double(), v.double()
    L, S = q.shape[2], k.shape[2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    i = torch.arange(L)[:, None]
    j = torch.arange(S)[None, :]
    allowed = torch.ones(L, S, dtype=torch.bool)
    if causal:
        allowed &= j <= i
    if window is not None:
        allowed &= (i - j).abs() < window
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    if slopes is not None:
        scores = scores - slopes.double()[:, None, None] * (i - j).abs()
    out = torch.zeros(*scores.shape[:-1], v.shape[-1], dtype=torch.float64)
    for b, h, r in itertools.product(*map(range, scores.shape[:-1])):
        row = allowed[min(b, allowed.shape[0] - 1), 0, r]
        if row.any():
            w = torch.softmax(scores[b, h, r][row], -1)
            out[b, h, r] = w @ v[b, h][row]
    return out


params = st.fixed_dictionaries({
    "B": st.integers(1, 2), "H": st.integers(1, 3), "L": st.integers(1, 30),
    "D": st.integers(1, 8), "seed": st.integers(0, 9999), "causal": st.booleans(),
    "window": st.one_of(st.none(), st.integers(1, 8)), "masked": st.booleans(),
    "alibi": st.booleans(),
})


@given(params)
def test_self_attention_matches_reference(p):
    g = torch.Generator().manual_seed(p["seed"])
    q, k, v = (torch.randn(p["B"], p["H"], p["L"], p["D"], generator=g) for _ in range(3))
    key_mask = torch.rand(p["B"], p["L"], generator=g) > 0.3 if p["masked"] else None
    slopes = alibi_slopes(p["H"]) if p["alibi"] else None
    out = softmax_attention(q, k, v, causal=p["causal"], mask=key_mask, window=p["window"],
                            alibi_slopes=slopes)
    ref = reference(q, k, v, p["causal"], key_mask, p["window"], slopes).float()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("L, window", [(64, 4), (67, 5), (200, 16), (9, 4)])
@pytest.mark.parametrize("causal", [False, True])
def test_blocked_window_path_matches_reference(L, window, causal):
    g = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(2, 2, L, 8, generator=g) for _ in range(3))
    key_mask = torch.rand(2, L, generator=g) > 0.2
    slopes = alibi_slopes(2)
    for mask, sl in ((None, None), (key_mask, slopes)):
        out = softmax_attention(q, k, v, causal=causal, window=window, mask=mask, alibi_slopes=sl)
        ref = reference(q, k, v, causal, mask, window, sl).float()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("L, S", [(5, 9), (9, 5)])
def test_causal_cross_is_top_left_aligned(L, S):
    q, k, v = torch.randn(1, 2, L, 4), torch.randn(1, 2, S, 4), torch.randn(1, 2, S, 3)
    out = softmax_attention(q, k, v, causal=True)
    torch.testing.assert_close(out, reference(q, k, v, causal=True).float(), rtol=1e-5,
                               atol=1e-5)


def test_fully_masked_query_gets_zeros():
    q, k, v = (torch.randn(1, 1, 4, 3) for _ in range(3))
    key_mask = torch.tensor([[False, False, True, True]])
    out = softmax_attention(q, k, v, causal=True, mask=key_mask)
    assert torch.isfinite(out).all()
    assert out[0, 0, :2].abs().max() == 0
    torch.testing.assert_close(out, reference(q, k, v, True, key_mask).float())


def test_four_d_mask():
    q, k, v = (torch.randn(2, 2, 5, 3) for _ in range(3))
    mask = torch.rand(2, 1, 5, 5) > 0.4
    out = softmax_attention(q, k, v, mask=mask)
    dense = softmax_attention(q, k, v, mask=mask.expand(2, 2, 5, 5))
    torch.testing.assert_close(out, dense)


@pytest.mark.parametrize("window", [None, 2])
def test_gradcheck(window):
    q, k, v = (torch.randn(1, 2, 7, 3, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    mask = torch.tensor([[True] * 6 + [False]])
    assert torch.autograd.gradcheck(
        lambda q, k, v: softmax_attention(q, k, v, causal=True, mask=mask, window=window,
                                          alibi_slopes=alibi_slopes(2)), (q, k, v))


def test_alibi_slopes_follow_the_paper():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))
    s = alibi_slopes(6)  # 4 from the power of two below, then every other of 8's
    torch.testing.assert_close(s[:4], alibi_slopes(4))
    torch.testing.assert_close(s[4:], alibi_slopes(8)[0::2][:2])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"mask": torch.ones(1, 4)}, TypeError, "bool"),
    ({"mask": torch.ones(1, 3, dtype=torch.bool)}, ValueError, "key mask"),
    ({"mask": torch.ones(4, dtype=torch.bool)}, ValueError, "mask"),
    ({"window": 0}, ValueError, "window"),
    ({"alibi_slopes": torch.ones(3)}, ValueError, "alibi_slopes"),
])
def test_bad_input(kwargs, error, match):
    q = k = v = torch.ones(1, 2, 4, 3)
    with pytest.raises(error, match=match):
        softmax_attention(q, k, v, **kwargs)


def test_clipped_softmax_reduces_to_softmax_and_clips():
    from attnarena.ops import clipped_softmax_attention, softmax_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 4, dtype=torch.float64) for _ in range(3))
    keep = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    for causal in (False, True):
        plain = softmax_attention(q, k, v, causal=causal, mask=keep)
        same = clipped_softmax_attention(q, k, v, gamma=0.0, zeta=1.0, causal=causal, mask=keep)
        assert torch.allclose(same, plain)
    gamma, zeta = -0.1, 1.05
    scores = (q @ k.transpose(-1, -2)) / 2.0
    allowed = torch.ones(6, 6, dtype=torch.bool).tril() & keep[:, None, None, :]
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)
    weights = ((zeta - gamma) * weights + gamma).clamp(0, 1) * allowed
    expected = weights @ v
    got = clipped_softmax_attention(q, k, v, gamma=gamma, zeta=zeta, causal=True, mask=keep)
    assert torch.allclose(got, expected)
    with pytest.raises(ValueError, match="gamma <= 0 and zeta >= 1"):
        clipped_softmax_attention(q, k, v, gamma=0.1)


@pytest.mark.parametrize("options", [{"clip_gamma": -0.05}, {"gated": True},
                                     {"clip_gamma": -0.05, "clip_zeta": 1.1, "gated": True}])
def test_quantizable_softmax_options_decode_like_their_forward(options):

    torch.manual_seed(0)
    mixer = aa.create_mixer("softmax", dim=16, heads=2, causal=True, **options).eval()
    x = torch.randn(2, 7, 16)
    state = mixer.init_state(batch_size=2)
    steps = []
    for t in range(7):
        y, state = mixer.step(x[:, t], state)
        steps.append(y)
    assert torch.allclose(torch.stack(steps, 1), mixer(x), atol=1e-5)
    if options.get("gated"):
        assert mixer.gate.out_features == 2  # one gate per head


def test_quantizable_softmax_options_are_checked():

    with pytest.raises(ValueError, match="clip_gamma must be <= 0 and clip_zeta >= 1"):
        aa.create_mixer("softmax", dim=16, heads=2, clip_gamma=0.2)
    with pytest.raises(TypeError, match="gated must be true or false"):
        aa.create_mixer("softmax", dim=16, heads=2, gated="yes")
    with pytest.raises(ValueError, match="takes no alibi"):
        aa.create_mixer("softmax", dim=16, heads=2, clip_gamma=-0.1, alibi=True)


def _prefix_pool(scores, values):
    """sum_{s <= t} softmax over s <= t of the scores, times v_s, for every t."""
    L = scores.shape[-1]
    return torch.stack([(torch.softmax(scores[..., :t + 1], -1)[..., None]
                         * values[..., :t + 1, :]).sum(-2) for t in range(L)], -2)


@given(st.integers(1, 50), st.integers(0, 999), st.sampled_from([1.0, 30.0, 300.0]),
       st.sampled_from(["parallel", "recurrent"]), st.integers(1, 49))
def test_prefix_attention_is_softmax_over_each_prefix(L, seed, scale, form, cut):
    g = torch.Generator().manual_seed(seed)
    scores = scale * torch.randn(2, 3, L, generator=g, dtype=torch.float64)
    values = torch.randn(2, 3, L, 4, generator=g, dtype=torch.float64)
    expected = _prefix_pool(scores, values)
    torch.testing.assert_close(ops.prefix_attention(scores, values, form=form), expected)
    cut = min(cut, L)
    first, state = ops.prefix_attention(scores[..., :cut], values[..., :cut, :], form=form,
                                        return_state=True)
    if cut < L:
        rest = ops.prefix_attention(scores[..., cut:], values[..., cut:, :], form=form,
                                    initial_state=state)
        torch.testing.assert_close(torch.cat([first, rest], -2), expected)
    whole = ops.softmax_pool(scores, values)
    torch.testing.assert_close(whole, expected[..., -1, :])


def test_prefix_ops_refuse_bad_inputs():
    with pytest.raises(ValueError, match="same leading shape"):
        ops.prefix_attention(torch.zeros(2, 5), torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="finite"):
        ops.prefix_attention(torch.full((2, 5), float("inf")), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="valid forms: parallel, recurrent"):
        ops.prefix_attention(torch.zeros(2, 5), torch.zeros(2, 5, 3), form="chunk")
