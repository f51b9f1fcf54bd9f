"""TTT-Linear (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive
Hidden States"): an inner model trained at test time, one gradient step per token."""
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

INNER_MODELS = ("layer_norm", "linear")


@register_mixer(
    "ttt_linear", family="test-time training",
    step_export_caveat=("its mini-batch bookkeeping is fixed at the traced position: ONNX Runtime"
                        " refuses the graph"),
    export_caveat="its mini-batches are cut at the traced length: ONNX Runtime refuses the graph",
    paper="Sun et al. 2024, Learning to (Learn at Test Time): RNNs with Expressive Hidden "
          "States",
    complexity="O(L b D + L D^2)", patterns=("causal",), forms=TTT_FORMS,
    form_notes={"chunk": "dual form", "recurrent": "primal form"})
class TTTLinear(RecurrentMixer):
    """TTT-Linear (Sun et al. 2024): per head, an inner model is trained while the sequence
    is read, one gradient step of a self-supervised loss per token (the learned task: k_t =
    theta_K x_t, v_t = theta_V x_t), and the output reads the trained model at q_t =
    theta_Q x_t. Gradients of one mini-batch of ``mini_batch`` tokens share its starting
    model (the paper's b = 16). Causal only: mini-batches are counted from a sequence's
    first token.

    ``inner="layer_norm"`` (the default) is the model the authors released
    (test-time-training/ttt-lm-pytorch): f(x) = x + LN(x W + b) with a per-head layer norm
    of learned scale and shift, trained on 1/2 ||LN(k W + b) - (v - k)||^2 from a learned
    (W_0, b_0); token t of a mini-batch (place i) reads the model after the gradients so far
    summed with rates eta_s = base_lr * sigmoid(w_h . x_s + c_h) / head_dim and scaled by
    token_eta_i = 1 / (i + 1) + a learned offset (their mean-gradient scale); RoPE on q and
    k at positions modulo the mini-batch; a LayerNorm over the heads' outputs, then W_o.
    ``inner="linear"`` is the plain linear model f(k) = S^T k on 1/2 ||S^T k - v||^2, eta_t
    = base_lr * sigmoid(w . x_t), L2-normalized q and k (a step with eta <= 1 never
    overshoots), a per-head RMS norm before W_o.

    Options: inner ("layer_norm" or "linear"), mini_batch, base_lr, form ("chunk": dual
    form; "recurrent": primal form).
    """

    def __init__(self, dim, heads=1, causal=False, *, inner="layer_norm", mini_batch=16,
                 base_lr=1.0, form="chunk"):
        super().__init__(dim, heads, causal, form=form, chunk_size=None)
        check_int(mini_batch, "mini_batch")
        check_real(base_lr, "base_lr", low_open=True)
        if inner not in INNER_MODELS:
            raise ValueError(f"inner must be one of {', '.join(INNER_MODELS)}, got {inner!r}")
        if inner == "layer_norm" and self.head_dim % 2:
            raise ValueError(f"inner='layer_norm' rotates q and k (RoPE): head_dim (dim / "
                             f"heads) must be even, got {self.head_dim}")
        self.inner, self.mini_batch, self.base_lr = inner, mini_batch, float(base_lr)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim, bias=False)
                                                 for _ in range(3))
        self.lr_proj = nn.Linear(dim, heads)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        D = self.head_dim
        if inner == "linear":
            self.initial_weight = nn.Parameter(torch.zeros(heads, D, D))
            self.norm = HeadNorm(heads, D)
            return
        # the released initialization: W_0 ~ N(0, 0.02), b_0 = 0, the rate gate's weights
        # ~ N(0, 0.02) with bias 0, the inner norm's scale 1 and shift 0
        self.initial_weight = nn.Parameter(torch.randn(heads, D, D) * 0.02)
        self.initial_bias = nn.Parameter(torch.zeros(heads, D))
        nn.init.normal_(self.lr_proj.weight, std=0.02)
        nn.init.zeros_(self.lr_proj.bias)
        self.token_eta_offset = nn.Parameter(torch.zeros(mini_batch))
        self.ln_weight = nn.Parameter(torch.ones(heads, D))
        self.ln_bias = nn.Parameter(torch.zeros(heads, D))
        self.post_norm = nn.LayerNorm(dim, eps=1e-6)

    @property
    def unprunable_reason(self) -> str:
        """Why heads cannot be pruned ("" when they can: the plain linear inner model)."""
        return ("its output norm (the released LayerNorm) is taken over all heads together"
                if self.inner == "layer_norm" else "")

    def _init_state(self, batch_size, device, dtype):
        start = self.initial_weight.detach().to(device, compute_dtype(dtype))
        start = start.expand(batch_size, -1, -1, -1).clone()
        if self.inner == "linear":
            return {"ttt": (start, torch.zeros_like(start), 0)}
        bias = self.initial_bias.detach().to(device, compute_dtype(dtype))
        bias = bias.expand(batch_size, -1, -1).clone()
        return {"ttt": (start, bias, torch.zeros_like(start), torch.zeros_like(bias), 0)}

    def _sequence(self, x, state, mask, form):
        q, k, v = (split_heads(p(x), self.heads) for p in (self.q_proj, self.k_proj,
                                                              self.v_proj))
        keep = keep_mask(mask, x)
        form = "recurrent" if form == "recurrent" else "chunk"
        if self.inner == "linear":
            q, k = l2_normalize(q), l2_normalize(k)
            eta = (self.base_lr * torch.sigmoid(self.lr_proj(x)) * keep[..., None])
            if state is None:  # training: the learned W_0, with gradients
                start = self.initial_weight.expand(x.shape[0], -1, -1, -1)
                state = {"ttt": (start, torch.zeros_like(start), 0)}
            o, ttt = ops.ttt_linear(q, k, v, eta=eta.transpose(1, 2),
                                    mini_batch=self.mini_batch, form=form,
                                    initial_state=state["ttt"], return_state=True)
            return self.o_proj(self.norm(merge_heads(o))), {"ttt": ttt}
        offset = 0 if state is None else state["ttt"][-1]
        positions = (torch.arange(x.shape[1], device=x.device) + offset) % self.mini_batch
        q, k = ops.rotary(q, positions), ops.rotary(k, positions)
        lr = self.base_lr * torch.sigmoid(self.lr_proj(x)) / self.head_dim * keep[..., None]
        token_eta = (1.0 / torch.arange(1, self.mini_batch + 1, device=x.device)
                     + self.token_eta_offset).clamp_min(0)
        o, ttt = ops.ttt_layer_norm(
            q, k, v, lr=lr.transpose(1, 2), token_eta=token_eta, ln_weight=self.ln_weight,
            ln_bias=self.ln_bias, initial_weight=self.initial_weight,
            initial_bias=self.initial_bias, form=form,
            initial_state=None if state is None else state["ttt"], return_state=True)
        return self.o_proj(self.post_norm(merge_heads(o))), {"ttt": ttt}
