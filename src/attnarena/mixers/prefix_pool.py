"""Mechanisms that pool values by one softmax score per token, computed over every prefix
when causal (``ops.prefix_attention``) and over the whole sequence otherwise: Aaren,
MobileViT-v2's separable self-attention, and Latte's latent attention."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnarena import ops
from attnarena._validate import check_int
from attnarena.mixers.base import Mixer
from attnarena.mixers.recurrent import PATTERNS, RecurrentMixer, merge_heads, split_heads
from attnarena.ops.prefix import PREFIX_FORMS
from attnarena.registry import register_mixer


def _prefix_state(shape, width, device, dtype):
    """The empty prefix: no score seen (a maximum far below any score), sums zero."""
    dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return (torch.full(shape, torch.finfo(dtype).min / 4, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(*shape, width, device=device, dtype=dtype))


@register_mixer(
    "aaren", family="attention as an RNN",
    export_caveat=("its scan's layout is fixed at the traced length: ONNX Runtime refuses "
                   "other lengths"),
    paper="Feng et al. 2024, Attention as an RNN",
    complexity="O(L D log L) parallel scan, O(L D) recurrent", patterns=PATTERNS,
    forms=PREFIX_FORMS, form_notes={"parallel": "prefix scan"})
class Aaren(RecurrentMixer):
    """Aaren (Feng et al. 2024): attention with a learned query per head (not computed from the
    token), over every prefix: o_t = sum_{s <= t} softmax_s(q . k_s / sqrt(D)) v_s, as a
    parallel prefix scan (training) or an RNN (decoding). Noncausal: the prefix pass plus one
    over the reversed sequence, summed.

    Options: form ("parallel": prefix scan; "recurrent": loop).
    """

    def __init__(self, dim, heads=1, causal=False, *, form="parallel"):
        super().__init__(dim, heads, causal, form=form, chunk_size=None)
        self.query = nn.Parameter(torch.randn(heads, self.head_dim) / math.sqrt(self.head_dim))
        self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim) for _ in range(3))

    def _init_state(self, batch_size, device, dtype):
        return {"prefix": _prefix_state((batch_size, self.heads), self.head_dim, device, dtype)}

    def _sequence(self, x, state, mask, form):
        k, v = split_heads(self.k_proj(x), self.heads), split_heads(self.v_proj(x), self.heads)
        scores = torch.einsum("bhld,hd->bhl", k, self.query) / math.sqrt(self.head_dim)
        if mask is not None:  # padding: no weight once a real token has been seen
            scores = scores.masked_fill(~mask[:, None], torch.finfo(scores.dtype).min / 4)
        o, prefix = ops.prefix_attention(scores, v, form=form,
                                         initial_state=None if state is None
                                         else state["prefix"], return_state=True)
        return self.o_proj(merge_heads(o)), {"prefix": prefix}


@register_mixer(
    "separable", family="pooling attention",
    paper="Mehta and Rastegari 2022, Separable Self-attention for Mobile Vision Transformers",
    complexity="O(L D)", patterns=PATTERNS, forms=PREFIX_FORMS,
    form_notes={"parallel": "causal: prefix scan"})
class SeparableAttention(Mixer):
    """MobileViT-v2's separable self-attention (Mehta and Rastegari 2022): context scores c =
    softmax over tokens of x W_I (one per head), a context vector cv = sum_s c_s (x_s W_K), and
    y_t = W_O (ReLU(x_t W_V) * cv). Causal: cv_t pools the prefix s <= t only.

    Options: form (causal: "parallel" prefix scan or "recurrent" loop).
    """

    def __init__(self, dim, heads=1, causal=False, *, form="parallel"):
        super().__init__(dim, heads, causal, form=form, chunk_size=None)
        self.score = nn.Linear(dim, heads)
        self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim) for _ in range(3))

    def _context(self, x, mask, state, form):
        scores = self.score(x).transpose(1, 2)  # (B, H, L)
        keys = split_heads(self.k_proj(x), self.heads)
        if not self.causal:
            return ops.softmax_pool(scores, keys, mask=mask)[:, :, None], None
        return ops.prefix_attention(scores, keys, form=form, initial_state=state,
                                    return_state=True)

    def _out(self, x, context):
        y = F.relu(split_heads(self.v_proj(x), self.heads)) * context.to(x.dtype)
        return self.o_proj(merge_heads(y))

    def _forward(self, x, context, mask):
        return self._out(x, self._context(x, mask, None, self.form)[0])

    def _init_state(self, batch_size, device, dtype):
        return {"prefix": _prefix_state((batch_size, self.heads), self.head_dim, device, dtype)}

    def _prefill(self, x, state):
        context, prefix = self._context(x, None, state["prefix"], self.form)
        return self._out(x, context), {"prefix": prefix}

    def _step(self, x_t, state):
        y, state = self._prefill(x_t[:, None], state)
        return y[:, 0], state


@register_mixer(
    "latte", family="latent attention",
    paper="Dolga et al. 2024, Latte: Latent Attention for Linear Time Transformers",
    complexity="O(L M D)", patterns=PATTERNS, forms=frozenset({"chunk", "recurrent"}),
    form_notes={"chunk": "linear attention over latents"})
class Latte(Mixer):
    """Latte (Dolga et al. 2024): per head, M latent states; token t attends to latent l with
    p(l | t) = softmax_l(x_t W_q)_l, and latent l pools the values of the tokens it sees
    with p(s | l) = softmax_s(x_s W_k)_l (over s <= t when causal):
    y_t = sum_l p(l | t) sum_s p(s | l) v_s. Causal and bidirectional.

    Its math is ``ops.latent_attention``: the chunk form is causal linear attention over
    the latents, falling back to the exact prefix scan where a latent's scores span too
    wide; the recurrent form is the prefix recurrence.

    Options: latents (M), form, chunk_size.
    """

    def __init__(self, dim, heads=1, causal=False, *, latents=16, form="chunk",
                 chunk_size=64):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size)
        check_int(latents, "latents")
        self.latents = latents
        self.q_proj = nn.Linear(dim, heads * latents)
        self.k_proj = nn.Linear(dim, heads * latents)
        self.v_proj, self.o_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def _parts(self, x, mask):
        B, L, _ = x.shape
        p_latent = self.q_proj(x).view(B, L, self.heads, self.latents).transpose(1, 2)
        p_latent = p_latent.softmax(-1)  # (B, H, L, M)
        scores = self.k_proj(x).view(B, L, self.heads, self.latents).permute(0, 2, 3, 1)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None], torch.finfo(scores.dtype).min / 4)
        return p_latent, scores, split_heads(self.v_proj(x), self.heads)  # scores (B, H, M, L)

    def _forward(self, x, context, mask):
        p_latent, scores, v = self._parts(x, mask)
        o = ops.latent_attention(p_latent, scores, v, causal=self.causal, mask=mask,
                                 form=self.form, chunk_size=self.chunk_size)
        return self.o_proj(merge_heads(o))

    def _init_state(self, batch_size, device, dtype):
        return {"prefix": _prefix_state((batch_size, self.heads, self.latents), self.head_dim,
                                        device, dtype)}

    def _prefill(self, x, state):
        p_latent, scores, v = self._parts(x, None)
        o, prefix = ops.latent_attention(p_latent, scores, v, causal=True, form=self.form,
                                         initial_state=state["prefix"], return_state=True)
        return self.o_proj(merge_heads(o)), {"prefix": prefix}

    def _step(self, x_t, state):
        y, state = self._prefill(x_t[:, None], state)
        return y[:, 0], state
