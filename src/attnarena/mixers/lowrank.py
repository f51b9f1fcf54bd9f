"""Low-rank and landmark approximations of softmax attention: Linformer, Nystromformer."""
from __future__ import annotations

import math

import torch
from torch import nn

from attnarena import ops
from attnarena._validate import check_int
from attnarena.mixers.qkv import QKVMixer
from attnarena.registry import register_mixer


@register_mixer(
    "linformer", family="low-rank attention",
    paper="Wang et al. 2020, Linformer: Self-Attention with Linear Complexity",
    complexity="O(L K D)", patterns=("self", "cross"), forms=("parallel",),
    approximates_softmax=True)
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
        o = ops.linformer_attention(q, k, v, self.E, self.F, mask=mask)
        return self.o_proj(self.merge_heads(o))


@register_mixer(
    "nystromformer", family="low-rank attention",
    export_caveat=("a graph traced at one length does not reproduce the model at three times it "
                   "(largest error 0.25% of the output's scale, over the 0.1% allowed)"),
    paper="Xiong et al. 2021, Nystromformer: A Nystrom-Based Algorithm for Approximating "
          "Self-Attention",
    complexity="O(L M D)", patterns=("self",), forms=("parallel",),
    approximates_softmax=True)
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
        if mask is not None:
            v = v * mask[:, None, :, None].to(v.dtype)
        o = ops.nystrom_attention(q, k, v, landmarks=self.landmarks, pinv=self.pinv, mask=mask)
        if self.conv is not None:
            o = o + self.conv(v)
        return self.o_proj(self.merge_heads(o))
