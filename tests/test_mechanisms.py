"""Each mechanism's defining property, checked against an independent computation."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import attnarena as aa
from attnarena import ops
from attnarena.models import CausalLM
from attnarena.ops import favor_features, orthogonal_gaussian
from conftest import make_mixer


def test_softmax_mixer_is_multihead_attention():
    torch.manual_seed(0)
    mixer = aa.create_mixer("softmax", dim=12, heads=3).eval()
    mha = torch.nn.MultiheadAttention(12, 3, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([mixer.q_proj.weight, mixer.k_proj.weight,
                                            mixer.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([mixer.q_proj.bias, mixer.k_proj.bias,
                                          mixer.v_proj.bias]))
        mha.out_proj.weight.copy_(mixer.o_proj.weight)
        mha.out_proj.bias.copy_(mixer.o_proj.bias)
    x = torch.randn(2, 9, 12)
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, 6:] = False
    expected, _ = mha(x, x, x, key_padding_mask=~keep, need_weights=False)
    # Outputs at padded positions are unspecified; real positions must match.
    torch.testing.assert_close(mixer(x, mask=keep)[keep], expected[keep], rtol=1e-5, atol=1e-5)


def test_local_with_window_covering_everything_equals_softmax():
    torch.manual_seed(0)
    local = aa.create_mixer("local", dim=8, heads=2, causal=True, window=50)
    soft = aa.create_mixer("softmax", dim=8, heads=2, causal=True)
    soft.load_state_dict(local.state_dict())
    x = torch.randn(2, 20, 8)
    torch.testing.assert_close(local(x), soft(x))


def test_local_sees_only_its_window():
    torch.manual_seed(0)
    local = aa.create_mixer("local", dim=8, heads=2, window=3)
    x = torch.randn(1, 30, 8)
    y = local(x)
    x2 = x.clone()
    x2[:, 20] += 10  # reaches positions 18..22 only
    changed = (local(x2) - y).abs().amax(-1)[0] > 1e-6
    assert changed.nonzero().flatten().tolist() == [18, 19, 20, 21, 22]


def test_local_decoding_state_stays_bounded():
    mixer = aa.create_mixer("local", dim=8, heads=2, causal=True, window=4)
    state = mixer.init_state(batch_size=1)
    for _ in range(50):
        _, state = mixer.step(torch.randn(1, 8), state)
    assert state.keys().shape[2] == 4 and state.k.shape[2] <= 8


def test_linear_uses_elu_plus_one_feature_map():
    torch.manual_seed(0)
    mixer = aa.create_mixer("linear", dim=8, heads=2).eval()
    x = torch.randn(1, 6, 8)
    q, k, v = mixer.project(x)
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    sim = phi_q @ phi_k.transpose(-1, -2)
    o = sim @ v / (sim.sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(mixer(x), mixer.o_proj(mixer.merge_heads(o)), rtol=1e-5,
                               atol=1e-5)


def test_cosine_is_cosine_similarity_over_length_power():
    torch.manual_seed(0)
    mixer = aa.create_mixer("cosine", dim=8, heads=2, causal=True).eval()
    with torch.no_grad():
        mixer.length_power.copy_(torch.tensor([-1.0, 2.0]))
    x = torch.randn(1, 7, 8)
    q, k, v = mixer.project(x)
    sim = F.cosine_similarity(q[:, :, :, None], k[:, :, None], dim=-1).tril()
    n = torch.arange(1, 8, dtype=torch.float32)[:, None]
    power = torch.sigmoid(torch.tensor([-1.0, 2.0]))[:, None, None]
    o = (sim @ v) / n ** power
    torch.testing.assert_close(mixer(x), mixer.o_proj(mixer.merge_heads(o)), rtol=1e-5,
                               atol=1e-5)


def test_orthogonal_features_are_orthogonal_within_a_block():
    w = orthogonal_gaussian(8, 8, torch.Generator().manual_seed(0))
    gram = w @ w.T
    off_diagonal = gram - torch.diag(torch.diag(gram))
    assert off_diagonal.abs().max() < 1e-4


@pytest.mark.parametrize("causal", [False, True])
def test_favor_approaches_softmax_as_features_grow(causal):
    """FAVOR+ estimates exp(q.k/sqrt(d)); its attention error shrinks with more features."""
    g = torch.Generator().manual_seed(0)
    d, L = 8, 16
    q = torch.randn(1, 1, L, d, generator=g) * 0.5
    k = torch.randn(1, 1, L, d, generator=g) * 0.5
    v = torch.randn(1, 1, L, 4, generator=g)
    exact = aa.ops.softmax_attention(q, k, v, causal=causal)
    errors = []
    for m in (8, 64, 4096):
        trials = []
        for seed in range(5):
            w = orthogonal_gaussian(m, d, torch.Generator().manual_seed(seed))
            pq = favor_features(q * d ** -0.25, w, True)
            pk = favor_features(k * d ** -0.25, w, False)
            approx = aa.ops.linear_attention(pq, pk, v, causal=causal)
            trials.append((approx - exact).abs().mean())
        errors.append(float(torch.stack(trials).mean()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.02


def test_performer_redraws_only_in_training_at_the_interval():
    torch.manual_seed(0)
    mixer = aa.create_mixer("performer", dim=8, heads=2, redraw_interval=2)
    x = torch.randn(1, 5, 8)
    first = mixer.projection.clone()
    mixer.eval()
    for _ in range(5):
        mixer(x)
    assert torch.equal(mixer.projection, first)
    mixer.train()
    mixer(x)
    mixer(x)
    assert torch.equal(mixer.projection, first)
    mixer(x)  # third training forward: interval of 2 reached, redraw
    assert not torch.equal(mixer.projection, first)
    fixed = aa.create_mixer("performer", dim=8, heads=2).train()
    before = fixed.projection.clone()
    for _ in range(5):
        fixed(x)
    assert torch.equal(fixed.projection, before)


def test_performer_default_feature_count_follows_the_paper():
    mixer = aa.create_mixer("performer", dim=256, heads=4)
    assert mixer.num_features == int(64 * math.log(64))


def test_performer_features_do_not_overflow_for_large_inputs():
    mixer = aa.create_mixer("performer", dim=32, heads=2, causal=True).eval()
    x = torch.randn(1, 300, 32) * 30
    assert torch.isfinite(mixer(x)).all()
    assert torch.isfinite(mixer(x.bfloat16().float())).all()


def _slot_loop(q, k, v, alpha, K, V):
    """The GSA equations: K_t = diag(a_t) K_{t-1} + (1 - a_t) k_t^T (V likewise),
    o_t = V_t^T softmax(K_t q_t)."""
    out = []
    for t in range(q.shape[2]):
        a = alpha[:, :, t].unsqueeze(-1)
        K = a * K + (1 - a) * k[:, :, t].unsqueeze(-2)
        V = a * V + (1 - a) * v[:, :, t].unsqueeze(-2)
        weights = torch.softmax(torch.einsum("bhmd,bhd->bhm", K, q[:, :, t]), dim=-1)
        out.append(torch.einsum("bhm,bhmd->bhd", weights, V))
    return torch.stack(out, 2), K, V


def _ttt_loop(q, k, v, eta, W, b):
    """Mini-batch gradient descent on l(W; k, v) = 1/2 ||W^T k - v||^2, written out: the
    gradient of each token is taken at the weight its mini-batch started from."""
    out, grads, at_start = [], torch.zeros_like(W), W
    for t in range(q.shape[2]):
        kt = k[:, :, t]
        W_start = at_start.detach().clone().requires_grad_(True)
        loss = 0.5 * ((torch.einsum("bhkv,bhk->bhv", W_start, kt) - v[:, :, t]) ** 2).sum()
        (gradient,) = torch.autograd.grad(loss, W_start)  # summed over batch and heads
        grads = grads + eta[:, :, t, None, None] * gradient
        out.append(torch.einsum("bhkv,bhk->bhv", at_start - grads, q[:, :, t]))
        if (t + 1) % b == 0:
            at_start, grads = at_start - grads, torch.zeros_like(W)
    return torch.stack(out, 2), at_start - grads


def _prefix_pool(scores, values):
    """sum_{s <= t} softmax over s <= t of the scores, times v_s, for every t."""
    L = scores.shape[-1]
    return torch.stack([(torch.softmax(scores[..., :t + 1], -1)[..., None]
                         * values[..., :t + 1, :]).sum(-2) for t in range(L)], -2)


def _latte(mixer, x, causal):
    """y_t = sum_l p(l | t) sum_s p(s | l) v_s, written out."""
    B, L, _ = x.shape
    H, M = mixer.heads, mixer.latents
    p_latent = mixer.q_proj(x).view(B, L, H, M).softmax(-1)  # (B, L, H, M)
    scores = mixer.k_proj(x).view(B, L, H, M)
    v = mixer.v_proj(x).view(B, L, H, -1)
    y = torch.zeros_like(v)
    for t in range(L):
        seen = t + 1 if causal else L
        p_token = scores[:, :seen].softmax(1)  # p(s | l) over the tokens seen
        pooled = torch.einsum("bshm,bshd->bhmd", p_token, v[:, :seen])
        y[:, t] = torch.einsum("bhm,bhmd->bhd", p_latent[:, t], pooled)
    return mixer.o_proj(y.reshape(B, L, -1))


def _titans_loop(q, k, v, lr, eta, alpha, W1, W2, b):
    """The Titans equations with autograd's gradients of 1/2 ||M(k_t) - v_t||^2 for
    M(x) = W2 silu(W1 x), taken at the weights each mini-batch of b starts from."""
    S1, S2, start, out = torch.zeros_like(W1), torch.zeros_like(W2), (W1, W2), []
    for t in range(q.shape[2]):
        w1, w2 = (w.detach().clone().requires_grad_(True) for w in start)
        prediction = torch.einsum("bhdj,bhj->bhd", w2,
                                  F.silu(torch.einsum("bhjd,bhd->bhj", w1, k[:, :, t])))
        loss = 0.5 * ((prediction - v[:, :, t]) ** 2).sum()
        g1, g2 = torch.autograd.grad(loss, (w1, w2))
        theta = lr[:, :, t, None, None]
        S1 = eta[:, :, t, None, None] * S1 - theta * g1
        S2 = eta[:, :, t, None, None] * S2 - theta * g2
        W1 = (1 - alpha[:, :, t, None, None]) * W1 + S1
        W2 = (1 - alpha[:, :, t, None, None]) * W2 + S2
        hidden = F.silu(torch.einsum("bhjd,bhd->bhj", W1, q[:, :, t]))
        out.append(torch.einsum("bhdj,bhj->bhd", W2, hidden))
        if (t + 1) % b == 0:
            start = (W1, W2)
    return torch.stack(out, 2)


def test_performer_and_reformer_run_in_float16():
    x = torch.randn(2, 11, 16, generator=torch.Generator().manual_seed(0))
    for name in ("performer", "reformer", "flatten"):
        ref = make_mixer(name, causal=True)
        half = make_mixer(name, causal=True, dtype=torch.float16)
        y = half(x.half()).float()
        assert torch.isfinite(y).all(), name
        assert (y - ref(x)).abs().mean() < 0.01 * ref(x).abs().mean() + 0.002, name


def test_rglru_follows_the_griffin_equations():
    torch.manual_seed(0)
    mixer = aa.create_mixer("rglru", dim=8, heads=2, causal=True).double().eval()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    with torch.no_grad():
        pre = mixer.in_proj(x)  # temporal convolution (kernel 4, causal, depthwise)
        w = mixer.conv.conv.weight[:, 0]  # (C, 4)
        padded = F.pad(pre, (0, 0, 3, 0))
        u = sum(padded[:, j:j + 7] * w[:, j] for j in range(4)) + mixer.conv.conv.bias

        def block_diagonal(layer, v):
            halves = v.split(4, dim=-1)
            return torch.cat([halves[h] @ layer.weight[h] + layer.bias[h] for h in range(2)], -1)

        r = torch.sigmoid(block_diagonal(mixer.gate_a, u))
        i = torch.sigmoid(block_diagonal(mixer.gate_x, u))
        a = torch.sigmoid(mixer.Lambda) ** (8 * r)  # a_t = a^(c r_t), c = 8
        h, states = torch.zeros(2, 8, dtype=torch.float64), []
        for t in range(7):
            # the released model's reset at the first position: h_0 = i_0 * u_0
            multiplier = 1.0 if t == 0 else torch.sqrt(1 - a[:, t] ** 2)
            h = a[:, t] * h + multiplier * (i[:, t] * u[:, t])
            states.append(h)
        expected = mixer.o_proj(F.gelu(mixer.gate_proj(x)) * torch.stack(states, 1))
    torch.testing.assert_close(mixer(x), expected, rtol=1e-9, atol=1e-9)
    # decoding from an empty state resets at its first token too, and a split sequence
    # (prefill, then more) does not reset again
    with torch.no_grad():
        y, state = mixer.prefill(x[:, :3])
        rest, _ = mixer.prefill(x[:, 3:], state)
        torch.testing.assert_close(torch.cat([y, rest], 1), expected, rtol=1e-9, atol=1e-9)
        state, steps = None, []
        for t in range(7):
            y_t, state = mixer.step(x[:, t], state)
            steps.append(y_t)
        torch.testing.assert_close(torch.stack(steps, 1), expected, rtol=1e-9, atol=1e-9)
        # left padding: the first real token is the reset
        padded = torch.cat([torch.randn(2, 2, 8, dtype=torch.float64), x], 1)
        mask = torch.arange(9)[None].expand(2, -1) >= 2
        torch.testing.assert_close(mixer(padded, mask=mask)[:, 2:], expected, rtol=1e-9,
                                   atol=1e-9)
    # the paper's initialization: a^c in [0.9, 0.999]
    decay = torch.sigmoid(mixer.Lambda) ** 8
    assert bool((decay >= 0.9 - 1e-9).all() and (decay <= 0.999 + 1e-9).all())


def test_griffin_is_rglru_layers_with_local_attention():
    model = CausalLM(30, dim=16, depth=3, heads=2, mixer="griffin")
    assert [type(b.mixer).__name__ for b in model.blocks] == ["RGLRU", "RGLRU",
                                                              "LocalAttention"]
    assert model.blocks[2].mixer.window == 1024
    prompt = torch.randint(0, 30, (2, 4))
    full = prompt
    for _ in range(6):
        full = torch.cat([full, model(full)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(model.generate(prompt, 6), full)


@given(st.integers(1, 40), st.integers(1, 6), st.integers(1, 12),
       st.sampled_from(["recurrent", "chunk", "parallel"]), st.integers(0, 999),
       st.sampled_from([0.01, 1.0, 4.0, 40.0]), st.sampled_from([torch.float64, torch.float32]))
def test_gsa_equals_the_slot_equations(L, m, chunk, form, seed, strength, dtype):
    """Chunks whose slots decay by at most exp(-30) read keys through one product; those
    that decay more, through every decay summed over its own span (strength 40)."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, 2, L, 3, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 2, L, 4, generator=g, dtype=torch.float64)
    log_alpha = -strength * torch.rand(2, 2, L, m, generator=g, dtype=torch.float64)
    K0 = torch.randn(2, 2, m, 3, generator=g, dtype=torch.float64)
    V0 = torch.randn(2, 2, m, 4, generator=g, dtype=torch.float64)
    expected, K, V = _slot_loop(q, k, v, log_alpha.exp(), K0, V0)
    out, (K1, V1) = ops.gated_slot_attention(
        q.to(dtype), k.to(dtype), v.to(dtype), log_alpha=log_alpha.to(dtype), form=form,
        chunk_size=chunk, initial_state=(K0.to(dtype), V0.to(dtype)), return_state=True)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for got, want in ((out, expected), (K1, K), (V1, V)):
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def test_gsa_mixer_forgets_at_the_damped_gate_rate():
    """a_t = sigmoid(W_a x_t)^(1/tau): the slots' forget gates the mixer hands the op."""
    torch.manual_seed(0)
    mixer = aa.create_mixer("gsa", dim=8, heads=2, causal=True, slots=3, tau=4.0).double()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    seen = {}
    original = ops.gated_slot_attention

    def spy(*args, **kwargs):
        seen["log_alpha"] = kwargs["log_alpha"]
        return original(*args, **kwargs)

    ops.gated_slot_attention = spy
    try:
        mixer(x)
    finally:
        ops.gated_slot_attention = original
    gate = torch.sigmoid(mixer.a_proj(x)) ** 0.25  # (1, 5, heads * slots)
    torch.testing.assert_close(seen["log_alpha"].exp(),
                               gate.unflatten(-1, (2, 3)).transpose(1, 2))
    with pytest.raises(ValueError, match="log_alpha must have shape"):
        ops.gated_slot_attention(x.view(1, 1, 5, 8), x.view(1, 1, 5, 8), x.view(1, 1, 5, 8),
                                 log_alpha=torch.zeros(1, 1, 5))


@given(st.integers(1, 30), st.integers(1, 9), st.sampled_from(["chunk", "recurrent"]),
       st.integers(0, 999), st.integers(1, 29))
def test_ttt_linear_is_mini_batch_gradient_descent(L, b, form, seed, split):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 2, L, 3, generator=g, dtype=torch.float64) for _ in range(3))
    eta = torch.rand(2, 2, L, generator=g, dtype=torch.float64)
    W0 = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)
    expected, W_end = _ttt_loop(q, k, v, eta, W0, b)
    out, (start, grad, offset) = ops.ttt_linear(q, k, v, eta=eta, mini_batch=b, form=form,
                                                initial_state=W0, return_state=True)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(start - grad, W_end, rtol=1e-9, atol=1e-9)
    assert offset == L % b
    # the state continues a sequence split anywhere, mid mini-batch included
    cut = min(split, L - 1) if L > 1 else 1
    if cut < L:
        first, state = ops.ttt_linear(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut],
                                      eta=eta[:, :, :cut], mini_batch=b, form=form,
                                      initial_state=W0, return_state=True)
        rest = ops.ttt_linear(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:],
                              eta=eta[:, :, cut:], mini_batch=b, form=form,
                              initial_state=state)
        torch.testing.assert_close(torch.cat([first, rest], 2), expected, rtol=1e-9,
                                   atol=1e-9)


def test_ttt_linear_with_single_token_batches_is_the_delta_rule():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 12, 4, generator=g, dtype=torch.float64) for _ in range(3))
    eta = torch.rand(1, 2, 12, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ops.ttt_linear(q, k, v, eta=eta, mini_batch=1),
                               ops.delta_rule(q, k, v, beta=eta, form="recurrent"))
    with pytest.raises(ValueError, match="eta must have shape"):
        ops.ttt_linear(q, k, v, eta=eta[..., :5])
    with pytest.raises(ValueError, match="i must be an int in"):
        ops.ttt_linear(q, k, v, eta=eta, mini_batch=2,
                       initial_state=(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), 5))


def test_ttt_linear_mixer_starts_from_its_learned_weight():
    torch.manual_seed(0)
    mixer = aa.create_mixer("ttt_linear", dim=8, heads=2, causal=True, mini_batch=3,
                            inner="linear")
    with torch.no_grad():
        mixer.initial_weight.normal_()
    x = torch.randn(2, 7, 8)
    mixer(x).sum().backward()
    assert mixer.initial_weight.grad is not None and mixer.initial_weight.grad.abs().sum() > 0
    state = mixer.init_state(2)
    torch.testing.assert_close(state["ttt"][0][0], mixer.initial_weight.detach())


def _layer_norm(z, weight, bias, eps=1e-6):
    return torch.nn.functional.layer_norm(z, z.shape[-1:], eps=eps) * weight + bias


def _ttt_layer_norm_loop(q, k, v, lr, token_eta, ln_weight, ln_bias, W0, b0):
    """TTT-Linear as released, token by token from the paper's equations: the inner model
    f(x) = x + LN(x W + b) takes, at each token, the gradient (by autograd) of
    1/2 ||LN(k W + b) - (v - k)||^2 at its mini-batch's starting model; token t (place i)
    reads the model after token_eta[i] times the lr-weighted sum of the gradients so far."""
    B, H, L, D = q.shape
    b = token_eta.shape[0]
    out = torch.zeros_like(q)
    for row in range(B):
        for h in range(H):
            W, bias = W0[h], b0[h]
            grad_w, grad_b = torch.zeros_like(W), torch.zeros_like(bias)
            for t in range(L):
                i = t % b
                with torch.enable_grad():
                    W_req = W.detach().clone().requires_grad_()
                    b_req = bias.detach().clone().requires_grad_()
                    key = k[row, h, t].detach()
                    loss = 0.5 * ((_layer_norm(key @ W_req + b_req, ln_weight[h], ln_bias[h])
                                   - (v[row, h, t] - key)) ** 2).sum()
                    dW, db = torch.autograd.grad(loss, (W_req, b_req))
                grad_w, grad_b = grad_w + lr[row, h, t] * dW, grad_b + lr[row, h, t] * db
                W_t, b_t = W - token_eta[i] * grad_w, bias - token_eta[i] * grad_b
                query = q[row, h, t]
                out[row, h, t] = query + _layer_norm(query @ W_t + b_t, ln_weight[h],
                                                     ln_bias[h])
                if i == b - 1:
                    W, bias = W_t, b_t
                    grad_w, grad_b = torch.zeros_like(W), torch.zeros_like(bias)
    return out


@given(L=st.integers(2, 9), b=st.integers(1, 4), split=st.integers(1, 8),
       seed=st.integers(0, 3))
def test_ttt_layer_norm_forms_equal_the_token_by_token_reference(L, b, split, seed):
    g = torch.Generator().manual_seed(seed)
    def draw(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    q, k, v = draw(1, 2, L, 4), draw(1, 2, L, 4), draw(1, 2, L, 4)
    lr = torch.rand(1, 2, L, generator=g, dtype=torch.float64)
    token_eta = 1 / torch.arange(1, b + 1, dtype=torch.float64) + draw(b, scale=0.1)
    params = dict(ln_weight=1 + draw(2, 4, scale=0.1), ln_bias=draw(2, 4, scale=0.1),
                  initial_weight=draw(2, 4, 4, scale=0.3), initial_bias=draw(2, 4, scale=0.1))
    expected = _ttt_layer_norm_loop(q, k, v, lr, token_eta, params["ln_weight"],
                                    params["ln_bias"], params["initial_weight"],
                                    params["initial_bias"])
    cut = min(split, L - 1)
    for form in ("chunk", "recurrent"):
        out = ops.ttt_layer_norm(q, k, v, lr=lr, token_eta=token_eta, form=form, **params)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
        first, state = ops.ttt_layer_norm(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut],
                                          lr=lr[:, :, :cut], token_eta=token_eta, form=form,
                                          return_state=True, **params)
        rest = ops.ttt_layer_norm(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:],
                                  lr=lr[:, :, cut:], token_eta=token_eta, form=form,
                                  initial_state=state, **params)
        torch.testing.assert_close(torch.cat([first, rest], 2), expected, rtol=1e-10,
                                   atol=1e-10)


def test_ttt_linear_mixer_is_the_released_model():
    torch.manual_seed(0)
    mixer = aa.create_mixer("ttt_linear", dim=8, heads=2, causal=True, mini_batch=3).double()
    with torch.no_grad():  # away from the initialization, so that every part shows
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    with torch.no_grad():
        q, k, v = (p(x).view(2, 7, 2, 4).transpose(1, 2)
                   for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
        positions = torch.arange(7) % 3  # RoPE restarts with each mini-batch
        q, k = ops.rotary(q, positions), ops.rotary(k, positions)
        lr = (torch.sigmoid(mixer.lr_proj(x)) / 4).transpose(1, 2)  # base_lr 1, head_dim 4
        token_eta = (1 / torch.arange(1, 4) + mixer.token_eta_offset).clamp_min(0)
        o = _ttt_layer_norm_loop(q, k, v, lr, token_eta, mixer.ln_weight, mixer.ln_bias,
                                 mixer.initial_weight, mixer.initial_bias)
        expected = mixer.o_proj(mixer.post_norm(o.transpose(1, 2).reshape(2, 7, 8)))
        torch.testing.assert_close(mixer(x), expected, rtol=1e-9, atol=1e-9)
    mixer(x).sum().backward()  # every learned part is trained
    for name in ("initial_weight", "initial_bias", "token_eta_offset", "ln_weight", "ln_bias"):
        assert getattr(mixer, name).grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="inner must be one of"):
        aa.create_mixer("ttt_linear", dim=8, heads=2, causal=True, inner="mlp")
    with pytest.raises(ValueError, match="head_dim .* must be even"):
        aa.create_mixer("ttt_linear", dim=6, heads=2, causal=True)


@pytest.mark.parametrize("causal", [True, False])
def test_aaren_attends_with_its_learned_query(causal):
    torch.manual_seed(0)
    mixer = aa.create_mixer("aaren", dim=8, heads=2, causal=causal).double()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    k = mixer.k_proj(x).view(2, 9, 2, 4).transpose(1, 2)
    v = mixer.v_proj(x).view(2, 9, 2, 4).transpose(1, 2)
    scores = torch.einsum("bhld,hd->bhl", k, mixer.query) / 2.0  # q . k_s / sqrt(D)
    def out(o):
        return mixer.o_proj(o.transpose(1, 2).reshape(2, 9, 8))

    expected = out(_prefix_pool(scores, v))
    if not causal:  # the prefix pass plus the pass over the reversed sequence
        expected = expected + out(_prefix_pool(scores.flip(-1), v.flip(-2)).flip(-2))
    torch.testing.assert_close(mixer(x), expected)


@pytest.mark.parametrize("causal", [True, False])
def test_separable_attention_follows_mobilevit_v2(causal):
    torch.manual_seed(0)
    mixer = aa.create_mixer("separable", dim=8, heads=1, causal=causal).double()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    keep = torch.ones(2, 9, dtype=torch.bool)
    scores = mixer.score(x)[..., 0]  # (B, L): x W_I
    keys = mixer.k_proj(x)
    if causal:
        context = _prefix_pool(scores, keys)  # (B, L, D): pools s <= t
    else:
        keep[1, 6:] = False
        weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1)
        context = (weights[..., None] * keys).sum(1, keepdim=True)
    expected = mixer.o_proj(F.relu(mixer.v_proj(x)) * context)
    got = mixer(x, mask=None if causal else keep)
    torch.testing.assert_close(got[keep], expected[keep])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("spread", [1.0, 200.0])  # 200: scores span beyond the chunk form's
def test_latte_is_latent_attention(causal, spread):
    torch.manual_seed(0)
    mixer = aa.create_mixer("latte", dim=8, heads=2, causal=causal, latents=3,
                            chunk_size=4).double()
    with torch.no_grad():
        mixer.k_proj.weight.mul_(spread)
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    torch.testing.assert_close(mixer(x), _latte(mixer, x, causal))


def test_xcit_attends_across_channels():
    torch.manual_seed(0)
    mixer = aa.create_mixer("xcit", dim=8, heads=2).double()
    with torch.no_grad():
        mixer.temperature.copy_(torch.tensor([0.7, 2.0]))
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[1, 4:] = False
    heads = []
    for h in range(2):
        cols = slice(4 * h, 4 * h + 4)
        outs = []
        for b in range(2):
            real = keep[b]
            q, k = mixer.q_proj(x[b, real])[:, cols], mixer.k_proj(x[b, real])[:, cols]
            v = mixer.v_proj(x[b])[:, cols]
            q_hat = q / q.norm(dim=0, keepdim=True)  # channel i over the tokens
            k_hat = k / k.norm(dim=0, keepdim=True)
            A = torch.softmax(mixer.temperature[h] * q_hat.T @ k_hat, dim=-1)  # (D, D)
            outs.append(v @ A.T)  # y_t = A v_t
        heads.append(torch.stack(outs))
    expected = mixer.o_proj(torch.cat(heads, -1))
    torch.testing.assert_close(mixer(x, mask=keep)[keep], expected[keep])


def test_soft_with_every_token_a_landmark_is_exact_gaussian_attention():
    torch.manual_seed(0)
    mixer = aa.create_mixer("soft", dim=8, heads=2, landmarks=7, iterations=60).double()
    with torch.no_grad():
        mixer.qk_proj.weight.mul_(4)  # spread points: a well-conditioned kernel
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    q = mixer.qk_proj(x).view(2, 7, 2, 4).transpose(1, 2)
    v = mixer.v_proj(x).view(2, 7, 2, 4).transpose(1, 2)
    distance = ((q[:, :, :, None] - q[:, :, None]) ** 2).sum(-1)
    S = torch.exp(-distance / (2 * 4 ** 0.5))  # exp(-||q_i - q_j||^2 / (2 sqrt(D)))
    expected = mixer.o_proj((S @ v).transpose(1, 2).reshape(2, 7, 8))
    torch.testing.assert_close(mixer(x), expected, rtol=1e-8, atol=1e-8)


@given(length=st.integers(1, 40), landmarks=st.integers(1, 12))
def test_soft_segments_are_adaptive_pooling_over_the_real_tokens(length, landmarks):
    from attnarena.ops.segments import segment_means

    g = torch.Generator().manual_seed(length * 13 + landmarks)
    q = torch.randn(1, 2, length, 3, generator=g, dtype=torch.float64)
    m = min(landmarks, length)
    pooled = F.adaptive_avg_pool1d(q[0].transpose(1, 2), m).transpose(1, 2)
    real = torch.ones(1, length, dtype=torch.bool)
    marks, present = segment_means(q, real, landmarks)
    torch.testing.assert_close(marks[0, :, :m], pooled)
    assert present[0].tolist() == [True] * m + [False] * (landmarks - m)
    # the same tokens among padding (anywhere in the row) give the same landmarks
    spread = torch.randn(1, 2, length + 5, 3, generator=g, dtype=torch.float64)
    where = torch.randperm(length + 5, generator=g)[:length].sort().values
    spread[:, :, where] = q
    mask = torch.zeros(1, length + 5, dtype=torch.bool)
    mask[0, where] = True
    marks_padded, _ = segment_means(spread, mask, landmarks)
    torch.testing.assert_close(marks_padded[0, :, :m], pooled)


def test_soft_padded_rows_equal_each_sequence_alone():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, 64, 8, generator=g, dtype=torch.float64) * 2.5
    v = torch.randn(3, 2, 64, 8, generator=g, dtype=torch.float64)
    lengths = [64, 56, 5]  # the last is shorter than the 8 landmarks
    mask = torch.arange(64)[None] < torch.tensor(lengths)[:, None]
    batched = ops.soft_attention(q, v, landmarks=8, iterations=60, mask=mask)
    for row, n in enumerate(lengths):
        alone = ops.soft_attention(q[row:row + 1, :, :n], v[row:row + 1, :, :n], landmarks=8,
                                   iterations=60)
        torch.testing.assert_close(batched[row:row + 1, :, :n], alone, rtol=1e-9, atol=1e-9)


def test_soft_newton_inverse_is_the_pseudo_inverse():
    from attnarena.ops.soft import newton_inverse

    g = torch.Generator().manual_seed(0)
    points = torch.randn(6, 3, generator=g, dtype=torch.float64)
    A = torch.exp(-((points[:, None] - points[None]) ** 2).sum(-1))
    torch.testing.assert_close(newton_inverse(A, 80), torch.linalg.pinv(A), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_transnormer_norm_attention(causal):
    torch.manual_seed(0)
    mixer = aa.create_mixer("transnormer", dim=8, heads=2, causal=causal).double()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    q, k, v = (p(x).view(2, 9, 2, 4).transpose(1, 2)
               for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    scores = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2)  # no division by their sum
    if causal:
        scores = scores.tril()
    o = scores @ v
    o = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6) * mixer.norm_weight
    torch.testing.assert_close(mixer(x), mixer.o_proj(o.transpose(1, 2).reshape(2, 9, 8)))


@pytest.mark.parametrize("causal", [True, False])
def test_transnormer_diag_attention_stays_in_its_block(causal):
    torch.manual_seed(0)
    mixer = aa.create_mixer("transnormer", dim=8, heads=2, causal=causal, attention="diag",
                            block=4).double().eval()
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    q, k, v = (p(x).view(2, 10, 2, 4).transpose(1, 2)
               for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    index = torch.arange(10)
    allowed = (index[:, None] // 4) == (index[None] // 4)  # the same block of 4
    if causal:
        allowed &= index[None] <= index[:, None]
    scores = (q @ k.transpose(-1, -2) / 2.0).masked_fill(~allowed, float("-inf"))
    expected = mixer.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 10, 8))
    torch.testing.assert_close(mixer(x), expected)
    if causal:  # decoding keeps only the current block
        state, steps = mixer.init_state(2), []
        for t in range(10):
            y, state = mixer.step(x[:, t], state)
            steps.append(y)
        torch.testing.assert_close(torch.stack(steps, 1), expected)
    with pytest.raises(ValueError, match="attention must be one of norm, diag"):
        aa.create_mixer("transnormer", dim=8, attention="block")


@given(st.integers(1, 20), st.integers(1, 6), st.sampled_from(["chunk", "recurrent"]),
       st.integers(0, 999))
def test_titans_memory_follows_its_update_rule(L, b, form, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (F.normalize(torch.randn(2, 2, L, 3, generator=g, dtype=torch.float64), dim=-1)
               for _ in range(3))
    lr = 0.5 * torch.rand(2, 2, L, generator=g, dtype=torch.float64)
    eta, alpha = (torch.rand(2, 2, L, generator=g, dtype=torch.float64) for _ in range(2))
    W1 = 0.5 * torch.randn(2, 2, 4, 3, generator=g, dtype=torch.float64)
    W2 = 0.5 * torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64)
    expected = _titans_loop(q, k, v, lr, eta, alpha, W1, W2, b)
    out = ops.neural_memory(q, k, v, lr=lr, log_momentum=eta.log(), log_keep=(1 - alpha).log(),
                            weights=(W1, W2), mini_batch=b, form=form)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


def test_titans_refuses_bad_inputs_and_learns_its_initial_memory():
    q = torch.randn(1, 2, 5, 3)
    zeros = torch.zeros(1, 2, 5)
    W = (torch.zeros(1, 2, 4, 3), torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="lr must be"):
        ops.neural_memory(q, q, q, lr=-torch.ones(1, 2, 5), log_momentum=zeros,
                          log_keep=zeros, weights=W)
    with pytest.raises(ValueError, match="log_keep must be <= 0"):
        ops.neural_memory(q, q, q, lr=zeros, log_momentum=zeros, log_keep=zeros + 1,
                          weights=W)
    torch.manual_seed(0)
    mixer = aa.create_mixer("titans", dim=8, heads=2, causal=True, mini_batch=3)
    mixer(torch.randn(2, 7, 8)).sum().backward()
    assert mixer.W1.grad.abs().sum() > 0 and mixer.W2.grad.abs().sum() > 0


@given(st.integers(1, 30), st.integers(1, 12), st.booleans(), st.integers(0, 999))
def test_vq_attention_is_softmax_over_quantized_keys(L, block, causal, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 2, L, 3, generator=g, dtype=torch.float64) for _ in range(3))
    codebook = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    keep = torch.ones(2, L, dtype=torch.bool)
    keep[1, (L + 1) // 2:] = False
    # nearest codeword of each key, written out
    distance = ((k[:, :, :, None, :] - codebook[None, :, None]) ** 2).sum(-1)
    k_hat = torch.stack([codebook[h][distance[:, h].argmin(-1)] for h in range(2)], 1)
    scores = q @ k_hat.transpose(-1, -2) / 3 ** 0.5
    allowed = keep[:, None, None, :].expand(2, 2, L, L).clone()
    if causal:
        allowed &= torch.ones(L, L, dtype=torch.bool).tril()
    expected = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    real = keep[:, None, :].expand(2, 2, L)
    forms = ["parallel", "chunk"] + (["recurrent"] if causal else [])
    for form in forms:
        out = ops.vq_attention(q, k, v, codebook=codebook, causal=causal, block=block,
                               form=form, mask=None if form == "recurrent" else keep)
        if form == "recurrent":  # no mask: compare the first sequence, which has none
            torch.testing.assert_close(out[0], expected[0])
        else:
            torch.testing.assert_close(out[real], expected[real])


def test_vq_codebook_follows_the_keys_in_training():
    torch.manual_seed(0)
    mixer = aa.create_mixer("transformer_vq", dim=8, heads=2, causal=True, codes=4, ema=0.5)
    before = mixer.codebook.clone()
    x = torch.randn(3, 12, 8)
    mixer.eval()
    mixer(x)
    assert torch.equal(mixer.codebook, before)  # evaluation leaves the codebook alone
    mixer.train()
    mixer(x)
    keys = mixer.k_proj(x).view(3, 12, 2, 4).transpose(1, 2).detach()
    from attnarena.ops.vq import quantize
    codes, _ = quantize(keys, before)
    for h in range(2):
        for s in range(4):
            chosen = keys[:, h][codes[:, h] == s]
            want = before[h, s] if len(chosen) == 0 else 0.5 * before[h, s] + 0.5 * chosen.mean(0)
            torch.testing.assert_close(mixer.codebook[h, s], want)


def test_vq_keys_learn_through_the_straight_through_estimator():
    torch.manual_seed(0)
    mixer = aa.create_mixer("transformer_vq", dim=8, heads=2, causal=True, codes=4, block=4)
    x = torch.randn(2, 9, 8)
    mixer(x).square().sum().backward()
    assert mixer.k_proj.weight.grad.abs().sum() > 0
    mixer.zero_grad()
    mixer.surrogate_gradients = False  # the exact derivative: quantized keys are constant
    mixer(x).square().sum().backward()
    assert mixer.k_proj.weight.grad is None or mixer.k_proj.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("causal", [True, False])
def test_routing_attends_within_clusters(causal):
    torch.manual_seed(0)
    mixer = aa.create_mixer("routing", dim=8, heads=2, causal=causal, clusters=3).double().eval()
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    keep = torch.ones(2, 10, dtype=torch.bool)
    keep[1, 7:] = False
    q, k, v = (p(x).view(2, 10, 2, 4).transpose(1, 2)
               for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    nearest = [(F.normalize(t, dim=-1) @ mixer.centroids.transpose(-1, -2)).argmax(-1)
               for t in (q, k)]  # (B, H, L) cluster of each query and key
    same = nearest[0][..., :, None] == nearest[1][..., None, :]
    allowed = same & keep[:, None, None, :]
    if causal:
        allowed &= torch.ones(10, 10, dtype=torch.bool).tril()
    scores = (q @ k.transpose(-1, -2) / 2.0).masked_fill(~allowed, float("-inf"))
    o = torch.nan_to_num(scores.softmax(-1)) @ v
    want = mixer.o_proj(o.transpose(1, 2).reshape(2, 10, 8))
    got = mixer(x, mask=keep)
    torch.testing.assert_close(got[keep], want[keep])


def test_routing_centroids_move_toward_their_members_in_training():
    torch.manual_seed(0)
    mixer = aa.create_mixer("routing", dim=8, heads=2, causal=True, clusters=2, ema=0.5)
    before = mixer.centroids.clone()
    x = torch.randn(2, 8, 8)
    mixer.eval()
    mixer(x)
    assert torch.equal(mixer.centroids, before)
    mixer.train()
    mixer(x)
    assert not torch.equal(mixer.centroids, before)
    torch.testing.assert_close(mixer.centroids.norm(dim=-1), torch.ones(2, 2))


def test_vq_attention_stays_finite_when_absent_codes_score_far_higher():
    """Exponents are taken relative to the keys a query sees, not to every code: a code no
    key uses may score far above them without an overflow or an underflow to 0 / 0."""
    g = torch.Generator().manual_seed(0)
    q = (10 * torch.randn(1, 1, 40, 4, generator=g)).requires_grad_(True)
    k = torch.randn(1, 1, 40, 4, generator=g, requires_grad=True)
    v = torch.randn(1, 1, 40, 4, generator=g)
    codebook = 10 * torch.randn(1, 8, 4, generator=g)
    outputs = {}
    for form in ("parallel", "chunk", "recurrent"):
        out = ops.vq_attention(q, k, v, codebook=codebook, causal=True, block=8, form=form)
        (grad,) = torch.autograd.grad(out.sum(), q)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all()
        outputs[form] = out
    torch.testing.assert_close(outputs["chunk"], outputs["parallel"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outputs["recurrent"], outputs["parallel"], rtol=1e-4, atol=1e-5)
