"""Decayed linear attention, the delta rule and the selective scan: every form against a
plain loop written here from the papers' equations, in float64."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import attnarena as aa
from attnarena import ops

FORMS = ["parallel", "chunk", "recurrent"]


def loop_gated(q, k, v, decay):
    """S_t = diag(decay_t) S_{t-1} + k_t v_t^T; o_t = S_t^T q_t. decay: (B, H, L, Dk)."""
    B, H, L, Dk = q.shape
    S = torch.zeros(B, H, Dk, v.shape[-1], dtype=torch.float64)
    out = []
    for t in range(L):
        S = decay[:, :, t, :, None] * S + torch.einsum("bhk,bhv->bhkv", k[:, :, t], v[:, :, t])
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    return torch.stack(out, 2), S


def loop_delta(q, k, v, beta, alpha):
    """S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T."""
    B, H, L, Dk = q.shape
    S = torch.zeros(B, H, Dk, v.shape[-1], dtype=torch.float64)
    eye = torch.eye(Dk, dtype=torch.float64)
    out = []
    for t in range(L):
        kt = k[:, :, t]
        transition = eye - beta[:, :, t, None, None] * torch.einsum("bhi,bhj->bhij", kt, kt)
        S = alpha[:, :, t, None, None] * transition @ S \
            + beta[:, :, t, None, None] * torch.einsum("bhk,bhv->bhkv", kt, v[:, :, t])
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    return torch.stack(out, 2), S


def tensors(B, H, L, Dk, Dv, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, Dk, generator=g, dtype=torch.float64)
    k = torch.randn(B, H, L, Dk, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, L, Dv, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype), g


shapes = st.fixed_dictionaries({
    "B": st.integers(1, 2), "H": st.integers(1, 2), "L": st.integers(1, 45),
    "Dk": st.integers(1, 6), "Dv": st.integers(1, 6), "chunk": st.integers(1, 20),
    "seed": st.integers(0, 9999),
    "strength": st.sampled_from([1e-3, 0.1, 1.0, 8.0, 60.0]),  # weak to strong decay
})


def close(a, b, dtype):
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol * (1 + b.abs().max()))


@given(shapes, st.sampled_from(FORMS), st.sampled_from([torch.float32, torch.float64]))
def test_gla_forms_equal_the_loop(s, form, dtype):
    q, k, v, g = tensors(s["B"], s["H"], s["L"], s["Dk"], s["Dv"], s["seed"])
    log_g = -torch.rand(q.shape, generator=g, dtype=torch.float64) * s["strength"]
    ref, ref_state = loop_gated(q, k, v, log_g.exp())
    out, state = ops.gla(q.to(dtype), k.to(dtype), v.to(dtype), log_g=log_g.to(dtype),
                         form=form, chunk_size=s["chunk"], return_state=True)
    close(out, ref, dtype)
    close(state, ref_state, dtype)


@given(shapes, st.sampled_from([torch.float32, torch.float64]), st.booleans())
def test_gla_as_a_graph_holds_it_equals_the_loop(s, dtype, with_state):
    """The form an exported graph runs (every length padded to whole chunks, the state
    carried across chunks without a loop), called directly; ONNX export of it is tested in
    test_onnx."""
    from attnarena.ops.gated import _traced_chunks

    q, k, v, g = tensors(s["B"], s["H"], s["L"], s["Dk"], s["Dv"], s["seed"])
    log_g = -torch.rand(q.shape, generator=g, dtype=torch.float64) * s["strength"]
    start = torch.randn(s["B"], s["H"], s["Dk"], s["Dv"], generator=g, dtype=torch.float64)
    ref, ref_state = ops.gla(q, k, v, log_g=log_g, form="recurrent", return_state=True,
                             initial_state=start if with_state else None)
    out, state = _traced_chunks(q.to(dtype), k.to(dtype), v.to(dtype), log_g.to(dtype),
                                start.to(dtype) if with_state else None, s["chunk"])
    close(out, ref, dtype)
    close(state, ref_state, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gla_as_a_graph_holds_it_takes_a_full_reset(dtype):
    """A gate of exp(-inf) = 0 (the state forgotten at that token) gives the recurrent
    form's outputs, not NaN from -inf times a mask's 0."""
    from attnarena.ops.gated import _traced_chunks

    q, k, v, g = tensors(2, 2, 23, 3, 4, 7)
    log_g = -torch.rand(q.shape, generator=g, dtype=torch.float64)
    log_g[:, :, [0, 5, 6, 17]] = float("-inf")
    ref = ops.gla(q, k, v, log_g=log_g, form="recurrent")
    out, _ = _traced_chunks(q.to(dtype), k.to(dtype), v.to(dtype), log_g.to(dtype), None, 8)
    close(out, ref, dtype)


@given(shapes, st.sampled_from(FORMS), st.sampled_from([torch.float32, torch.float64]))
def test_scalar_decays_equal_the_loop(s, form, dtype):
    q, k, v, g = tensors(s["B"], s["H"], s["L"], s["Dk"], s["Dv"], s["seed"])
    log_a = -torch.rand(s["B"], s["H"], s["L"], generator=g, dtype=torch.float64) * s["strength"]
    ref, _ = loop_gated(q, k, v, log_a.exp()[..., None].expand(q.shape))
    out = ops.scalar_gated(q.to(dtype), k.to(dtype), v.to(dtype), log_a=log_a.to(dtype),
                           form=form, chunk_size=s["chunk"])
    close(out, ref, dtype)
    log_decay = -torch.rand(s["H"], generator=g, dtype=torch.float64) * s["strength"]
    ref, _ = loop_gated(q, k, v, log_decay.exp()[None, :, None, None].expand(q.shape))
    out = ops.retention(q.to(dtype), k.to(dtype), v.to(dtype), log_decay=log_decay.to(dtype),
                        form=form, chunk_size=s["chunk"])
    close(out, ref, dtype)


@given(shapes, st.sampled_from(FORMS), st.sampled_from([torch.float32, torch.float64]),
       st.booleans(), st.sampled_from([1.0, 2.0]))
def test_delta_rules_equal_the_loop(s, form, dtype, gated, beta_max):
    """beta up to 2: transitions with negative eigenvalues (Grazzi et al. 2025) too."""
    q, k, v, g = tensors(s["B"], s["H"], s["L"], s["Dk"], s["Dv"], s["seed"])
    k = F.normalize(k, dim=-1)
    beta = beta_max * torch.rand(s["B"], s["H"], s["L"], generator=g, dtype=torch.float64)
    log_alpha = -torch.rand(beta.shape, generator=g, dtype=torch.float64) * s["strength"]
    alpha = log_alpha.exp() if gated else torch.ones_like(beta)
    ref, ref_state = loop_delta(q, k, v, beta, alpha)
    args = (q.to(dtype), k.to(dtype), v.to(dtype))
    kw = dict(beta=beta.to(dtype), form=form, chunk_size=s["chunk"], return_state=True)
    if gated:
        out, state = ops.gated_delta_rule(*args, log_alpha=log_alpha.to(dtype), **kw)
    else:
        out, state = ops.delta_rule(*args, **kw)
    close(out, ref, dtype)
    close(state, ref_state, dtype)


def _block_cases(q, k, v, g, strength):
    """Each chunked kernel as call(q, k, v, form, state) -> (o, state), its other inputs
    drawn here (keys normalized and betas up to 2 for the delta rules)."""
    B, H, L, _ = q.shape

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    log_g, log_a = -rand(*q.shape) * strength, -rand(B, H, L) * strength
    log_decay, beta, gates = -rand(H) * strength, 2 * rand(B, H, L), torch.randn(
        2, B, H, L, generator=g, dtype=torch.float64)
    kn = F.normalize(k, dim=-1)
    return {
        "linear_attention": lambda q, k, v, **kw: ops.linear_attention(
            q.abs(), k.abs(), v, causal=True, **kw),
        "retention": lambda q, k, v, **kw: ops.retention(q, k, v, log_decay=log_decay, **kw),
        "scalar_gated": lambda q, k, v, **kw: ops.scalar_gated(q, k, v, log_a=log_a, **kw),
        "gla": lambda q, k, v, **kw: ops.gla(q, k, v, log_g=log_g, **kw),
        "mlstm": lambda q, k, v, **kw: ops.mlstm(q, k, v, input_gate=gates[0],
                                                 forget_gate=gates[1], **kw),
        "delta_rule": lambda q, k, v, **kw: ops.delta_rule(q, kn, v, beta=beta, **kw),
        "gated_delta_rule": lambda q, k, v, **kw: ops.gated_delta_rule(
            q, kn, v, beta=beta, log_alpha=log_a, **kw),
        "delta_product": lambda q, k, v, **kw: ops.delta_product(
            q, torch.stack([kn, kn.flip(-1)], 3), torch.stack([v, -v], 3),
            beta=torch.stack([beta, beta.flip(-1)], 3) / 2, log_alpha=log_a, **kw),
    }


BLOCKED = ["linear_attention", "retention", "scalar_gated", "gla", "mlstm", "delta_rule",
           "gated_delta_rule", "delta_product"]


@pytest.mark.parametrize("name", BLOCKED)
@given(s=shapes, blocks=st.integers(1, 4), start=st.booleans())
def test_chunk_forms_without_gradients_run_in_blocks_that_equal_the_whole(name, s, blocks,
                                                                        start):
    """Without gradients a chunk form runs over blocks of whole chunks, its state carried
    from block to block: the loop's outputs and final state, and the chunk form run whole
    (gradients recorded), at block sizes that split the sequence anywhere, from an empty
    state or one an earlier call returned."""
    from attnarena.ops import _blocks

    q, k, v, g = tensors(s["B"], s["H"], s["L"], s["Dk"], s["Dv"], s["seed"])
    call = _block_cases(q, k, v, g, s["strength"])[name]
    state = call(q, k, v, form="recurrent", return_state=True)[1] if start else None
    kw = dict(chunk_size=s["chunk"], initial_state=state, return_state=True)
    ref, ref_state = call(q, k, v, form="recurrent", **kw)
    whole, whole_state = call(q.clone().requires_grad_(), k, v, form="chunk", **kw)
    saved = _blocks.INFERENCE_BLOCK
    _blocks.INFERENCE_BLOCK = blocks * s["chunk"]  # several blocks for most lengths
    try:
        with torch.no_grad():
            out, out_state = call(q, k, v, form="chunk", **kw)
    finally:
        _blocks.INFERENCE_BLOCK = saved
    pairs = [(out, ref, whole)] + list(zip(_state_tensors(out_state), _state_tensors(ref_state),
                                           _state_tensors(whole_state)))
    for got, loop, unblocked in pairs:
        close(got, loop, torch.float64)
        close(got, unblocked.detach(), torch.float64)


def _state_tensors(state):
    return list(state) if isinstance(state, tuple) else [state]


@given(st.integers(0, 200), st.integers(1, 20), st.data())
def test_spans_cover_the_length_in_groups_completing_the_first(length, size, data):
    """The pieces a loop takes from one split: they add up to the length, and each ends
    where a group of ``size`` ends (the first completes the group ``offset`` started) or
    where the length does."""
    from attnarena.ops._blocks import spans

    offset = data.draw(st.integers(0, size - 1))
    sizes = spans(length, size, offset)
    assert sum(sizes) == length and all(n > 0 for n in sizes)
    ends = [offset + sum(sizes[:i + 1]) for i in range(len(sizes))]
    assert all(end % size == 0 for end in ends[:-1])
    assert not sizes or ends[-1] % size == 0 or ends[-1] == offset + length
    assert all(n <= size for n in sizes) and (not sizes or sizes[0] <= size - offset)


def loop_householder_product(q, k, v, beta, alpha, S):
    """DeltaProduct from its equations: S_t = alpha_t A_t S_{t-1} + B_t with the product
    A_t = H_tn ... H_t1 of generalized Householder matrices H_tj = I - beta_tj k_tj k_tj^T
    and B_t = sum_j H_tn ... H_t(j+1) beta_tj k_tj v_tj^T; o_t = S_t^T q_t."""
    B, H, L, n, Dk = k.shape
    eye = torch.eye(Dk, dtype=torch.float64).expand(B, H, Dk, Dk)
    out = []
    for t in range(L):
        A, write = eye, torch.zeros_like(S)
        for j in range(n):
            kj = k[:, :, t, j]
            householder = eye - beta[:, :, t, j, None, None] * torch.einsum("bhi,bhj->bhij",
                                                                              kj, kj)
            A = householder @ A
            write = householder @ write + beta[:, :, t, j, None, None] * torch.einsum(
                "bhk,bhv->bhkv", kj, v[:, :, t, j])
        S = alpha[:, :, t, None, None] * A @ S + write
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    return torch.stack(out, 2), S


@given(shapes, st.sampled_from(FORMS), st.sampled_from([torch.float32, torch.float64]),
       st.integers(1, 3), st.booleans(), st.sampled_from([1.0, 2.0]))
def test_delta_product_equals_the_householder_products(s, form, dtype, n, gated, beta_max):
    g = torch.Generator().manual_seed(s["seed"])
    B, H, L, Dk, Dv = s["B"], s["H"], s["L"], s["Dk"], s["Dv"]
    q = torch.randn(B, H, L, Dk, generator=g, dtype=torch.float64)
    k = F.normalize(torch.randn(B, H, L, n, Dk, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, H, L, n, Dv, generator=g, dtype=torch.float64)
    beta = beta_max * torch.rand(B, H, L, n, generator=g, dtype=torch.float64)
    log_alpha = -torch.rand(B, H, L, generator=g, dtype=torch.float64) * s["strength"]
    start = torch.randn(B, H, Dk, Dv, generator=g, dtype=torch.float64)
    alpha = log_alpha.exp() if gated else torch.ones_like(log_alpha)
    ref, ref_state = loop_householder_product(q, k, v, beta, alpha, start)
    out, state = ops.delta_product(
        q.to(dtype), k.to(dtype), v.to(dtype), beta=beta.to(dtype),
        log_alpha=log_alpha.to(dtype) if gated else None, form=form, chunk_size=s["chunk"],
        initial_state=start.to(dtype), return_state=True)
    close(out, ref, dtype)
    close(state, ref_state, dtype)
    if n == 1:  # one step per token is the delta rule
        kw = dict(beta=beta[..., 0], form=form, initial_state=start)
        one = (ops.gated_delta_rule(q, k[:, :, :, 0], v[:, :, :, 0], log_alpha=log_alpha, **kw)
               if gated else ops.delta_rule(q, k[:, :, :, 0], v[:, :, :, 0], **kw))
        close(one, ref, torch.float64)


@pytest.mark.parametrize("call, message", [
    (lambda q, k, v: ops.delta_product(q, k, v, beta=torch.rand(1, 2, 5, 2)),
     "delta_product takes"),
    (lambda q, k, v: ops.delta_product(q, k[:, :, :, None].expand(1, 2, 5, 2, 4),
                                       v[:, :, :, None], beta=torch.rand(1, 2, 5, 2)),
     "disagree"),
    (lambda q, k, v: ops.delta_product(q, k[:, :, :, None], v[:, :, :, None],
                                       beta=torch.full((1, 2, 5, 1), 3.0)), r"\[0, 2\]"),
])
def test_delta_product_refuses_bad_inputs(call, message):
    q, k, v, _ = tensors(1, 2, 5, 4, 3, 0)
    with pytest.raises(ValueError, match=message):
        call(q, k, v)


def _call(name, q, k, v, aux, **kw):
    if name == "gla":
        return ops.gla(q, k, v, log_g=aux["log_g"], **kw)
    if name == "retention":
        return ops.retention(q, k, v, log_decay=aux["log_decay"], **kw)
    if name == "delta_rule":
        return ops.delta_rule(q, k, v, beta=aux["beta"], **kw)
    return ops.gated_delta_rule(q, k, v, log_alpha=aux["log_alpha"], beta=aux["beta"], **kw)


def _aux(q, g, strength=1.0):
    B, H, L, Dk = q.shape
    return {"log_g": -torch.rand(q.shape, generator=g, dtype=q.dtype) * strength,
            "log_decay": -torch.rand(H, generator=g, dtype=q.dtype) * strength,
            "beta": torch.rand(B, H, L, generator=g, dtype=q.dtype),
            "log_alpha": -torch.rand(B, H, L, generator=g, dtype=q.dtype) * strength}


OPS = ["gla", "retention", "delta_rule", "gated_delta_rule"]


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cut", [0, 5, 11, 23])
def test_split_with_initial_state_equals_one_call(name, form, cut):
    q, k, v, g = tensors(2, 2, 23, 4, 3, seed=cut)
    k = F.normalize(k, dim=-1)
    aux = _aux(q, g)
    whole, final = _call(name, q, k, v, aux, form="recurrent", return_state=True)

    def part(t, lo, hi):
        return t if t.dim() == 1 else t[:, :, lo:hi]

    parts, state = [], None
    for lo, hi in ((0, cut), (cut, 23)):
        if hi > lo:
            sub = {key: part(val, lo, hi) for key, val in aux.items()}
            o, state = _call(name, q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], sub,
                             form=form, chunk_size=4, initial_state=state, return_state=True)
            parts.append(o)
    torch.testing.assert_close(torch.cat(parts, 2), whole, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, final, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("form", FORMS)
def test_gradcheck(name, form):
    q, k, v, g = tensors(1, 2, 7, 3, 2, seed=1)
    k = F.normalize(k, dim=-1)
    aux = _aux(q, g)
    state = torch.randn(1, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    names = list(aux)
    for t in aux.values():
        t.requires_grad_(True)

    def fn(q, k, v, state, *aux_values):
        return _call(name, q, k, v, dict(zip(names, aux_values)), form=form, chunk_size=3,
                     initial_state=state, return_state=True)

    # Perturbations must stay in the domain (decays <= 0, beta in [0, 1]).
    with torch.no_grad():
        for key in ("log_g", "log_decay", "log_alpha"):
            aux[key].clamp_(max=-0.05)
        aux["beta"].clamp_(0.05, 0.95)
    assert torch.autograd.gradcheck(fn, (*leaves, state, *aux.values()))


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 0.1)])
def test_long_sequence_with_decay_near_zero(name, dtype, tolerance):
    """Length 4096, decays near 0 (log decay down to -40): finite, and close to float64.
    Stated tolerances: 1e-4 (float32), 0.1 (bfloat16) relative to the output scale."""
    q, k, v, g = tensors(1, 2, 4096, 8, 8, seed=3)
    k = F.normalize(k, dim=-1)
    aux = _aux(q, g, strength=40.0)
    ref = _call(name, q, k, v, aux, form="chunk")
    out = _call(name, q.to(dtype), k.to(dtype), v.to(dtype),
                {key: val.to(dtype) for key, val in aux.items()}, form="chunk")
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max() <= tolerance * (1 + ref.abs().max())


def test_chunk_form_handles_strong_per_channel_decay_in_some_chunks():
    q, k, v, g = tensors(1, 1, 200, 4, 4, seed=9)
    log_g = -torch.rand(q.shape, generator=g, dtype=torch.float64) * 0.01
    log_g[:, :, 64:128] = -50.0  # one chunk decays past exp(-30): computed pairwise
    ref, _ = loop_gated(q, k, v, log_g.exp())
    for dtype in (torch.float32, torch.float64):
        out = ops.gla(q.to(dtype), k.to(dtype), v.to(dtype), log_g=log_g.to(dtype))
        close(out, ref, dtype)


@pytest.mark.parametrize("call, match", [
    (lambda q, k, v: ops.gla(q, k, v, log_g=torch.ones(1, 2, 5, 3)), "<= 0"),
    (lambda q, k, v: ops.gla(q, k, v, log_g=-torch.ones(1, 2, 5, 4)), "log_g must have shape"),
    (lambda q, k, v: ops.retention(q, k, v, log_decay=torch.tensor([0.1, -0.1])), "<= 0"),
    (lambda q, k, v: ops.delta_rule(q, k, v, beta=torch.full((1, 2, 5), 2.5)), r"\[0, 2\]"),
    (lambda q, k, v: ops.delta_rule(q, k, v, beta=-torch.ones(1, 2, 5)), r"\[0, 2\]"),
    (lambda q, k, v: ops.gated_delta_rule(q, k, v, beta=torch.rand(1, 2, 5),
                                          log_alpha=torch.ones(1, 2, 5)), "<= 0"),
    (lambda q, k, v: ops.delta_rule(q, k[..., :2], v, beta=torch.rand(1, 2, 5)), "head_dim"),
    (lambda q, k, v: ops.gla(q, k, v, log_g=-torch.ones(1, 2, 5, 3), form="fast"), "forms"),
    (lambda q, k, v: ops.delta_rule(q, k, v, beta=torch.rand(1, 2, 5),
                                    initial_state=torch.zeros(1, 2, 3, 3)), "initial_state"),
])
def test_bad_input(call, match):
    q, k, v = torch.randn(1, 2, 5, 3), torch.randn(1, 2, 5, 3), torch.randn(1, 2, 5, 2)
    with pytest.raises(ValueError, match=match):
        call(q, k, v)


# -- selective scan -------------------------------------------------------------------------

def loop_scan(u, delta, A, B, C, D, z, x):
    """Mamba's recurrence per channel d and state n, written out with explicit loops."""
    b, d, L = u.shape
    y = torch.zeros(b, d, L, dtype=torch.float64)
    groups = 1 if B.dim() == 3 else B.shape[1]
    for t in range(L):
        for c in range(d):
            g = c // (d // groups)
            Bt = B[:, :, t] if B.dim() == 3 else B[:, g, :, t]
            Ct = C[:, :, t] if C.dim() == 3 else C[:, g, :, t]
            x[:, c] = torch.exp(delta[:, c, t, None] * A[c]) * x[:, c] \
                + delta[:, c, t, None] * Bt * u[:, c, t, None]
            y[:, c, t] = (x[:, c] * Ct).sum(-1) + D[c] * u[:, c, t]
    return y * F.silu(z), x


def _scan_case(groups, strength):
    """Random inputs of the scan (B, C shared, or in ``groups``) and the loop's result."""
    g = torch.Generator().manual_seed(groups)
    b, d, L, n = 2, 4, 19, 3
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u, z, raw = r(b, d, L), r(b, d, L), r(b, d, L)
    A = -torch.rand(d, n, generator=g, dtype=torch.float64) * 4
    B = r(b, n, L) if groups == 0 else r(b, groups, n, L)
    C = r(b, n, L) if groups == 0 else r(b, groups, n, L)
    D, bias, x0 = r(d), r(d), r(b, d, n)
    delta = F.softplus(raw * strength + bias[:, None])
    ref, ref_state = loop_scan(u, delta, A, B, C, D, z, x0.clone())
    return u, z, raw, A, B, C, D, bias, x0, ref, ref_state


@pytest.mark.parametrize("form", ["chunk", "recurrent"])
@pytest.mark.parametrize("groups", [0, 1, 2])
@pytest.mark.parametrize("strength", [0.1, 30.0])
def test_selective_scan_equals_the_loop(form, groups, strength):
    u, z, raw, A, B, C, D, bias, x0, ref, ref_state = _scan_case(groups, strength)
    out, state = ops.selective_scan(u, raw * strength, A, B, C, D, z, delta_bias=bias,
                                    delta_softplus=True, return_last_state=True,
                                    initial_state=x0, form=form, chunk_size=4)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, ref_state, rtol=1e-10, atol=1e-10)
    out32 = ops.selective_scan(u.float(), (raw * strength).float(), A.float(), B.float(),
                               C.float(), D.float(), z.float(), delta_bias=bias.float(),
                               delta_softplus=True, initial_state=x0.float(), form=form)
    torch.testing.assert_close(out32.double(), ref, rtol=1e-5, atol=1e-5 * (1 + ref.abs().max()))


@pytest.mark.parametrize("form", ["chunk", "recurrent"])
def test_selective_scan_gradcheck(form):
    g = torch.Generator().manual_seed(0)
    u, delta = (torch.randn(1, 2, 6, generator=g, dtype=torch.float64, requires_grad=True)
                for _ in range(2))
    A = (-torch.rand(2, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    B, C = (torch.randn(1, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
            for _ in range(2))
    assert torch.autograd.gradcheck(
        lambda *a: ops.selective_scan(*a, delta_softplus=True, form=form, chunk_size=4,
                                      return_last_state=True), (u, delta, A, B, C))


def test_selective_scan_bad_input():
    u = torch.randn(1, 4, 6)
    with pytest.raises(ValueError, match="A must be <= 0"):
        ops.selective_scan(u, u, torch.ones(4, 2), torch.randn(1, 2, 6), torch.randn(1, 2, 6))
    with pytest.raises(ValueError, match=r"B must be"):
        ops.selective_scan(u, u, -torch.ones(4, 2), torch.randn(1, 3, 6), torch.randn(1, 2, 6))
    with pytest.raises(ValueError, match="delta must match"):
        ops.selective_scan(u, u[:, :2], -torch.ones(4, 2), torch.randn(1, 2, 6),
                           torch.randn(1, 2, 6))
    with pytest.raises(TypeError, match="complex A"):
        ops.selective_scan(u, u, -torch.ones(4, 2, dtype=torch.cfloat), torch.randn(1, 2, 6),
                           torch.randn(1, 2, 6))


@pytest.mark.parametrize("groups", [0, 1, 2])
@pytest.mark.parametrize("strength", [0.1, 30.0])
def test_compiled_scan_equals_the_loop(groups, strength):
    """The numba kernel against the loop written in this file: outputs, last state, from an
    initial state, in float64 (1e-10) and float32 (1e-5)."""
    pytest.importorskip("numba")
    u, z, raw, A, B, C, D, bias, x0, ref, ref_state = _scan_case(groups, strength)
    out, state = ops.selective_scan(u, raw * strength, A, B, C, D, z, delta_bias=bias,
                                    delta_softplus=True, return_last_state=True,
                                    initial_state=x0, backend="compiled")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, ref_state, rtol=1e-10, atol=1e-10)
    out32 = ops.selective_scan(u.float(), (raw * strength).float(), A.float(), B.float(),
                               C.float(), D.float(), z.float(), delta_bias=bias.float(),
                               delta_softplus=True, initial_state=x0.float(),
                               backend="compiled")
    torch.testing.assert_close(out32.double(), ref, rtol=1e-5, atol=1e-5 * (1 + ref.abs().max()))


def test_the_vectorized_decay_is_exp_to_float32_precision():
    """The float32 kernels' exp(dt A) (a polynomial and a shift, so that it runs in SIMD
    lanes) against libm's exp of the same float32 product over the whole range it meets:
    within 1e-7 (1 + |dt A|) relative (the argument's own float32 rounding is |dt A| 6e-8);
    below 2^-60 it stays 2^-60."""
    pytest.importorskip("numba")
    import math

    import numpy as np

    from attnarena.ops.scan_numba import _fast_decay, _kernels

    log2e = np.float32(1.4426950408889634)
    for x in np.concatenate([-np.logspace(-8, math.log10(41.5), 4000), [0.0]]):
        dt, A_k = np.float32(0.5), np.float32(2 * x)
        product = float(dt * A_k)
        expected = math.exp(product)
        assert abs(float(_fast_decay(dt, A_k, log2e)) - expected) \
            <= 1e-7 * (1 + abs(product)) * expected, x
    assert float(_fast_decay(np.float32(1.0), np.float32(-500.0), log2e)) <= 2.0 ** -60 * 1.01
    # the fast kernels serve float32 with delta >= 0; anything else takes the exact ones
    u = torch.randn(1, 2, 5)
    from attnarena.ops import scan_numba

    assert _kernels(u, u.abs()) == (scan_numba._forward_fast, scan_numba._backward_fast)
    assert _kernels(u, u) == (scan_numba._forward, scan_numba._backward)
    assert _kernels(u.double(), u.double().abs()) == (scan_numba._forward, scan_numba._backward)


@pytest.mark.parametrize("groups", [0, 2])
def test_compiled_scan_gradients(groups):
    """gradcheck of the compiled backward in float64 (through every input, the initial
    state and the last state), and float32 gradients within 1e-5 of the reference form's."""
    pytest.importorskip("numba")
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64,  # noqa: E731
                               requires_grad=True)
    u, delta = r(1, 4, 6), r(1, 4, 6)
    A = (-torch.rand(4, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    B, C = (r(1, 3, 6), r(1, 3, 6)) if not groups else (r(1, groups, 3, 6), r(1, groups, 3, 6))
    x0 = r(1, 4, 3)
    assert torch.autograd.gradcheck(
        lambda u, delta, A, B, C, x0: ops.selective_scan(
            u, delta, A, B, C, delta_softplus=True, return_last_state=True, initial_state=x0,
            backend="compiled"), (u, delta, A, B, C, x0))
    inputs = [t.detach().float().requires_grad_(True) for t in (u, delta, A, B, C, x0)]
    grads = {}
    for backend, form in (("compiled", "chunk"), ("torch", "recurrent")):
        y, last = ops.selective_scan(*inputs[:5], delta_softplus=True, return_last_state=True,
                                     initial_state=inputs[5], backend=backend, form=form)
        grads[backend] = torch.autograd.grad(y.square().sum() + last.sum(), inputs)
    for a, e in zip(grads["compiled"], grads["torch"]):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_mamba_falls_back_to_the_torch_scan_and_says_so_once(monkeypatch, caplog):
    from attnarena.mixers import mamba as mamba_module

    monkeypatch.setattr(ops.ssm, "compiled_scan_status", lambda: (False, "simulated: no numba"))
    monkeypatch.setattr(mamba_module, "_fallbacks_said", set())
    mixer = aa.create_mixer("mamba", dim=8, heads=1, causal=True)
    assert mixer._backend(torch.device("cpu")) == "torch"
    with caplog.at_level("WARNING", logger="attnarena"):
        mixer(torch.randn(1, 5, 8))
        mixer(torch.randn(1, 5, 8))
    said = [r.getMessage() for r in caplog.records if "simulated" in r.getMessage()]
    assert said == ["mamba's selective scan runs the PyTorch chunk form: simulated: no numba"]
    assert aa.registry.mixer_kernel("mamba") == "PyTorch chunk form: simulated: no numba"
    with pytest.raises(ValueError, match="scan='compiled': simulated"):
        aa.create_mixer("mamba", dim=8, causal=True, scan="compiled")
    with pytest.raises(ValueError, match="the compiled scan cannot run: simulated"):
        ops.selective_scan(torch.randn(1, 2, 3), torch.rand(1, 2, 3), -torch.ones(2, 1),
                           torch.randn(1, 1, 3), torch.randn(1, 1, 3), backend="compiled")


def test_mamba_runs_the_compiled_scan_where_it_can():
    pytest.importorskip("numba")

    mixer = aa.create_mixer("mamba", dim=8, heads=1, causal=True)
    assert mixer._backend(torch.device("cpu")) == "compiled"
    assert aa.registry.mixer_kernel("mamba") == "compiled scan (numba)"
    torch.manual_seed(0)
    reference = aa.create_mixer("mamba", dim=8, heads=1, causal=True, scan="torch")
    reference.load_state_dict(mixer.state_dict())
    x = torch.randn(2, 11, 8)
    torch.testing.assert_close(mixer(x), reference(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="scan must be one of"):
        aa.create_mixer("mamba", dim=8, scan="fast")


# -- mLSTM ----------------------------------------------------------------------------------

def loop_mlstm(q, k, v, ig, fg):
    """Unstabilized mLSTM in float64 (safe at these sizes): C, n and the max(|n.q|, 1) readout."""
    B, H, L, Dk = q.shape
    C = torch.zeros(B, H, Dk, v.shape[-1], dtype=torch.float64)
    n = torch.zeros(B, H, Dk, dtype=torch.float64)
    out = []
    for t in range(L):
        f, i = torch.sigmoid(fg[:, :, t])[..., None], torch.exp(ig[:, :, t])[..., None]
        C = f[..., None] * C + i[..., None] * torch.einsum("bhk,bhv->bhkv", k[:, :, t],
                                                            v[:, :, t])
        n = f * n + i * k[:, :, t]
        num = torch.einsum("bhk,bhkv->bhv", q[:, :, t], C)
        den = torch.einsum("bhk,bhk->bh", q[:, :, t], n).abs().clamp(min=1)[..., None]
        out.append(num / den)
    return torch.stack(out, 2)


@given(shapes, st.sampled_from(FORMS), st.sampled_from([torch.float32, torch.float64]))
def test_mlstm_forms_equal_the_loop(s, form, dtype):
    q, k, v, g = tensors(s["B"], s["H"], s["L"], s["Dk"], s["Dv"], s["seed"])
    ig = torch.randn(s["B"], s["H"], s["L"], generator=g, dtype=torch.float64) * 3
    fg = torch.randn(ig.shape, generator=g, dtype=torch.float64) * s["strength"] ** 0.5 + 1
    ref = loop_mlstm(q, k, v, ig, fg)
    out = ops.mlstm(q.to(dtype), k.to(dtype), v.to(dtype), input_gate=ig.to(dtype),
                    forget_gate=fg.to(dtype), form=form, chunk_size=s["chunk"])
    close(out, ref, dtype)


@pytest.mark.parametrize("form", FORMS)
def test_mlstm_large_input_gates_do_not_overflow(form):
    q, k, v, g = tensors(1, 2, 300, 4, 4, seed=2, dtype=torch.float32)
    ig = torch.full((1, 2, 300), 200.0)  # exp(200) overflows float32 without the stabilizer
    fg = torch.randn(1, 2, 300, generator=g)
    out = ops.mlstm(q, k, v, input_gate=ig, forget_gate=fg, form=form)
    ref = ops.mlstm(q.double(), k.double(), v.double(), input_gate=ig.double(),
                    forget_gate=fg.double(), form="recurrent")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cut", [0, 6, 13])
def test_mlstm_split_and_gradcheck(form, cut):
    q, k, v, g = tensors(1, 2, 13, 3, 2, seed=cut)
    ig = torch.randn(1, 2, 13, generator=g, dtype=torch.float64)
    fg = torch.randn(1, 2, 13, generator=g, dtype=torch.float64)
    whole = ops.mlstm(q, k, v, input_gate=ig, forget_gate=fg, form="recurrent")
    parts, state = [], None
    for lo, hi in ((0, cut), (cut, 13)):
        if hi > lo:
            o, state = ops.mlstm(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi],
                                 input_gate=ig[:, :, lo:hi], forget_gate=fg[:, :, lo:hi],
                                 form=form, chunk_size=4, initial_state=state,
                                 return_state=True)
            parts.append(o)
    torch.testing.assert_close(torch.cat(parts, 2), whole, rtol=1e-10, atol=1e-10)
    if cut == 0:
        leaves = [t[:, :, :6].clone().requires_grad_(True) for t in (q, k, v, ig, fg)]
        assert torch.autograd.gradcheck(
            lambda q, k, v, i, f: ops.mlstm(q, k, v, input_gate=i, forget_gate=f, form=form,
                                            chunk_size=4), leaves)


# -- S4D ------------------------------------------------------------------------------------

def _s4d_system(H=3, N=4, L=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.complex(-torch.rand(H, N, generator=g, dtype=torch.float64) - 0.1,
                      torch.randn(H, N, generator=g, dtype=torch.float64) * 3)
    C = torch.complex(torch.randn(H, N, generator=g, dtype=torch.float64),
                      torch.randn(H, N, generator=g, dtype=torch.float64))
    log_dt = torch.rand(H, generator=g, dtype=torch.float64) * -3
    u = torch.randn(2, H, L, generator=g, dtype=torch.float64)
    return u, A, C, log_dt, torch.randn(H, generator=g, dtype=torch.float64)


def test_s4d_convolution_equals_the_recurrence():
    u, A, C, log_dt, D = _s4d_system()
    dt = log_dt.exp()[:, None]
    decay, gain = torch.exp(dt * A), (torch.exp(dt * A) - 1) / A
    x = torch.zeros(2, 3, 4, dtype=torch.complex128)
    ref = []
    for t in range(u.shape[-1]):
        x = decay * x + gain * u[:, :, t, None]
        ref.append(2 * (C * x).sum(-1).real + D * u[:, :, t])
    ref = torch.stack(ref, -1)
    for form in ("parallel", "recurrent"):
        out, state = ops.s4d(u, A, C, log_dt, D, form=form, return_state=True)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(state, x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_s4d_split_with_initial_state(form):
    u, A, C, log_dt, D = _s4d_system(seed=1)
    whole = ops.s4d(u, A, C, log_dt, D, form="recurrent")
    head, state = ops.s4d(u[..., :7], A, C, log_dt, D, form=form, return_state=True)
    tail = ops.s4d(u[..., 7:], A, C, log_dt, D, form=form, initial_state=state)
    torch.testing.assert_close(torch.cat([head, tail], -1), whole, rtol=1e-10, atol=1e-10)


def test_s4d_bad_input():
    u, A, C, log_dt, D = _s4d_system()
    with pytest.raises(ValueError, match="negative real part"):
        ops.s4d(u, -A, C, log_dt)
    with pytest.raises(ValueError, match="complex"):
        ops.s4d(u, A.real, C, log_dt)
    with pytest.raises(ValueError, match="log_dt"):
        ops.s4d(u, A, C, log_dt[:2])


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 0.1)])
def test_long_mlstm_and_scan_with_strong_forgetting(dtype, tolerance):
    """Length 4096 with forget gates near 0 and large input gates (mLSTM), and decays
    reaching exp(-40) per token (selective scan): finite, and close to float64 run on the
    same (rounded) inputs, which isolates the kernel's own precision."""
    q, k, v, g = tensors(1, 2, 4096, 8, 8, seed=4)
    ig = torch.randn(1, 2, 4096, generator=g, dtype=torch.float64) * 20
    fg = torch.randn(1, 2, 4096, generator=g, dtype=torch.float64) * 10 - 5
    q, k, v, ig, fg = (t.to(dtype) for t in (q, k, v, ig, fg))
    out = ops.mlstm(q, k, v, input_gate=ig, forget_gate=fg)
    ref = ops.mlstm(q.double(), k.double(), v.double(), input_gate=ig.double(),
                    forget_gate=fg.double())
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max() <= tolerance * (1 + ref.abs().max())
    u = torch.randn(1, 8, 4096, generator=g, dtype=torch.float64)
    delta = torch.rand(1, 8, 4096, generator=g, dtype=torch.float64) * 5
    A = -torch.rand(8, 4, generator=g, dtype=torch.float64) * 8
    B, C = (torch.randn(1, 4, 4096, generator=g, dtype=torch.float64) for _ in range(2))
    rounded = [t.to(dtype) for t in (u, delta, A, B, C)]
    out = ops.selective_scan(*rounded)
    ref = ops.selective_scan(*(t.double() for t in rounded))
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max() <= tolerance * (1 + ref.abs().max())


@given(st.integers(1, 3), st.integers(1, 70), st.integers(1, 5), st.integers(0, 999),
       st.sampled_from([0.01, 1.0, 30.0]), st.booleans())
def test_diagonal_scan_equals_the_loop(B, L, C, seed, strength, start):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, C, generator=g, dtype=torch.float64)
    log_a = -strength * torch.rand(B, L, C, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, C, generator=g, dtype=torch.float64) if start else None
    h, expected = (h0 if start else torch.zeros(B, C, dtype=torch.float64)), []
    for t in range(L):  # h_t = a_t h_{t-1} + x_t, written out
        h = log_a[:, t].exp() * h + x[:, t]
        expected.append(h)
    expected = torch.stack(expected, 1)
    for form in ("parallel", "recurrent"):
        out, last = ops.diagonal_recurrence(x, log_a, form=form, initial_state=h0,
                                            return_state=True)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(last, expected[:, -1], rtol=1e-10, atol=1e-10)


def test_diagonal_scan_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    log_a = (-torch.rand(2, 9, 3, generator=g, dtype=torch.float64) - 0.05).requires_grad_()
    h0 = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *t: ops.diagonal_recurrence(t[0], t[1], initial_state=t[2]), (x, log_a, h0))


@pytest.mark.parametrize("call, message", [
    (lambda: ops.diagonal_recurrence(torch.zeros(1, 4, 2), torch.ones(1, 4, 2)), "<= 0"),
    (lambda: ops.diagonal_recurrence(torch.zeros(1, 4, 2), torch.zeros(1, 4, 3)), "shape of x"),
    (lambda: ops.diagonal_recurrence(torch.zeros(4, 2), torch.zeros(4, 2)), "batch, length"),
    (lambda: ops.diagonal_recurrence(torch.zeros(1, 4, 2), torch.zeros(1, 4, 2), form="chunk"),
     "valid forms: parallel, recurrent"),
])
def test_diagonal_scan_refuses_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@given(st.integers(1, 6), st.integers(0, 10_000))
def test_gla_step_continues_the_sequence_one_token_at_a_time(length, seed):
    """Decoding token by token with gla_step gives the recurrent form's outputs and state
    (in float32 for half-precision inputs)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, length, 4, generator=g, dtype=torch.float64) for _ in range(3))
    log_g = -torch.rand(2, 3, length, 4, generator=g, dtype=torch.float64)
    reference, final = ops.gla(q, k, v, log_g=log_g, form="recurrent", return_state=True)
    state = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    outputs = []
    for t in range(length):
        o, state = ops.gla_step(q[:, :, t], k[:, :, t], v[:, :, t], log_g=log_g[:, :, t],
                                state=state)
        outputs.append(o)
    torch.testing.assert_close(torch.stack(outputs, 2), reference)
    torch.testing.assert_close(state, final)
    half, wide = ops.gla_step(q[:, :, 0].half(), k[:, :, 0].half(), v[:, :, 0].half(),
                              log_g=log_g[:, :, 0].half(), state=state.float())
    assert half.dtype == torch.float16 and wide.dtype == torch.float32


def test_the_compiled_scan_runs_on_torchs_thread_count():
    """A job told to use one thread (torch.set_num_threads) runs the compiled scan on one
    (numba's own default is every core), and torch still uses one after it (numba's OpenMP
    pool had set the runtime torch shares to every core)."""
    numba = pytest.importorskip("numba")
    g = torch.Generator().manual_seed(2)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    # float64: the exact kernels, compiled once for the gradient tests above
    u, delta, A, B, C = r(1, 4, 6), r(1, 4, 6).abs(), -r(4, 3).abs(), r(1, 3, 6), r(1, 3, 6)
    before = torch.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)  # may start numba's pool,
            torch.set_num_threads(threads)  # which can reset torch's count: set it after
            x = u.clone().requires_grad_(True)
            ops.selective_scan(x, delta, A, B, C, backend="compiled").sum().backward()
            assert numba.get_num_threads() == threads
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
