"""Transformer-VQ (Lingle 2023): linear-time softmax attention over vector-quantized keys."""
from __future__ import annotations

import torch

from attnarena import ops
from attnarena._validate import check_int, check_real
from attnarena.mixers.qkv import QKVMixer
from attnarena.ops._checks import compute_dtype
from attnarena.ops.vq import VQ_FORMS, quantize
from attnarena.registry import register_mixer


@register_mixer(
    "transformer_vq", family="softmax attention, quantized keys",
    paper="Lingle 2023, Transformer-VQ: Linear-Time Transformers via Vector Quantization",
    complexity="O(L (W + S) D)", patterns=("self", "causal"), forms=VQ_FORMS,
    form_notes={"chunk": "blocks + compressive cache", "recurrent": "cache"},
    approximates_softmax=True)
class TransformerVQ(QKVMixer):
    """Transformer-VQ (Lingle 2023): each head's keys are replaced by the nearest of ``codes``
    codewords (straight-through inside a block of ``block`` tokens), which makes softmax
    attention linear-time: earlier blocks enter through a per-code cache of summed values and
    counts. The codebook is a running k-means of the keys (exponential moving averages with
    decay ``ema`` of the keys assigned to each code, updated in training), as in the paper; the
    paper's commitment loss on the keys is left out (the arena trains on the task loss alone).

    Options: codes, block, ema, form, bias.
    """

    def __init__(self, dim, heads=1, causal=False, *, codes=128, block=64, ema=0.99,
                 form="chunk", bias=True):
        super().__init__(dim, heads, causal, form=form, bias=bias)
        check_int(codes, "codes")
        check_int(block, "block")
        check_real(ema, "ema", high=1.0, high_open=True)
        self.codes, self.block, self.ema = codes, block, float(ema)
        self.register_buffer("codebook", torch.randn(heads, codes, self.head_dim))
        self.surrogate_gradients = True  # straight-through keys

    @torch.no_grad()
    def _update_codebook(self, k, mask):
        """One step of running k-means: each used code moves toward its keys' mean."""
        codes, _ = quantize(k, self.codebook)
        keep = torch.ones(k.shape[0], k.shape[2], dtype=torch.bool, device=k.device) \
            if mask is None else mask
        assigned = torch.nn.functional.one_hot(codes, self.codes).to(k.dtype) \
            * keep[:, None, :, None].to(k.dtype)  # (B, H, L, S)
        counts = assigned.sum((0, 2))  # (H, S)
        sums = torch.einsum("bhls,bhld->hsd", assigned, k)
        used = counts > 0
        means = sums / counts.clamp_min(1)[..., None]
        moved = self.ema * self.codebook + (1 - self.ema) * means.to(self.codebook.dtype)
        self.codebook.copy_(torch.where(used[..., None], moved, self.codebook))

    def _forward(self, x, context, mask):
        q, k, v = (self.split_heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        if self.training:
            self._update_codebook(k.detach(), mask)
        form = self.form if self.causal or self.form != "recurrent" else "chunk"
        o = ops.vq_attention(q, k, v, codebook=self.codebook, causal=self.causal,
                             block=self.block, form=form, mask=mask,
                             straight_through=self.surrogate_gradients)
        return self.o_proj(self.merge_heads(o))

    def _init_state(self, batch_size, device, dtype):
        dtype = compute_dtype(dtype)
        return {"U": torch.zeros(batch_size, self.heads, self.codes, self.head_dim,
                                 device=device, dtype=dtype),
                "n": torch.zeros(batch_size, self.heads, self.codes, device=device,
                                 dtype=dtype)}

    def _prefill(self, x, state):
        q, k, v = (self.split_heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        o, (U, n) = ops.vq_attention(q, k, v, codebook=self.codebook, causal=True,
                                     form="recurrent", initial_state=(state["U"], state["n"]),
                                     return_state=True)
        return self.o_proj(self.merge_heads(o)), {"U": U, "n": n}

    def _step(self, x_t, state):
        y, state = self._prefill(x_t[:, None], state)
        return y[:, 0], state
