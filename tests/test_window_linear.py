"""LoLCATs' sliding-window + linear attention: the chunked form against the quadratic
reference, and the mixer against the paper's equation written out per query."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnarena as aa
from attnarena import ops


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 23), window=st.integers(1, 7), chunk=st.integers(1, 8),
       causal=st.booleans(), padded=st.booleans(), seed=st.integers(0, 2**16))
def test_chunk_form_equals_the_quadratic_reference(L, window, chunk, causal, padded, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 2, L, 3, generator=g, dtype=torch.float64) for _ in range(3))
    fq, fk = (torch.rand(2, 2, L, 5, generator=g, dtype=torch.float64) for _ in range(2))
    mask = (torch.rand(2, L, generator=g) > 0.3) if padded else None
    args = dict(window=window, causal=causal, mask=mask)
    reference = ops.window_linear_attention(q, k, v, fq, fk, form="parallel", **args)
    chunked = ops.window_linear_attention(q, k, v, fq, fk, form="chunk", chunk_size=chunk,
                                          **args)
    torch.testing.assert_close(chunked, reference, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("causal", [False, True])
def test_lolcats_weighs_the_window_by_softmax_and_the_rest_by_hedgehog_features(causal):
    """Zhang et al. 2025, eq. for the sliding-window hybrid: y_i = (sum_{j in W(i)}
    exp(q_i k_j / sqrt(d)) v_j + sum_{j not in W(i)} phi(q_i) phi(k_j) v_j) / (the same sums
    without v), written per query with loops."""
    torch.manual_seed(0)
    window, L = 3, 11
    mixer = aa.create_mixer("lolcats", dim=8, heads=2, causal=causal, window=window,
                            chunk_size=4).double()
    with torch.no_grad():
        mixer.feature_weight.add_(0.3 * torch.randn_like(mixer.feature_weight))
    x = torch.randn(2, L, 8, dtype=torch.float64)
    q, k, v = mixer.project(x)
    W = mixer.feature_weight

    def phi(t, h):
        z = W[h] @ t
        return torch.cat([torch.softmax(z, 0), torch.softmax(-z, 0)])

    out = torch.zeros_like(q)
    for b in range(2):
        for h in range(2):
            for i in range(L):
                num, den = torch.zeros(4, dtype=torch.float64), 0.0
                for j in range(L):
                    if causal and j > i:
                        continue
                    near = (i - j < window) if causal else abs(i - j) < window
                    weight = (torch.exp(q[b, h, i] @ k[b, h, j] / 2.0) if near
                              else phi(q[b, h, i], h) @ phi(k[b, h, j], h))
                    num, den = num + weight * v[b, h, j], den + weight
                out[b, h, i] = num / den
    expected = mixer.o_proj(mixer.merge_heads(out))
    torch.testing.assert_close(mixer(x), expected, rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 23), window=st.integers(1, 7), chunk=st.integers(1, 8),
       padded=st.booleans(), seed=st.integers(0, 2**16))
def test_factored_chunk_form_equals_the_released_equation_per_query(L, window, chunk, padded,
                                                                     seed):
    """LoLCATs as released: y_i = (sum_{j in W(i)} g exp(s_ij - max_{j' in W(i)} s_ij') v_j
    + sum_{j <= i - window} phi(q_i) phi(k_j) v_j) / (the same sums without v), written
    per query with loops; the chunk and parallel forms both equal it."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 2, L, 3, generator=g, dtype=torch.float64) for _ in range(3))
    fq, fk = (torch.rand(2, 2, L, 5, generator=g, dtype=torch.float64) for _ in range(2))
    factor = torch.rand(2, generator=g, dtype=torch.float64)
    keep = (torch.rand(2, L, generator=g) > 0.3) if padded else torch.ones(2, L, dtype=bool)
    expected = torch.zeros_like(v)
    for b in range(2):
        for h in range(2):
            for i in range(L):
                near = [j for j in range(max(0, i - window + 1), i + 1) if keep[b, j]]
                far = [j for j in range(0, i - window + 1) if keep[b, j]]
                if not near and not far:
                    continue
                scores = {j: float(q[b, h, i] @ k[b, h, j]) / 3 ** 0.5 for j in near}
                top = max(scores.values(), default=0.0)
                weights = {j: factor[h] * torch.exp(torch.tensor(s - top, dtype=torch.float64))
                           for j, s in scores.items()}
                weights.update({j: fq[b, h, i] @ fk[b, h, j] for j in far})
                total = sum(weights.values())
                expected[b, h, i] = sum(w * v[b, h, j] for j, w in weights.items()) / total
    mask = keep if padded else None
    for form in ("parallel", "chunk"):
        got = ops.factored_window_linear_attention(q, k, v, fq, fk, window=window,
                                                   window_factor=factor, mask=mask, form=form,
                                                   chunk_size=chunk)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
