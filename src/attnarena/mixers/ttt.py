"""TTT-Linear (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive
Hidden States"): a linear model trained at test time, one gradient step per token."""
from __future__ import annotations

import torch
from torch import nn

from attnarena import ops
from attnarena._validate import check_int, check_real
from attnarena.mixers.recurrent import (HeadNorm, RecurrentMixer, keep_mask, l2_normalize,
                                        merge_heads, split_heads)
from attnarena.ops._checks import compute_dtype
from attnarena.ops.ttt import TTT_FORMS
from attnarena.registry import register_mixer


@register_mixer(
    "ttt_linear", family="test-time training",
    paper="Sun et al. 2024, Learning to (Learn at Test Time): RNNs with Expressive Hidden "
          "States",
    complexity="O(L b D + L D^2)", patterns=("causal",), forms=TTT_FORMS,
    form_notes={"chunk": "dual form", "recurrent": "primal form"})
class TTTLinear(RecurrentMixer):
    """TTT-Linear (Sun et al. 2024): per head, the inner model's weight S (initialized from a
    learned W_0) takes one gradient step of 1/2 ||S^T k_t - v_t||^2 per token (the learned
    self-supervised task: k_t = theta_K x_t, v_t = theta_V x_t), with the learned rate eta_t =
    base_lr * sigmoid(w_eta . x_t); the output reads the trained model with q_t = theta_Q x_t.
    Gradients of one mini-batch of ``mini_batch`` tokens share its starting state (the paper's b
    = 16). Keys and queries are L2-normalized, so a step with eta <= 1 never overshoots; a
    per-head RMS norm precedes the output projection.

    Causal only: mini-batches are counted from a sequence's first token.

    Options: mini_batch, base_lr, form ("chunk": dual form; "recurrent": primal form).
    """

    def __init__(self, dim, heads=1, causal=False, *, mini_batch=16, base_lr=1.0,
                 form="chunk"):
        super().__init__(dim, heads, causal, form=form, chunk_size=None)
        check_int(mini_batch, "mini_batch")
        check_real(base_lr, "base_lr", low_open=True)
        self.mini_batch, self.base_lr = mini_batch, float(base_lr)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim, bias=False)
                                                 for _ in range(3))
        self.lr_proj = nn.Linear(dim, heads)
        self.initial_weight = nn.Parameter(torch.zeros(heads, self.head_dim, self.head_dim))
        self.norm = HeadNorm(heads, self.head_dim)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def _init_state(self, batch_size, device, dtype):
        start = self.initial_weight.detach().to(device, compute_dtype(dtype))
        start = start.expand(batch_size, -1, -1, -1).clone()
        return {"ttt": (start, torch.zeros_like(start), 0)}

    def _sequence(self, x, state, mask, form):
        q, k, v = (split_heads(p(x), self.heads) for p in (self.q_proj, self.k_proj,
                                                              self.v_proj))
        q, k = l2_normalize(q), l2_normalize(k)
        keep = keep_mask(mask, x)
        eta = (self.base_lr * torch.sigmoid(self.lr_proj(x)) * keep[..., None]).transpose(1, 2)
        if state is None:  # training: the learned W_0, with gradients
            start = self.initial_weight.expand(x.shape[0], -1, -1, -1)
            state = {"ttt": (start, torch.zeros_like(start), 0)}
        o, ttt = ops.ttt_linear(q, k, v, eta=eta, mini_batch=self.mini_batch,
                                form="recurrent" if form == "recurrent" else "chunk",
                                initial_state=state["ttt"], return_state=True)
        return self.o_proj(self.norm(merge_heads(o))), {"ttt": ttt}
