"""ops.linear_attention: every form equals the plain quadratic reference, and the decoding
step continues the recurrent form."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnarena import ops
from attnarena.ops import linear_attention


def reference(q, k, v, causal, normalize, eps=1e-6):
    """Written from the equations, in float64: o_i = sum_j s_ij v_j (/ sum_j s_ij)."""
    q, k, v = q.double(), k.double(), v.double()
    s = torch.einsum("bhid,bhjd->bhij", q, k)
    if causal:
        s = s * torch.ones(s.shape[-2:], dtype=torch.bool).tril()
    o = torch.einsum("bhij,bhjd->bhid", s, v)
    if normalize:
        o = o / (s.sum(-1, keepdim=True) + eps)
    return o


def qkv(B, H, L, S, Dk, Dv, seed, positive=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, Dk, generator=g)
    k = torch.randn(B, H, S, Dk, generator=g)
    v = torch.randn(B, H, S, Dv, generator=g)
    if positive:
        q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    return q.to(dtype), k.to(dtype), v.to(dtype)


shapes = st.fixed_dictionaries({
    "B": st.integers(1, 2), "H": st.integers(1, 3), "L": st.integers(1, 40),
    "Dk": st.integers(1, 9), "Dv": st.integers(1, 9), "chunk": st.integers(1, 16),
    "seed": st.integers(0, 10_000), "causal": st.booleans(), "normalize": st.booleans(),
})


@given(shapes, st.sampled_from(["parallel", "chunk", "recurrent"]))
def test_forms_equal_reference(s, form):
    q, k, v = qkv(s["B"], s["H"], s["L"], s["L"], s["Dk"], s["Dv"], s["seed"])
    out = linear_attention(q, k, v, causal=s["causal"], normalize=s["normalize"], form=form,
                           chunk_size=s["chunk"])
    ref = reference(q, k, v, s["causal"], s["normalize"]).float()
    scale = 1 if s["normalize"] else (1 + ref.abs().max())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * scale)


@given(shapes, st.sampled_from(["parallel", "chunk", "recurrent"]), st.data())
def test_split_with_initial_state_equals_one_call(s, form, data):
    q, k, v = qkv(s["B"], s["H"], s["L"], s["L"], s["Dk"], s["Dv"], s["seed"])
    cut = data.draw(st.integers(0, s["L"]))
    kw = dict(causal=True, normalize=s["normalize"], chunk_size=s["chunk"])
    whole, final = linear_attention(q, k, v, form="parallel", return_state=True, **kw)
    parts, state = [], None
    for lo, hi in ((0, cut), (cut, s["L"])):
        if hi > lo:
            o, state = linear_attention(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], form=form,
                                        initial_state=state, return_state=True, **kw)
            parts.append(o)
    scale = 1 if s["normalize"] else (1 + whole.abs().max())
    torch.testing.assert_close(torch.cat(parts, 2), whole, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(state, final, rtol=1e-5, atol=1e-4 * (1 + final.abs().max()))


@pytest.mark.parametrize("form", ["parallel", "chunk", "recurrent"])
def test_noncausal_cross_lengths(form):
    q, k, v = qkv(2, 2, 7, 12, 4, 5, seed=3)
    out = linear_attention(q, k, v, causal=False, form=form, chunk_size=4)
    torch.testing.assert_close(out, reference(q, k, v, False, True).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["parallel", "chunk", "recurrent"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck(form, causal, normalize):
    q, k, v = qkv(1, 2, 6, 6, 3, 2, seed=5, dtype=torch.float64)
    state = torch.rand(1, 2, 3, 2 + normalize, dtype=torch.float64, requires_grad=True)
    for t in (q, k, v):
        t.requires_grad_(True)

    def fn(q, k, v, state):
        o, final = linear_attention(q, k, v, causal=causal, normalize=normalize, form=form,
                                    chunk_size=4, initial_state=state, return_state=True)
        return o, final

    assert torch.autograd.gradcheck(fn, (q, k, v, state))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("form", ["chunk", "recurrent"])
def test_half_precision_long_sequence_is_finite(dtype, form):
    L = 4096 if form == "chunk" else 512
    q, k, v = qkv(1, 2, L, L, 16, 16, seed=7)
    out, state = linear_attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=True, form=form,
                                  return_state=True)
    assert out.dtype == dtype and state.dtype == torch.float32
    assert torch.isfinite(out).all()
    ref = reference(q, k, v, True, True).float()
    assert (out.float() - ref).abs().max() < 0.05


@pytest.mark.parametrize("kwargs, error, match", [
    ({"q": torch.ones(2, 3, 4)}, ValueError, "shape"),
    ({"q": torch.ones(1, 1, 4, 3, dtype=torch.long)}, TypeError, "floating"),
    ({"k": torch.ones(1, 1, 4, 5)}, ValueError, "head_dim"),
    ({"v": torch.ones(1, 1, 5, 2)}, ValueError, "length"),
    ({"k": torch.ones(1, 1, 6, 3), "v": torch.ones(1, 1, 6, 2)}, ValueError, "as long as"),
    ({"form": "fast"}, ValueError, "valid forms"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"initial_state": torch.zeros(1, 1, 3, 2)}, ValueError, r"\(1, 1, 3, 3\)"),
    ({"v": torch.ones(1, 1, 4, 2, dtype=torch.float64)}, TypeError, "dtype"),
])
def test_bad_input(kwargs, error, match):
    args = {"q": torch.ones(1, 1, 4, 3), "k": torch.ones(1, 1, 4, 3),
            "v": torch.ones(1, 1, 4, 2), "causal": True}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        linear_attention(**args)


@given(st.integers(1, 6), st.integers(0, 10_000), st.booleans())
def test_linear_attention_step_continues_the_sequence_one_token_at_a_time(length, seed,
                                                                         normalize):
    """Decoding token by token with linear_attention_step gives the recurrent form's
    outputs and state, normalized or not."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.rand(2, 3, length, 4, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 3, length, 5, generator=g, dtype=torch.float64)
    reference, final = ops.linear_attention(q, k, v, causal=True, normalize=normalize,
                                            form="recurrent", return_state=True)
    state = torch.zeros(2, 3, 4, 5 + normalize, dtype=torch.float64)
    outputs = []
    for t in range(length):
        o, state = ops.linear_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], state=state,
                                             normalize=normalize)
        outputs.append(o)
    torch.testing.assert_close(torch.stack(outputs, 2), reference)
    torch.testing.assert_close(state, final)
