"""Low-rank and landmark approximations of softmax attention: Linformer, Nystromformer."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnarena._validate import check_int
from attnarena.mixers.qkv import QKVMixer
from attnarena.registry import register_mixer


@register_mixer(
    "linformer", family="low-rank attention",
    paper="Wang et al. 2020, Linformer: Self-Attention with Linear Complexity",
    complexity="O(L K D)", patterns=("self", "cross"), forms=("parallel",))
class Linformer(QKVMixer):
    """Linformer (Wang et al. 2020): keys and values projected along the sequence by
    learned E, F (max_len -> proj_len, shared by the heads), then softmax attention over
    the proj_len projected positions: O(L K D). Sequences shorter than max_len use the
    first columns of E and F.

    Options: proj_len (K), max_len.
    """

    def __init__(self, dim, heads=1, causal=False, *, proj_len=128, max_len=4096):
        super().__init__(dim, heads, causal)
        for name, value in (("proj_len", proj_len), ("max_len", max_len)):
            check_int(value, name)
        self.proj_len, self.max_len = proj_len, max_len
        self.E = nn.Parameter(torch.randn(proj_len, max_len) / math.sqrt(proj_len))
        self.F = nn.Parameter(torch.randn(proj_len, max_len) / math.sqrt(proj_len))

    def _forward(self, x, context, mask):
        q, k, v = self.project(x, context)
        S = k.shape[2]
        if S > self.max_len:
            raise ValueError(f"linformer was built for at most max_len={self.max_len} keys, "
                             f"got {S}")
        if mask is not None:  # padded keys and values contribute nothing to the projection
            keep = mask[:, None, :, None].to(k.dtype)
            k, v = k * keep, v * keep
        k = self.E[:, :S].to(k.dtype) @ k  # (B, H, K, D)
        v = self.F[:, :S].to(v.dtype) @ v
        o = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(self.merge_heads(o))


def iterative_pinv(matrix, iterations=6):
    """Newton-Schulz iteration for the Moore-Penrose inverse, with the initialization of
    the Nystromformer paper (Xiong et al. 2021)."""
    abs_matrix = matrix.abs()
    scale = abs_matrix.sum(-1).amax(-1) * abs_matrix.sum(-2).amax(-1)
    z = matrix.transpose(-1, -2) / scale[..., None, None]
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    for _ in range(iterations):
        kz = matrix @ z
        z = 0.25 * z @ (13 * eye - kz @ (15 * eye - kz @ (7 * eye - kz)))
    return z


@register_mixer(
    "nystromformer", family="low-rank attention",
    paper="Xiong et al. 2021, Nystromformer: A Nystrom-Based Algorithm for Approximating "
          "Self-Attention",
    complexity="O(L M D)", patterns=("self",), forms=("parallel",))
class Nystromformer(QKVMixer):
    """Nystromformer (Xiong et al. 2021): landmarks are segment means of queries and keys;
    softmax(Q K^T) V ~ softmax(Q Kl^T) pinv(softmax(Ql Kl^T)) softmax(Ql K^T) V, with the
    paper's iterative pseudo-inverse (or an exact one), plus a depthwise convolution over
    values (kernel 33 in the paper; 0 turns it off).

    Options: landmarks (M), pinv ("iterative" or "exact"), conv_kernel.
    """

    def __init__(self, dim, heads=1, causal=False, *, landmarks=64, pinv="iterative",
                 conv_kernel=33):
        super().__init__(dim, heads, causal)
        check_int(landmarks, "landmarks")
        if pinv not in ("iterative", "exact"):
            raise ValueError(f"pinv must be 'iterative' or 'exact', got {pinv!r}")
        self.landmarks, self.pinv = landmarks, pinv
        self.conv = (nn.Conv2d(heads, heads, (conv_kernel, 1), padding=(conv_kernel // 2, 0),
                               groups=heads, bias=False) if conv_kernel else None)

    def _forward(self, x, context, mask):
        q, k, v = self.project(x)
        B, H, L, D = q.shape
        q = q / math.sqrt(math.sqrt(D))
        k = k / math.sqrt(math.sqrt(D))
        keep = None if mask is None else mask[:, None, None, :]
        if mask is not None:
            v = v * mask[:, None, :, None].to(v.dtype)
        m = min(self.landmarks, L)
        # landmark i averages segment i of the sequence (segments of near-equal size)
        ql = F.adaptive_avg_pool1d(q.reshape(B * H, L, D).transpose(1, 2), m)
        kl = F.adaptive_avg_pool1d(k.reshape(B * H, L, D).transpose(1, 2), m)
        ql = ql.transpose(1, 2).reshape(B, H, m, D)
        kl = kl.transpose(1, 2).reshape(B, H, m, D)
        left = torch.softmax(q @ kl.transpose(-1, -2), dim=-1)  # (B, H, L, m)
        middle = torch.softmax(ql @ kl.transpose(-1, -2), dim=-1)  # (B, H, m, m)
        scores = ql @ k.transpose(-1, -2)  # (B, H, m, L)
        if keep is not None:
            scores = scores.masked_fill(~keep, float("-inf"))
        right = torch.softmax(scores, dim=-1)
        inverse = (torch.linalg.pinv(middle) if self.pinv == "exact"
                   else iterative_pinv(middle))
        o = left @ (inverse @ (right @ v))
        if self.conv is not None:
            o = o + self.conv(v)
        return self.o_proj(self.merge_heads(o))
