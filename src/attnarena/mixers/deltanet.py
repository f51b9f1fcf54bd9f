"""DeltaNet and Gated DeltaNet: linear attention whose state is updated by the delta rule."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnarena._validate import check_int
from attnarena import ops
from attnarena.mixers.recurrent import (PATTERNS, HeadNorm, RecurrentMixer, ShortConv,
                                        keep_mask, l2_normalize, merge_heads, split_heads)
from attnarena.ops._checks import compute_dtype
from attnarena.registry import FORMS, register_mixer


class _DeltaBase(RecurrentMixer):
    """q, k, v projections with short causal convolutions and SiLU, L2-normalized q and k,
    beta = sigmoid(W_b x) per head, a per-head RMS norm on the output.

    ``negative_eigenvalues=True`` doubles beta to (0, 2) (Grazzi et al. 2025, "Unlocking
    State-Tracking in Linear RNNs Through Negative Eigenvalues"): each transition
    I - beta k k^T then has eigenvalues in (-1, 1], which parity and other state-tracking
    tasks need."""

    pretrained_options = {}

    def __init__(self, dim, heads=1, causal=False, *, conv_size=4, form="chunk", chunk_size=64,
                 negative_eigenvalues=False):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size)
        check_int(conv_size, "conv_size")
        if not isinstance(negative_eigenvalues, bool):
            raise TypeError(f"negative_eigenvalues must be true or false, got "
                            f"{negative_eigenvalues!r}")
        self.beta_scale = 2.0 if negative_eigenvalues else 1.0
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim, bias=False)
                                                 for _ in range(3))
        self.q_conv, self.k_conv, self.v_conv = (ShortConv(dim, conv_size) for _ in range(3))
        self.b_proj = nn.Linear(dim, heads, bias=True)
        self.norm = HeadNorm(heads, self.head_dim)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    steps = None  # DeltaProduct's n_h: keys, values and betas then get a steps axis

    def _init_state(self, batch_size, device, dtype):
        D, K = self.head_dim, self.q_conv.kernel
        return {"S": torch.zeros(batch_size, self.heads, D, D, device=device,
                                 dtype=compute_dtype(dtype)),
                "conv": tuple(torch.zeros(batch_size, K - 1, conv.conv.in_channels,
                                          device=device, dtype=dtype)
                              for conv in (self.q_conv, self.k_conv, self.v_conv))}

    def _add_decay(self, dim, heads):
        """Gated DeltaNet's decay (Mamba-2's parametrization) and output gate."""
        self.a_proj = nn.Linear(dim, heads, bias=False)
        self.g_proj = nn.Linear(dim, dim, bias=False)
        self.A_log = nn.Parameter(torch.empty(heads).uniform_(1, 16).log())
        dt = torch.exp(torch.empty(heads).uniform_(math.log(1e-3), math.log(0.1)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def _log_alpha(self, x, keep):
        """log alpha_t = -exp(A_log) softplus(W_a x_t + dt_bias), 0 on padding: (B, H, L)."""
        rate = F.softplus(self.a_proj(x) + self.dt_bias).transpose(1, 2)
        return -self.A_log.exp()[None, :, None] * rate * keep[:, None, :]

    def _qkv_beta(self, x, state, mask):
        convs = (None, None, None) if state is None else state["conv"]
        outputs, new_convs = [], []
        for proj, conv, past in zip((self.q_proj, self.k_proj, self.v_proj),
                                    (self.q_conv, self.k_conv, self.v_conv), convs):
            y, c = conv(proj(x), past)
            outputs.append(split_heads(F.silu(y), self.heads))
            new_convs.append(c)
        q, k, v = outputs
        q = l2_normalize(q) / math.sqrt(self.head_dim)
        keep = keep_mask(mask, x)
        beta = self.beta_scale * torch.sigmoid(self.b_proj(x))  # (B, L, H [* steps])
        if self.steps is None:
            k = l2_normalize(k)
            beta = beta.transpose(1, 2) * keep[:, None, :]  # (B, H, L)
        else:  # (B, H, L, steps, D) keys and values, (B, H, L, steps) betas
            k = l2_normalize(k.unflatten(-1, (self.steps, self.head_dim)))
            v = v.unflatten(-1, (self.steps, self.head_dim))
            beta = beta.unflatten(-1, (self.heads, self.steps)).transpose(1, 2) \
                * keep[:, None, :, None]
        return q, k, v, beta, keep, tuple(new_convs)


@register_mixer(
    "deltanet", family="delta rule",
    export_caveat=("the chunk form builds its triangular system with diag_embed and "
                   "solve_triangular, which ONNX opset 17 lacks"),
    paper="Yang et al. 2024, Parallelizing Linear Transformers with the Delta Rule over "
          "Sequence Length",
    complexity="O(L C D + L D^2)", patterns=PATTERNS, forms=FORMS,
    form_notes={"chunk": "WY"})
class DeltaNet(_DeltaBase):
    """DeltaNet (Schlag et al. 2021; chunkwise training by Yang et al. 2024, "Parallelizing
    Linear Transformers with the Delta Rule over Sequence Length"):
    S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T, with L2-normalized keys and short
    convolutions on q, k, v as in the paper.

    Options: conv_size, form, chunk_size, negative_eigenvalues.
    """

    def _sequence(self, x, state, mask, form):
        q, k, v, beta, _, convs = self._qkv_beta(x, state, mask)
        o, S = ops.delta_rule(q, k, v, beta=beta, form=form, chunk_size=self.chunk_size,
                              initial_state=None if state is None else state["S"],
                              return_state=True)
        return self.o_proj(self.norm(merge_heads(o))), {"S": S, "conv": convs}


@register_mixer(
    "gated_deltanet", family="delta rule",
    export_caveat=("the chunk form builds its triangular system with diag_embed and "
                   "solve_triangular, which ONNX opset 17 lacks"),
    paper="Yang et al. 2025, Gated Delta Networks: Improving Mamba2 with Delta Rule",
    complexity="O(L C D + L D^2)", patterns=PATTERNS, forms=FORMS,
    form_notes={"chunk": "WY"})
class GatedDeltaNet(_DeltaBase):
    """Gated DeltaNet (Yang et al. 2025, "Gated Delta Networks"):
    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, with Mamba-2's decay
    alpha_t = exp(-exp(A_log) softplus(W_a x_t + dt_bias)) and a swish output gate.

    Options: conv_size, form, chunk_size, negative_eigenvalues.
    """

    def __init__(self, dim, heads=1, causal=False, *, conv_size=4, form="chunk", chunk_size=64,
                 negative_eigenvalues=False):
        super().__init__(dim, heads, causal, conv_size=conv_size, form=form,
                         chunk_size=chunk_size, negative_eigenvalues=negative_eigenvalues)
        self._add_decay(dim, heads)

    def _sequence(self, x, state, mask, form):
        q, k, v, beta, keep, convs = self._qkv_beta(x, state, mask)
        log_alpha = self._log_alpha(x, keep)
        o, S = ops.gated_delta_rule(q, k, v, log_alpha=log_alpha, beta=beta, form=form,
                                    chunk_size=self.chunk_size,
                                    initial_state=None if state is None else state["S"],
                                    return_state=True)
        y = self.o_proj(self.norm(merge_heads(o)) * F.silu(self.g_proj(x)))
        return y, {"S": S, "conv": convs}


@register_mixer(
    "deltaproduct", family="delta rule",
    step_export_caveat=("its chunk size is taken from the traced length and checked as a Python "
                        "int"),
    export_caveat="its chunk size is taken from the traced length and checked as a Python int",
    paper="Siems et al. 2025, DeltaProduct: Improving State-Tracking in Linear RNNs via "
          "Householder Products",
    complexity="O(n_h (L C D + L D^2))", patterns=PATTERNS, forms=FORMS,
    form_notes={"chunk": "WY over n_h L steps"})
class DeltaProduct(_DeltaBase):
    """DeltaProduct (Siems et al. 2025): ``householder`` (n_h) delta-rule steps per token,
    each with its own key, value and beta, so the state transition of a token is a product
    of n_h generalized Householder matrices (n_h = 1 is DeltaNet). With
    ``negative_eigenvalues`` each factor's eigenvalue 1 - beta reaches into (-1, 0)
    (Grazzi et al. 2025), which the paper pairs with n_h >= 2 for permutation groups.
    ``gated=True`` is Gated DeltaProduct: Gated DeltaNet's decay once per token and its
    output gate.

    Options: householder, gated, negative_eigenvalues, conv_size, form, chunk_size (tokens;
    32 by default, so that a chunk holds 64 delta-rule steps at n_h = 2, the delta rule's
    chunk: forward + backward at B4 L1024 took 329 ms in chunks of 64 tokens, 261 in 32).
    """

    pretrained_options = None  # n_h keys and values per token: no square k_proj, v_proj

    def __init__(self, dim, heads=1, causal=False, *, householder=2, gated=False,
                 negative_eigenvalues=False, conv_size=4, form="chunk", chunk_size=32):
        super().__init__(dim, heads, causal, conv_size=conv_size, form=form,
                         chunk_size=chunk_size, negative_eigenvalues=negative_eigenvalues)
        check_int(householder, "householder")
        if not isinstance(gated, bool):
            raise TypeError(f"gated must be true or false, got {gated!r}")
        self.steps, self.gated = householder, gated
        # n_h keys and values per token (and n_h betas per head)
        self.k_proj, self.v_proj = (nn.Linear(dim, householder * dim, bias=False)
                                    for _ in range(2))
        self.k_conv, self.v_conv = (ShortConv(householder * dim, conv_size) for _ in range(2))
        self.b_proj = nn.Linear(dim, heads * householder, bias=True)
        if gated:
            self._add_decay(dim, heads)

    def _sequence(self, x, state, mask, form):
        q, k, v, beta, keep, convs = self._qkv_beta(x, state, mask)
        o, S = ops.delta_product(q, k, v, beta=beta,
                                 log_alpha=self._log_alpha(x, keep) if self.gated else None,
                                 form=form, chunk_size=self.chunk_size,
                                 initial_state=None if state is None else state["S"],
                                 return_state=True)
        y = self.norm(merge_heads(o))
        if self.gated:
            y = y * F.silu(self.g_proj(x))
        return self.o_proj(y), {"S": S, "conv": convs}
