"""Sparse-pattern, low-rank and parameter-free mixers against independent computations."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnarena as aa


def softmax_under(mixer, x, allowed):
    """The mixer's own projections, attention written out under an explicit (L, L) mask."""
    q, k, v = mixer.project(x)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return mixer.o_proj(mixer.merge_heads(weights @ v))


def mask_from(rule, L):
    return torch.tensor([[rule(i, j) for j in range(L)] for i in range(L)])


@pytest.mark.parametrize("kind", ["strided", "fixed"])
@pytest.mark.parametrize("causal", [False, True])
def test_sparse_transformer_patterns(kind, causal):
    torch.manual_seed(0)
    mixer = aa.create_mixer("sparse", dim=16, heads=2, causal=causal, kind=kind, block=4,
                            summary=1).eval()
    L = 19
    if kind == "strided":
        rule = lambda i, j: abs(i - j) < 4 or (i - j) % 4 == 0  # noqa: E731
    else:
        rule = lambda i, j: i // 4 == j // 4 or j % 4 == 3  # noqa: E731
    allowed = mask_from(lambda i, j: rule(i, j) and (j <= i or not causal), L)
    x = torch.randn(2, L, 16)
    torch.testing.assert_close(mixer(x), softmax_under(mixer, x, allowed), rtol=1e-5,
                               atol=1e-5)


def test_longformer_window_plus_global():
    torch.manual_seed(0)
    mixer = aa.create_mixer("longformer", dim=16, heads=2, window=4, global_tokens=2).eval()
    L = 17
    allowed = mask_from(lambda i, j: abs(i - j) <= 2 or i < 2 or j < 2, L)
    x = torch.randn(2, L, 16)
    torch.testing.assert_close(mixer(x), softmax_under(mixer, x, allowed), rtol=1e-5,
                               atol=1e-5)


def test_bigbird_blocks():
    torch.manual_seed(0)
    mixer = aa.create_mixer("bigbird", dim=16, heads=2, block=3, global_blocks=1,
                            random_blocks=1, seed=7).eval()
    L = 20
    n = 7
    blocks = mixer.block_pattern(n)
    # window and global blocks are always there; each row has at most one extra block
    for r in range(n):
        must = {c for c in range(n) if abs(r - c) <= 1 or r == 0 or c == 0}
        got = set(blocks[r].nonzero().flatten().tolist())
        assert must <= got and len(got - must) <= 1
    allowed = mask_from(lambda i, j: bool(blocks[i // 3, j // 3]), L)
    x = torch.randn(1, L, 16)
    torch.testing.assert_close(mixer(x), softmax_under(mixer, x, allowed), rtol=1e-5,
                               atol=1e-5)
    assert torch.equal(mixer.block_pattern(n), blocks)  # fixed for a given length


def test_linformer_with_identity_projections_is_softmax():
    torch.manual_seed(0)
    L = 12
    mixer = aa.create_mixer("linformer", dim=16, heads=2, proj_len=L, max_len=L).eval()
    with torch.no_grad():
        mixer.E.copy_(torch.eye(L))
        mixer.F.copy_(torch.eye(L))
    x = torch.randn(2, L, 16)
    torch.testing.assert_close(mixer(x), softmax_under(mixer, x, torch.ones(L, L).bool()),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="max_len=12"):
        mixer(torch.randn(1, 13, 16))


@pytest.mark.parametrize("pinv", ["exact", "iterative"])
def test_nystromformer_with_all_landmarks_is_softmax(pinv):
    torch.manual_seed(0)
    L = 10
    mixer = aa.create_mixer("nystromformer", dim=16, heads=2, landmarks=L, pinv=pinv,
                            conv_kernel=0).double().eval()
    x = torch.randn(2, L, 16, dtype=torch.float64) * 0.5
    expected = softmax_under(mixer, x, torch.ones(L, L).bool())
    if pinv == "exact":
        torch.testing.assert_close(mixer(x), expected, rtol=1e-8, atol=1e-8)
    else:  # the paper's 6 Newton-Schulz steps: an approximation
        assert (mixer(x) - expected).abs().max() < 0.02


def test_iterative_pinv_converges_to_the_pseudo_inverse():
    from attnarena.ops import iterative_pinv

    m = torch.softmax(torch.randn(3, 10, 10, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(iterative_pinv(m, iterations=40), torch.linalg.pinv(m),
                               rtol=1e-6, atol=1e-6)


def test_fnet_is_the_real_part_of_a_2d_dft():
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    mixer = aa.create_mixer("fnet", dim=8)

    def dft(n):
        idx = torch.arange(n, dtype=torch.float64)
        return torch.exp(-2j * math.pi * idx[:, None] * idx[None, :] / n)

    expected = (dft(6) @ x.to(torch.complex128) @ dft(8)).real
    torch.testing.assert_close(mixer(x), expected)


def test_pooling_is_neighbour_average_minus_self():
    x = torch.randn(1, 7, 4)
    mixer = aa.create_mixer("pooling", dim=4, pool_size=3)
    expected = torch.stack([x[0, max(0, i - 1):i + 2].mean(0) - x[0, i] for i in range(7)])
    torch.testing.assert_close(mixer(x)[0], expected)


def test_random_synthesizer_is_softmax_of_its_learned_scores():
    torch.manual_seed(0)
    mixer = aa.create_mixer("synthesizer", dim=16, heads=2, causal=True, kind="random",
                            max_len=10).eval()
    x = torch.randn(2, 7, 16)
    scores = mixer.scores[:, :7, :7].masked_fill(~torch.ones(7, 7).bool().tril(), float("-inf"))
    v = mixer.v_proj(x).view(2, 7, 2, 8).transpose(1, 2)
    expected = mixer.o_proj((torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(2, 7, 16))
    torch.testing.assert_close(mixer(x), expected)


def test_agent_attention_with_one_agent_per_token():
    torch.manual_seed(0)
    mixer = aa.create_mixer("agent", dim=16, heads=2, agents=9, conv_kernel=0).eval()
    x = torch.randn(2, 9, 16)
    q, k, v = mixer.project(x)
    scale = 1 / math.sqrt(8)
    agent_values = torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v  # agents = queries
    o = torch.softmax(q @ q.transpose(-1, -2) * scale, -1) @ agent_values
    torch.testing.assert_close(mixer(x), mixer.o_proj(mixer.merge_heads(o)))


def test_moh_routes_each_token_to_shared_plus_top_k_heads():
    torch.manual_seed(0)
    mixer = aa.create_mixer("moh", dim=32, heads=8, shared_heads=2, top_k=3).eval()
    weights = mixer.head_weights(torch.randn(2, 5, 32))
    assert weights.shape == (2, 5, 8)
    assert ((weights[..., :2] > 0).sum(-1) == 2).all()
    assert ((weights[..., 2:] > 0).sum(-1) == 3).all()


def test_focusing_function_keeps_the_norm_and_sharpens():
    from attnarena.ops import focused

    x = torch.tensor([[3.0, 1.0, -2.0]])
    f = focused(x, 3.0)
    torch.testing.assert_close(f.norm(), torch.relu(x).norm(), rtol=1e-5, atol=1e-5)
    assert f[0, 0] / f[0, 1] > 3.0 / 1.0  # larger entries grow relative to smaller ones


@pytest.mark.parametrize("causal", [False, True])
def test_flatten_is_focused_linear_attention_plus_a_depthwise_convolution(causal):
    """FLatten (Han et al. 2023): O = phi_p(Q) phi_p(K)^T V normalized per query, with
    phi_p(x) = ||relu(x)|| relu(x)^p / ||relu(x)^p||, plus DWC(V), then the output
    projection; written out here as explicit matrices."""
    torch.manual_seed(0)
    mixer = aa.create_mixer("flatten", dim=8, heads=2, causal=causal, focusing_power=3.0,
                            conv_kernel=3).eval()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    mixer = mixer.double()
    q, k, v = mixer.project(x)

    def phi(t):
        r = torch.relu(t) + 1e-6
        return r.norm(dim=-1, keepdim=True) * r ** 3 / (r ** 3).norm(dim=-1, keepdim=True)

    similarity = phi(q) @ phi(k).transpose(-1, -2)  # (B, H, L, L)
    if causal:
        similarity = similarity.tril()
    # the normalizer carries linear attention's eps (1e-6), which matters for queries whose
    # relu is (almost) all zero
    attended = (similarity @ v) / (similarity.sum(-1, keepdim=True) + 1e-6)
    values = mixer.v_proj(x)  # (B, L, dim)
    weight = mixer.conv.weight[:, 0]  # (dim, 3)
    padded = torch.nn.functional.pad(values, (0, 0, 2, 0) if causal else (0, 0, 1, 1))
    conv = sum(padded[:, i:i + 7] * weight[:, i] for i in range(3)) + mixer.conv.bias
    expected = mixer.o_proj(mixer.merge_heads(attended) + conv)
    torch.testing.assert_close(mixer(x), expected, rtol=1e-9, atol=1e-9)


def test_hedgehog_feature_maps_learn_to_mimic_softmax():
    """Training the feature maps on the distillation loss shrinks the KL divergence from
    softmax attention (the loss minus the teacher's own entropy)."""
    torch.manual_seed(0)
    mixer = aa.create_mixer("hedgehog", dim=16, heads=2, causal=True)
    x = torch.randn(8, 12, 16) * 2
    with torch.no_grad():
        q, k, _ = mixer.project(x)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
        teacher = torch.softmax(scores.masked_fill(~torch.ones(12, 12).bool().tril(),
                                                   float("-inf")), -1)
        entropy = float(-(teacher * teacher.clamp_min(1e-12).log()).sum(-1).mean())
    optimizer = torch.optim.Adam([mixer.feature_weight], lr=0.05)
    before = mixer.distillation_loss(x).item() - entropy
    for _ in range(100):
        loss = mixer.distillation_loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = mixer.distillation_loss(x).item() - entropy
    assert 0 <= after < 0.5 * before


def _weighted_softmax(mixer, x, counts):
    """softmax attention where key j counts counts[i, j] times for query i."""
    q, k, v = mixer.project(x)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    weights = counts * torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-30)
    return mixer.o_proj(mixer.merge_heads(weights @ v))


@pytest.mark.parametrize("causal", [False, True])
def test_dilated_attention_equals_softmax_over_its_branch_masks(causal):
    torch.manual_seed(0)
    L, heads = 13, 2
    mixer = aa.create_mixer("dilated", dim=16, heads=heads, causal=causal,
                            segment_lengths=(4, 8), dilation_rates=(1, 2)).eval()
    counts = torch.zeros(heads, L, L)
    for w, r in ((4, 1), (8, 2)):
        for h in range(heads):
            picked = [p for p in range(L) if (p % w) % r == h % r]
            for i in picked:
                for j in picked:
                    if i // w == j // w and (j <= i or not causal):
                        counts[h, i, j] += 1
    x = torch.randn(2, L, 16)
    torch.testing.assert_close(mixer(x), _weighted_softmax(mixer, x, counts), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_reformer_with_one_bucket_is_shared_qk_softmax(causal):
    torch.manual_seed(0)
    L = 11
    mixer = aa.create_mixer("reformer", dim=16, heads=2, causal=causal, buckets=1,
                            chunk_size=16).eval()
    x = torch.randn(2, L, 16)
    qk = mixer.qk_proj(x).view(2, L, 2, 8).transpose(1, 2)
    v = mixer.v_proj(x).view(2, L, 2, 8).transpose(1, 2)
    keys = torch.nn.functional.normalize(qk, dim=-1)
    scores = qk @ keys.transpose(-1, -2) / math.sqrt(8)
    eye = torch.eye(L, dtype=torch.bool)
    scores = scores.masked_fill(eye, -1e5)  # itself only when nothing else is visible
    if causal:
        scores = scores.masked_fill(~torch.ones(L, L).bool().tril(), float("-inf"))
    o = torch.softmax(scores, -1) @ v
    expected = mixer.o_proj(o.transpose(1, 2).reshape(2, L, 16))
    torch.testing.assert_close(mixer(x), expected, rtol=1e-5, atol=1e-5)


def test_reformer_attends_within_buckets():
    torch.manual_seed(0)
    mixer = aa.create_mixer("reformer", dim=16, heads=1, buckets=4, chunk_size=64).eval()
    x = torch.randn(1, 20, 16)
    qk = mixer.qk_proj(x).view(1, 20, 1, 16).transpose(1, 2)
    buckets = mixer.hashes(qk, 0)[0, 0]
    # changing a token leaves outputs of tokens in other buckets (that do not see it) alone
    target = 7
    x2 = x.clone()
    x2[0, target] += 0.01 * torch.randn(16)
    qk2 = mixer.qk_proj(x2).view(1, 20, 1, 16).transpose(1, 2)
    if not torch.equal(mixer.hashes(qk2, 0)[0, 0], buckets):
        pytest.skip("the perturbation moved a token across buckets")
    changed = (mixer(x2) - mixer(x)).abs().amax(-1)[0] > 1e-7
    others = buckets != buckets[target]
    assert not changed[others].any()


@pytest.mark.parametrize("causal", [False, True])
def test_gaam_gates_by_gaussian_densities_of_token_statistics(causal):
    torch.manual_seed(0)
    mixer = aa.create_mixer("gaam", dim=8, heads=2, causal=causal, gaussians=2).double().eval()
    with torch.no_grad():
        mixer.mean_offset.copy_(torch.tensor([[0.1, -0.2], [0.3, 0.0]]))
        mixer.raw_scale.copy_(torch.tensor([[0.5, -0.5], [1.0, 0.2]]))
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    v = mixer.v_proj(x)
    expected = torch.zeros_like(v)
    xi = torch.nn.functional.softplus(mixer.raw_scale) + 1e-3
    for t in range(6):
        seen = v[:, :t + 1] if causal else v
        mean, var = seen.mean(1), seen.var(1, unbiased=False)
        gate = torch.ones_like(v[:, t])
        for g in range(2):
            for h in range(2):
                cols = slice(4 * h, 4 * h + 4)
                z = v[:, t, cols] - (mean[:, cols] + mixer.mean_offset[g, h])
                gate[:, cols] *= torch.exp(-z ** 2 / (2 * xi[g, h] * (var[:, cols] + 1e-5)))
        expected[:, t] = v[:, t] * gate
    torch.testing.assert_close(mixer(x), mixer.o_proj(expected))


def test_sinkhorn_normalization_is_doubly_stochastic():
    from attnarena.ops import sinkhorn

    P = sinkhorn(torch.randn(3, 5, 5, dtype=torch.float64), iterations=50)
    torch.testing.assert_close(P.sum(-1), torch.ones(3, 5, dtype=torch.float64))
    torch.testing.assert_close(P.sum(-2), torch.ones(3, 5, dtype=torch.float64))


def test_sinkhorn_attention_reads_its_block_and_the_sorted_block():
    torch.manual_seed(0)
    mixer = aa.create_mixer("sinkhorn", dim=16, heads=2, block=3, max_len=12).double().eval()
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    P = mixer.sort_matrix(x)  # (B, H, 4, 4)
    q, k, v = mixer.project(x)
    out = torch.zeros_like(q)
    for i in range(12):
        blk = i // 3
        own = slice(3 * blk, 3 * blk + 3)
        kb = k.view(2, 2, 4, 3, 8)
        vb = v.view(2, 2, 4, 3, 8)
        sorted_k = torch.einsum("bhj,bhjtd->bhtd", P[:, :, blk], kb)
        sorted_v = torch.einsum("bhj,bhjtd->bhtd", P[:, :, blk], vb)
        keys = torch.cat([k[:, :, own], sorted_k], 2)
        values = torch.cat([v[:, :, own], sorted_v], 2)
        w = torch.softmax((q[:, :, i:i + 1] @ keys.transpose(-1, -2)) / math.sqrt(8), -1)
        out[:, :, i] = (w @ values)[:, :, 0]
    torch.testing.assert_close(mixer(x), mixer.o_proj(mixer.merge_heads(out)))


def fenwick_segments(t):
    """Segments of [0, t) from t's binary digits, largest first: [(start, end), ...]."""
    segments, start = [], 0
    for bit in reversed(range(t.bit_length())):
        if t >> bit & 1:
            segments.append((start, start + (1 << bit), bit + 1))
            start += 1 << bit
    return segments


def test_log_linear_reads_fenwick_segments_with_level_weights():
    torch.manual_seed(0)
    mixer = aa.create_mixer("log_linear", dim=16, heads=2, causal=True,
                            form="parallel").double().eval()
    L = 13
    x = torch.randn(1, L, 16, dtype=torch.float64)
    q, k, v = mixer.project(x)
    q = q / math.sqrt(8)
    lam = torch.nn.functional.softplus(mixer.level_weights(x)).view(1, L, 2, -1)
    out = torch.zeros_like(q)
    for t in range(L):
        out[:, :, t] = (q[:, :, t] * k[:, :, t]).sum(-1, keepdim=True) * v[:, :, t] \
            * lam[:, t, :, 0, None]
        for start, end, level in fenwick_segments(t):
            state = k[:, :, start:end].transpose(-1, -2) @ v[:, :, start:end]  # (1, H, D, D)
            out[:, :, t] += (q[:, :, t, None] @ state)[:, :, 0] * lam[:, t, :, level, None]
    expected = mixer.o_proj(mixer.norm(mixer.merge_heads(out)))
    torch.testing.assert_close(mixer(x), expected)
    assert [s[:2] for s in fenwick_segments(7)] == [(0, 4), (4, 6), (6, 7)]


def _block_sparse_cases(L, b, causal):
    from attnarena.ops import sparse as S

    cases = {"strided": (S.strided_pattern(L, b),
                         lambda **kw: S.strided_attention(block=b, causal=causal, **kw)),
             "fixed": (S.fixed_pattern(L, b, min(2, b)),
                       lambda **kw: S.fixed_attention(block=b, summary=min(2, b),
                                                      causal=causal, **kw))}
    if not causal:
        cases["longformer"] = (S.longformer_pattern(L, 2 * b + 1, 2),
                               lambda **kw: S.longformer_attention(window=2 * b + 1,
                                                                   global_tokens=2, **kw))
        cases["bigbird"] = (S.bigbird_pattern(L, b, 1, 2, 5),
                            lambda **kw: S.bigbird_attention(block=b, global_blocks=1,
                                                             random_blocks=2, seed=5, **kw))
    return cases


@settings(max_examples=25, deadline=None)
@given(L=st.integers(1, 70), b=st.integers(1, 9), causal=st.booleans(),
       padded=st.booleans(), alibi=st.booleans(), seed=st.integers(0, 2**16))
def test_block_sparse_kernels_equal_the_dense_masked_reference(L, b, causal, padded, alibi,
                                                               seed):
    """Every pattern, lengths that are not multiples of the block, causal where declared,
    padding and ALiBi: the block-sparse kernels give softmax attention under the explicit
    pattern, and the same gradients."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 2, L, 4, generator=g, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    mask = None
    if padded:
        mask = torch.ones(2, L, dtype=torch.bool)
        mask[1, (L + 1) // 2:] = False
    slopes = aa.ops.alibi_slopes(2).double() if alibi else None
    for name, (pattern, kernel) in _block_sparse_cases(L, b, causal).items():
        expected = aa.ops.pattern_attention(q, k, v, pattern, causal=causal, mask=mask,
                                            alibi_slopes=slopes)
        got = kernel(q=q, k=k, v=v, mask=mask, alibi_slopes=slopes)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10, msg=name)
        with torch.no_grad():  # inference: the fused kernel's path
            inferred = kernel(q=q, k=k, v=v, mask=mask, alibi_slopes=slopes)
        torch.testing.assert_close(inferred, expected.detach(), rtol=1e-10, atol=1e-10,
                                   msg=name)
        grads = torch.autograd.grad(got.square().sum(), (q, k, v))
        expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
        for a, e in zip(grads, expected_grads):
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9, msg=name)


def test_block_sparse_inference_takes_the_fused_kernel_and_falls_back_without_it(
        monkeypatch):
    """Without gradients the parts run in torch's fused CPU kernel (this torch has it);
    without that kernel they run the softmax path, with the same outputs."""
    S = aa.ops.sparse
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 50, 8, generator=g) for _ in range(3))
    assert S._FUSED is not None and S._fused_available(q, k, v)
    assert not S._fused_available(q.requires_grad_(), k, v)
    q.requires_grad_(False)
    calls = []
    real = S._FUSED
    monkeypatch.setattr(S, "_FUSED", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    cases = _block_sparse_cases(50, 7, False)
    with torch.no_grad():
        fused = {name: kernel(q=q, k=k, v=v) for name, (_, kernel) in cases.items()}
    assert calls
    monkeypatch.setattr(S, "_FUSED", None)
    with torch.no_grad():
        for name, (pattern, kernel) in cases.items():
            plain = kernel(q=q, k=k, v=v)
            torch.testing.assert_close(fused[name], plain, rtol=1e-5, atol=1e-5, msg=name)
            torch.testing.assert_close(plain, aa.ops.pattern_attention(q, k, v, pattern),
                                       rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("name, options", [
    ("sparse", {"kind": "strided", "block": 8}), ("sparse", {"kind": "fixed", "block": 8}),
    ("longformer", {"window": 8, "global_tokens": 2}),
    ("bigbird", {"block": 8, "global_blocks": 1, "random_blocks": 2})])
def test_pattern_mixers_use_the_block_sparse_kernel(name, options):
    # the mixer's output is its block-sparse kernel's, and equals its dense form
    torch.manual_seed(0)
    mixer = aa.create_mixer(name, dim=16, heads=2, **options).eval()
    x = torch.randn(2, 45, 16)
    q, k, v = mixer.project(x)
    sparse = mixer.sparse_attention(q, k, v, None, None, 0.0)
    torch.testing.assert_close(sparse, mixer.dense_attention(q, k, v, None), rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(mixer(x), mixer.o_proj(mixer.merge_heads(sparse)))
