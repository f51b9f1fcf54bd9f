"""Titans' neural long-term memory as a token mixer (Behrouz et al. 2025)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnarena import ops
from attnarena._validate import check_int, check_real
from attnarena.mixers.recurrent import (HeadNorm, RecurrentMixer, keep_mask, l2_normalize,
                                        merge_heads, split_heads)
from attnarena.ops._checks import compute_dtype
from attnarena.ops.titans import MEMORY_FORMS
from attnarena.registry import register_mixer


@register_mixer(
    "titans", family="test-time training",
    step_export_caveat=("its step reads Python ints of its state (the place in the mini-batch), "
                        "which the trace fixes"),
    export_caveat=("its memory's mini-batches are cut at the traced length: ONNX Runtime refuses a"
                   " longer input"),
    paper="Behrouz et al. 2025, Titans: Learning to Memorize at Test Time",
    complexity="O(L b D_h + L D D_h)", patterns=("causal",), forms=MEMORY_FORMS,
    form_notes={"chunk": "mini-batch parallel"})
class Titans(RecurrentMixer):
    """Titans' long-term memory (Behrouz et al. 2025; the "memory as a layer" use): per head, a
    two-layer MLP memory M(x) = W2 silu(W1 x) of hidden width ``expand`` x head width, starting
    from learned weights, written at test time by gradient descent on 1/2 ||M(k_t) - v_t||^2
    with momentum eta_t and forgetting alpha_t, and read with q_t. Per token and head: theta_t =
    base_lr * sigmoid(w_theta . x_t), eta_t = sigmoid(w_eta . x_t), alpha_t = sigmoid(w_alpha .
    x_t). Queries and keys are L2-normalized (as the paper); gradients of one mini-batch of
    ``mini_batch`` tokens are taken at its starting weights (the paper's chunkwise training); a
    per-head RMS norm precedes the output projection.

    Causal only: mini-batches are counted from a sequence's first token.

    Options: mini_batch, expand, base_lr, form ("chunk" or "recurrent").
    """

    def __init__(self, dim, heads=1, causal=False, *, mini_batch=16, expand=2, base_lr=0.1,
                 form="chunk"):
        super().__init__(dim, heads, causal, form=form, chunk_size=None)
        check_int(mini_batch, "mini_batch")
        check_int(expand, "expand")
        check_real(base_lr, "base_lr", low_open=True)
        self.mini_batch, self.base_lr = mini_batch, float(base_lr)
        D = self.head_dim
        hidden = expand * D
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim, bias=False)
                                                 for _ in range(3))
        self.gate_proj = nn.Linear(dim, 3 * heads)  # theta, eta, alpha per head
        self.W1 = nn.Parameter(torch.randn(heads, hidden, D) / math.sqrt(D))
        self.W2 = nn.Parameter(torch.randn(heads, D, hidden) / math.sqrt(hidden))
        self.norm = HeadNorm(heads, D)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def _memory(self, batch_size):
        return (self.W1.expand(batch_size, -1, -1, -1), self.W2.expand(batch_size, -1, -1, -1))

    def _init_state(self, batch_size, device, dtype):
        dtype = compute_dtype(dtype)
        W1, W2 = (w.detach().to(device, dtype).clone() for w in self._memory(batch_size))
        return {"memory": (W1, W2, torch.zeros_like(W1), torch.zeros_like(W2), W1.clone(),
                           W2.clone(), 0)}

    def _sequence(self, x, state, mask, form):
        q, k, v = (split_heads(p(x), self.heads) for p in (self.q_proj, self.k_proj,
                                                              self.v_proj))
        q, k = l2_normalize(q), l2_normalize(k)
        keep = keep_mask(mask, x)[..., None]
        gates = self.gate_proj(x).unflatten(-1, (3, self.heads)).permute(2, 0, 3, 1)
        lr = self.base_lr * torch.sigmoid(gates[0]) * keep[..., 0][:, None]
        # padding: no write, no decay of the momentum or the memory
        log_momentum = F.logsigmoid(gates[1]) * keep[..., 0][:, None]
        log_keep = F.logsigmoid(-gates[2]) * keep[..., 0][:, None]
        y, memory = ops.neural_memory(q, k, v, lr=lr, log_momentum=log_momentum,
                                      log_keep=log_keep, weights=self._memory(x.shape[0]),
                                      mini_batch=self.mini_batch,
                                      form="recurrent" if form == "recurrent" else "chunk",
                                      initial_state=None if state is None
                                      else state["memory"], return_state=True)
        return self.o_proj(self.norm(merge_heads(y))), {"memory": memory}
