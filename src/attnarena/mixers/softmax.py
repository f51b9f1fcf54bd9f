"""Softmax attention and its sliding-window (local) variant, with a KV cache for decoding."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnarena import ops
from attnarena._validate import check_int
from attnarena.mixers.qkv import QKVMixer
from attnarena.registry import PATTERNS, register_mixer



@dataclass
class KVCache:
    """Keys and values seen so far, (B, H, capacity, D) buffers filled up to ``length``.

    With ``max_keys`` only the newest ``max_keys`` are kept (sliding window); otherwise the
    buffers double when full, so appending costs O(1) amortized. Updated in place.
    """

    GROWING_DIM = 2  # the buffers' length axis: its size depends on the context, not the model

    k: torch.Tensor
    v: torch.Tensor
    start: int = 0
    length: int = 0
    position: int = 0  # tokens seen in total, for position encodings
    max_keys: int | None = None

    def append(self, k_new, v_new):
        """Append (B, H, T, D) keys and values."""
        T = k_new.shape[2]
        if self.max_keys is not None and T >= self.max_keys:
            k_new, v_new = k_new[:, :, -self.max_keys:], v_new[:, :, -self.max_keys:]
            self.start, self.length = 0, 0
        elif self.length + k_new.shape[2] > self.k.shape[2]:
            self._make_room(k_new.shape[2])
        T2 = k_new.shape[2]
        self.k[:, :, self.length:self.length + T2] = k_new
        self.v[:, :, self.length:self.length + T2] = v_new
        self.length += T2
        self.position += T
        if self.max_keys is not None:
            self.start = max(self.start, self.length - self.max_keys)

    def _make_room(self, extra):
        kept_k, kept_v = self.keys(), self.values()
        kept = kept_k.shape[2]
        capacity = max(2 * (kept + extra), 16)
        if self.max_keys is not None:
            capacity = 2 * self.max_keys
        B, H, _, D = self.k.shape
        self.k = self.k.new_zeros(B, H, capacity, D)
        self.v = self.v.new_zeros(B, H, capacity, self.v.shape[-1])
        self.k[:, :, :kept], self.v[:, :, :kept] = kept_k, kept_v
        self.start, self.length = 0, kept

    def keys(self):
        return self.k[:, :, self.start:self.length]

    def held_bytes(self) -> int:
        """Bytes of the keys and values the cache holds (the context, or the window), not
        of the buffers allocated ahead of them."""
        return sum(t.numel() * t.element_size() for t in (self.keys(), self.values()))

    def values(self):
        return self.v[:, :, self.start:self.length]


class DotProductAttention(QKVMixer):
    """Softmax attention with optional window, RoPE and ALiBi; shared by softmax and local."""

    window: int | None = None

    def __init__(self, dim, heads=1, causal=False, *, attn_dropout=0.0, rope=False,
                 rope_base=10000.0, alibi=False, bias=True):
        super().__init__(dim, heads, causal, bias=bias)
        if not 0.0 <= attn_dropout < 1.0:
            raise ValueError(f"attn_dropout must be in [0, 1), got {attn_dropout!r}")
        if rope and alibi:
            raise ValueError("choose at most one of rope and alibi")
        if rope and self.head_dim % 2:
            raise ValueError(f"rope needs an even head_dim, got {self.head_dim}")
        self.attn_dropout, self.rope, self.rope_base = attn_dropout, rope, rope_base
        if alibi:
            self.register_buffer("alibi_slopes", ops.alibi_slopes(heads), persistent=False)
        else:
            self.alibi_slopes = None

    def _positions(self, q, k, offset=0):
        if not self.rope:
            return q, k
        pq = torch.arange(offset, offset + q.shape[2], device=q.device)
        pk = torch.arange(offset, offset + k.shape[2], device=k.device)
        return ops.rotary(q, pq, self.rope_base), ops.rotary(k, pk, self.rope_base)

    def _attend(self, q, k, v, mask):
        return ops.softmax_attention(
            q, k, v, causal=self.causal, mask=mask, window=self.window,
            alibi_slopes=self.alibi_slopes,
            dropout=self.attn_dropout if self.training else 0.0)

    def _output(self, o, x):
        """Head outputs (B, H, L, D) -> (B, L, dim); x is the mixer's input (B, L, dim)."""
        return self.o_proj(self.merge_heads(o))

    def _forward(self, x, context, mask):
        q, k, v = self.project(x, context)
        q, k = self._positions(q, k)
        return self._output(self._attend(q, k, v, mask), x)

    def _decode(self, q, keys, values):
        return ops.decode_attention(q, keys, values, alibi_slopes=self.alibi_slopes)

    def _init_state(self, batch_size, device, dtype):
        max_keys = self.window
        capacity = 2 * max_keys if max_keys else 16
        shape = (batch_size, self.heads, capacity, self.head_dim)
        return KVCache(torch.zeros(shape, device=device, dtype=dtype),
                       torch.zeros(shape, device=device, dtype=dtype), max_keys=max_keys)

    def _prefill(self, x, state):
        if state.length > 0:  # continuing a sequence: fall back to token steps
            return super()._prefill(x, state)
        q, k, v = self.project(x)
        q, k = self._positions(q, k)
        y = self._output(self._attend(q, k, v, None), x)
        state.append(k, v)
        return y, state

    def _step(self, x_t, state):
        q, k, v = self.project(x_t[:, None])  # (B, H, 1, D)
        q, k = self._positions(q, k, offset=state.position)
        state.append(k, v)
        o = self._decode(q, state.keys(), state.values())
        return self._output(o, x_t[:, None])[:, 0], state

    def step_on_tensors(self, x_t, keys, values, position):
        """``step`` with the cache as two plain tensors (B, H, T, D) and the token's
        ``position`` a (1,) tensor, what a traced decoding graph (ONNX) holds: returns (y_t
        (B, dim), keys, values), the token's key and value appended (a window keeps the
        newest ``window``). The same math as ``step``, whose cache grows in place."""
        q, k, v = self.project(x_t[:, None])
        if self.rope:
            q = ops.rotary(q, position, self.rope_base)
            k = ops.rotary(k, position, self.rope_base)
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        if self.window:
            keys, values = keys[:, :, -self.window:], values[:, :, -self.window:]
        o = self._decode(q, keys, values)
        return self._output(o, x_t[:, None])[:, 0], keys, values


@register_mixer(
    "softmax", family="softmax attention",
    paper="Vaswani et al. 2017, Attention Is All You Need",
    complexity="O(L^2 D)", patterns=PATTERNS, forms=("parallel", "recurrent"),
    form_notes={"parallel": "SDPA", "recurrent": "KV cache"})
class SoftmaxAttention(DotProductAttention):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017, "Attention Is All You
    Need") through torch's SDPA; decoding keeps a KV cache.

    Options: attn_dropout, rope (RoFormer rotary positions), alibi (ALiBi biases), bias,
    and the two training-time remedies of Bondarenko et al. 2023 ("Quantizable
    Transformers: Removing Outliers by Helping Attention Heads Do Nothing") for the
    activation outliers that break 8-bit quantization: ``clip_gamma`` (< 0 turns on the
    clipped softmax, clip((zeta - gamma) softmax + gamma, 0, 1)) with ``clip_zeta`` (>= 1),
    and ``gated`` (each head's output times sigmoid of a per-head linear gate of the token).
    """

    def __init__(self, dim, heads=1, causal=False, *, attn_dropout=0.0, rope=False,
                 rope_base=10000.0, alibi=False, bias=True, clip_gamma=0.0, clip_zeta=1.0,
                 gated=False):
        super().__init__(dim, heads, causal, attn_dropout=attn_dropout, rope=rope,
                         rope_base=rope_base, alibi=alibi, bias=bias)
        for name, value in (("clip_gamma", clip_gamma), ("clip_zeta", clip_zeta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
        if clip_gamma > 0 or clip_zeta < 1:
            raise ValueError(f"clip_gamma must be <= 0 and clip_zeta >= 1, got "
                             f"{clip_gamma!r} and {clip_zeta!r}")
        if not isinstance(gated, bool):
            raise TypeError(f"gated must be true or false, got {gated!r}")
        if (clip_gamma, clip_zeta) != (0, 1) and (alibi or attn_dropout):
            raise ValueError("the clipped softmax takes no alibi or attn_dropout")
        self.clip = None if (clip_gamma, clip_zeta) == (0, 1) else (float(clip_gamma),
                                                                  float(clip_zeta))
        # One gate per head from the token itself (the paper's linear gating function).
        self.gate = nn.Linear(dim, heads) if gated else None

    def _attend(self, q, k, v, mask):
        if self.clip is None:
            return super()._attend(q, k, v, mask)
        gamma, zeta = self.clip
        return ops.clipped_softmax_attention(q, k, v, gamma=gamma, zeta=zeta,
                                             causal=self.causal, mask=mask)

    def _decode(self, q, keys, values):
        if self.clip is None:
            return super()._decode(q, keys, values)
        gamma, zeta = self.clip
        return ops.clipped_softmax_attention(q, keys, values, gamma=gamma, zeta=zeta)

    def _output(self, o, x):
        if self.gate is not None:
            o = o * torch.sigmoid(self.gate(x)).transpose(1, 2)[..., None]  # (B, H, L, 1)
        return super()._output(o, x)


@register_mixer(
    "local", family="sparse attention",
    paper="Tay et al. 2021, Long Range Arena: A Benchmark for Efficient Transformers "
          "(local attention baseline)",
    complexity="O(L W D)", patterns=("self", "causal"), forms=("parallel", "recurrent"),
    form_notes={"parallel": "blocked, O(L W D)", "recurrent": "window cache"},
    approximates_softmax=True)
class LocalAttention(DotProductAttention):
    """Sliding-window softmax attention, the local-attention baseline of Long Range Arena
    (Tay et al. 2021): query i sees keys with |i - j| < window (the ``window`` most recent
    keys when causal). Long sequences are computed in blocks of ``window`` queries, so cost
    is O(L * window * D); decoding keeps only the last ``window`` keys.
    """

    def __init__(self, dim, heads=1, causal=False, *, window=128, attn_dropout=0.0,
                 rope=False, rope_base=10000.0, alibi=False, bias=True):
        check_int(window, "window")
        super().__init__(dim, heads, causal, attn_dropout=attn_dropout, rope=rope,
                         rope_base=rope_base, alibi=alibi, bias=bias)
        self.window = window

    def extra_repr(self):
        return f"{super().extra_repr()}, window={self.window}"
