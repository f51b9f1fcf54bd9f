"""Each mechanism's defining property, checked against an independent computation."""
import math

import pytest
import torch
import torch.nn.functional as F

import attnarena as aa
from attnarena.ops import favor_features, orthogonal_gaussian


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
