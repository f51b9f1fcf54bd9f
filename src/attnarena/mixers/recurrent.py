"""Shared machinery of mixers built on a causal recurrence (decayed linear attention, delta
rule, state-space models).

A subclass defines ``_sequence(x, state, mask, form) -> (y, state)``: one causal pass over
(B, L, dim) starting from a decoding state (None = empty). From it this base derives:
causal forward, bidirectional forward (a forward scan plus a scan over the reversed
sequence, summed, with shared weights: the standard bidirectional use of a causal
recurrence, as in bidirectional Mamba and LION), ``prefill`` and ``step``. Padded tokens
must not reach real tokens' outputs: mechanisms with per-token gates leave the state
untouched there (no write, no decay); a time-invariant one (s4d) writes zeros there and
decays through them, as its fixed kernel must.
"""
from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn

from attnarena.mixers.base import Mixer
from attnarena.mixers.qkv import merge_heads, split_heads  # noqa: F401  (re-exported)
from attnarena.ops._checks import compute_dtype, tracing

PATTERNS = ("self", "causal")  # a causal recurrence, and its bidirectional use


class RecurrentMixer(Mixer):
    streams = True  # a fixed-size state: long inference forwards run in pieces

    def __init__(self, dim, heads=1, causal=False, *, form="chunk", chunk_size=64):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size)

    @abc.abstractmethod
    def _sequence(self, x, state, mask, form):
        """Causal pass over x (B, L, dim) from ``state`` -> (y (B, L, dim), final state)."""

    def _forward(self, x, context, mask):
        y, _ = self._sequence(x, None, mask, self.form)
        if self.causal:
            return y
        flipped_mask = None if mask is None else mask.flip(1)
        back, _ = self._sequence(x.flip(1), None, flipped_mask, self.form)
        return y + back.flip(1)

    def _prefill(self, x, state):
        return self._sequence(x, state, None, self.form)

    def _training_start(self, batch_size, device, dtype):
        return None  # where _forward's pass starts (the empty state)

    def _step(self, x_t, state):
        y, state = self._sequence(x_t[:, None], state, None, "recurrent")
        return y[:, 0], state


class ShortConv(nn.Module):
    """Causal depthwise convolution over time (kernel ``kernel``), with a decoding state
    holding the last kernel - 1 inputs."""

    def __init__(self, channels: int, kernel: int = 4, bias: bool = True):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(channels, channels, kernel, groups=channels, bias=bias)

    def forward(self, x, state=None):
        """x: (B, L, C), state: (B, kernel - 1, C) or None -> (y (B, L, C), new state).

        Computed time-major, y_t = b + sum_j w_j * x_(t - K + 1 + j), one fused multiply-add
        per tap on (B, L, C) tensors: no transposes to channel-major and back, and the
        history enters only the first K - 1 outputs rather than being concatenated."""
        K, L = self.kernel, x.shape[1]
        w = self.conv.weight[:, 0].to(x.dtype)  # (C, K)
        bias = self.conv.bias
        if tracing():
            return self._concatenated(x, state, w, bias)
        y = x * w[:, K - 1] if bias is None else torch.addcmul(bias.to(x.dtype), x, w[:, K - 1])
        for j in range(K - 1):
            shift = K - 1 - j  # tap j reads the input `shift` steps back
            if shift < L:
                y[:, shift:].addcmul_(x[:, :L - shift], w[:, j])
            if state is not None:  # the steps before the start come from the history
                n = min(shift, L)
                y[:, :n].addcmul_(state[:, j:j + n].to(x.dtype), w[:, j])
        if L >= K - 1:  # a copy: a view would keep all of x alive while decoding
            new_state = x[:, L - (K - 1):].clone()
        else:
            history = (x.new_zeros(x.shape[0], K - 1, x.shape[2]) if state is None
                       else state.to(x.dtype))
            new_state = torch.cat([history[:, L:], x], dim=1)
        return y, new_state

    def _concatenated(self, x, state, w, bias):
        """The same convolution over the history and x joined, without writing into slices
        of the output (a traced graph loses those writes) or branching on the length."""
        K = self.kernel
        history = (x.new_zeros(x.shape[0], K - 1, x.shape[2]) if state is None
                   else state.to(x.dtype))
        joined = torch.cat([history, x], dim=1)  # (B, K - 1 + L, C)
        end = joined.shape[1]
        y = sum(joined[:, j:end - (K - 1 - j)] * w[:, j] for j in range(K))
        return (y if bias is None else y + bias.to(x.dtype)), joined[:, end - (K - 1):]


class HeadNorm(nn.Module):
    """RMS norm over each head's channels, with a learned scale (the output norms of GLA,
    DeltaNet and Mamba-2)."""

    def __init__(self, heads: int, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.heads, self.eps = heads, eps
        self.weight = nn.Parameter(torch.ones(heads * head_dim))

    def forward(self, x):
        """x: (B, L, heads * head_dim)."""
        shape = x.shape
        h = x.reshape(*shape[:-1], self.heads, -1)
        wide = h.to(compute_dtype(h.dtype))
        h = h * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps).to(h.dtype)
        return h.reshape(shape) * self.weight.to(x.dtype)


def keep_mask(mask, x):
    """(B, L) float mask, 1 = real token; ones when no mask."""
    if mask is None:
        return x.new_ones(x.shape[:2])
    return mask.to(x.dtype)


def l2_normalize(x, eps=1e-6):
    return F.normalize(x, dim=-1, eps=eps)
