"""Functional kernels: the math of each mechanism, in every form, on (B, H, L, D) tensors."""
from attnarena.ops.linear import linear_attention
from attnarena.ops.rotary import rotary
from attnarena.ops.softmax import alibi_slopes, softmax_attention

__all__ = ["alibi_slopes", "linear_attention", "rotary", "softmax_attention"]
