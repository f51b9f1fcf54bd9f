"""Functional kernels: the math of each mechanism, in every form, on (B, H, L, D) tensors."""
from attnarena.ops.delta import delta_rule, gated_delta_rule
from attnarena.ops.gated import gla, retention, scalar_gated
from attnarena.ops.linear import linear_attention
from attnarena.ops.mlstm import mlstm
from attnarena.ops.rotary import rotary
from attnarena.ops.s4d import s4d
from attnarena.ops.softmax import alibi_slopes, softmax_attention
from attnarena.ops.ssm import selective_scan

__all__ = ["alibi_slopes", "delta_rule", "gated_delta_rule", "gla", "linear_attention",
           "mlstm", "retention", "rotary", "s4d", "scalar_gated", "selective_scan",
           "softmax_attention"]
