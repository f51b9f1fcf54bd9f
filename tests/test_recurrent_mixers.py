"""Properties of the recurrent-family mixers beyond the shared contract."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnarena as aa
from attnarena.mixers.recurrent import ShortConv
from conftest import make_mixer

RECURRENT = ["retention", "gla", "gsa", "aaren", "deltanet", "gated_deltanet", "deltaproduct",
             "rglru", "mamba", "mamba2", "mlstm", "s4d"]


@pytest.mark.parametrize("name", RECURRENT)
def test_bidirectional_is_forward_plus_reversed_scan(name):
    both = make_mixer(name, causal=False)
    causal = make_mixer(name, causal=True)
    causal.load_state_dict(both.state_dict())
    x = torch.randn(2, 9, 16)
    expected = causal(x) + causal(x.flip(1)).flip(1)
    torch.testing.assert_close(both(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", RECURRENT)
@pytest.mark.parametrize("causal", [True, False])
def test_right_padding_equals_the_unpadded_sequence(name, causal):
    """Padded tokens neither write to nor decay the state."""
    mixer = make_mixer(name, causal=causal)
    x = torch.randn(1, 12, 16)
    keep = torch.ones(1, 12, dtype=torch.bool)
    keep[0, 8:] = False
    padded = mixer(x, mask=keep)[:, :8]
    torch.testing.assert_close(padded, mixer(x[:, :8]), rtol=1e-5, atol=1e-5)


def test_retention_decays_follow_the_paper():
    mixer = aa.create_mixer("retention", dim=32, heads=4)
    expected = [math.log(1 - 2 ** (-5 - h)) for h in range(4)]
    torch.testing.assert_close(mixer.log_decay, torch.tensor(expected))


def test_gla_gates_are_low_rank_and_tempered():
    mixer = aa.create_mixer("gla", dim=32, heads=2)
    assert mixer.gate[0].out_features == 16 and mixer.key_dim == 16
    x = torch.randn(1, 5, 32)
    log_g = torch.nn.functional.logsigmoid(mixer.gate(x)) / 16
    assert (log_g <= 0).all() and (log_g > -1).any()


def test_mamba_initialization_follows_the_paper():
    mixer = aa.create_mixer("mamba", dim=32, state_size=16)
    A = -mixer.A_log.exp()
    torch.testing.assert_close(A[0], -torch.arange(1, 17, dtype=torch.float32))
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert mixer.dt_rank == 2 and mixer.inner == 64


def test_mamba2_is_decayed_attention_over_its_ssm_inputs():
    """One head, state 1: y_t = sum_{j<=t} C_t B_j dt_j exp(sum_{j<s<=t} dt_s A) x_j + D x_t."""
    torch.manual_seed(0)
    mixer = aa.create_mixer("mamba2", dim=4, heads=1, causal=True, state_size=1, expand=1,
                            conv_size=1).double()
    x = torch.randn(1, 6, 4, dtype=torch.float64)
    z, xbc, dt = mixer.in_proj(x).split([4, 6, 1], dim=-1)
    xbc, _ = mixer.conv(xbc)
    xs, Bm, Cm = torch.nn.functional.silu(xbc).split([4, 1, 1], dim=-1)
    dt = torch.nn.functional.softplus(dt + mixer.dt_bias)[0, :, 0]
    A = -mixer.A_log.exp()[0]
    y = torch.zeros(6, 4, dtype=torch.float64)
    for t in range(6):
        for j in range(t + 1):
            decay = torch.exp(A * dt[j + 1:t + 1].sum())
            y[t] += Cm[0, t, 0] * Bm[0, j, 0] * dt[j] * decay * xs[0, j]
        y[t] += mixer.D[0] * xs[0, t]
    expected = mixer.out_proj(mixer.norm(y[None] * torch.nn.functional.silu(z)))
    torch.testing.assert_close(mixer(x), expected)


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet", "deltaproduct"])
def test_negative_eigenvalues_double_beta(name):
    """Grazzi et al. 2025: beta in (0, 2), so I - beta k k^T has eigenvalues in (-1, 1]."""
    plain = make_mixer(name, causal=True, negative_eigenvalues=False)
    extended = make_mixer(name, causal=True, negative_eigenvalues=True)
    extended.load_state_dict(plain.state_dict())
    x = torch.randn(2, 7, 16)
    betas = {}
    for label, mixer in (("plain", plain), ("extended", extended)):
        betas[label] = mixer._qkv_beta(x, None, None)[3].detach()
    torch.testing.assert_close(betas["extended"], 2 * betas["plain"])
    assert float(betas["extended"].max()) > 1.0  # some transitions flip a direction
    with pytest.raises(TypeError, match="negative_eigenvalues must be true or false"):
        make_mixer(name, negative_eigenvalues="yes")


def test_deltaproduct_with_one_step_is_deltanet():
    """n_h = 1: one Householder factor per token, which is DeltaNet."""
    product = make_mixer("deltaproduct", causal=True, householder=1, gated=False,
                         negative_eigenvalues=False)
    deltanet = make_mixer("deltanet", causal=True)
    deltanet.load_state_dict(product.state_dict())
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(product(x), deltanet(x), rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(kernel=st.integers(1, 5), length=st.integers(1, 9), with_state=st.booleans(),
       bias=st.booleans())
def test_short_conv_equals_the_convolution_over_history_and_input(kernel, length, with_state,
                                                                   bias):
    """The time-major short convolution is torch's causal depthwise Conv1d over the history
    (zeros without a state) followed by the input, and carries the last kernel - 1 inputs."""
    torch.manual_seed(kernel * 10 + length)
    conv = ShortConv(5, kernel, bias=bias).double()
    x = torch.randn(2, length, 5, dtype=torch.double)
    history = torch.randn(2, kernel - 1, 5, dtype=torch.double)
    state = history if with_state else None
    full = torch.cat([history if with_state else torch.zeros_like(history), x], dim=1)
    expected = conv.conv(full.transpose(1, 2)).transpose(1, 2)
    y, new_state = conv(x, state)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(new_state, full[:, full.shape[1] - (kernel - 1):])
    # the state holds its own few steps, not a view keeping the whole input alive
    assert new_state.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
