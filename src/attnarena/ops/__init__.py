"""Functional kernels: the math of each mechanism, in every form, on (B, H, L, D) tensors
(or (B, L, C) for mechanisms that mix features without heads). Each module holds one
mechanism or family; where a mechanism has several forms, the plainest is the reference
the others are tested against."""
from attnarena.ops import feature_maps, gaussian, lsh, sparse  # noqa: F401  (namespaces)
from attnarena.ops.agent import agent_attention
from attnarena.ops.delta import delta_product, delta_rule, gated_delta_rule
from attnarena.ops.diagonal import diagonal_recurrence
from attnarena.ops.dilated import dilated_attention
from attnarena.ops.feature_maps import (FEATURE_MAPS, attention_distillation_loss,
                                        cosine_features, favor_features,
                                        focused, hedgehog_features, orthogonal_gaussian)
from attnarena.ops.gated import gla, gla_step, retention, scalar_gated
from attnarena.ops.gsa import gated_slot_attention
from attnarena.ops.gaussian import gaussian_adaptive
from attnarena.ops.linear import linear_attention, linear_attention_step
from attnarena.ops.log_linear import log_linear_attention
from attnarena.ops.lowrank import iterative_pinv, linformer_attention, nystrom_attention
from attnarena.ops.lsh import lsh_attention
from attnarena.ops.mixing import fourier_mix, pool_mix
from attnarena.ops.mlstm import mlstm
from attnarena.ops.moh import head_routing_weights
from attnarena.ops.titans import neural_memory
from attnarena.ops.prefix import latent_attention, prefix_attention, softmax_pool
from attnarena.ops.rotary import rotary
from attnarena.ops.routing import routing_attention
from attnarena.ops.s4d import s4d
from attnarena.ops.sinkhorn import sinkhorn, sinkhorn_attention
from attnarena.ops.softmax import (alibi_slopes, clipped_softmax_attention, decode_attention,
                                   masked_softmax, merge_partial_attention, score_attention,
                                   softmax_attention)
from attnarena.ops.soft import soft_attention
from attnarena.ops.sparse import pattern_attention
from attnarena.ops.ssm import selective_scan
from attnarena.ops.ttt import ttt_layer_norm, ttt_linear
from attnarena.ops.vq import vq_attention
from attnarena.ops.window_linear import (factored_window_linear_attention,
                                         factored_window_linear_step, window_linear_attention)
from attnarena.ops.xca import cross_covariance_attention

__all__ = ["FEATURE_MAPS", "agent_attention", "alibi_slopes", "attention_distillation_loss",
           "clipped_softmax_attention", "cosine_features", "cross_covariance_attention",
           "decode_attention", "delta_product", "delta_rule", "diagonal_recurrence",
           "dilated_attention", "favor_features", "focused", "fourier_mix", "gated_delta_rule",
           "gated_slot_attention", "gaussian_adaptive", "gla", "gla_step", "head_routing_weights",
           "hedgehog_features", "iterative_pinv", "latent_attention", "linear_attention",
           "linear_attention_step", "linformer_attention", "log_linear_attention",
           "lsh_attention", "masked_softmax", "merge_partial_attention", "mlstm", "neural_memory",
           "nystrom_attention", "orthogonal_gaussian", "pattern_attention", "pool_mix",
           "prefix_attention", "retention", "rotary", "routing_attention", "s4d", "scalar_gated",
           "score_attention", "selective_scan", "sinkhorn", "sinkhorn_attention",
           "soft_attention", "softmax_attention", "softmax_pool", "ttt_layer_norm", "ttt_linear",
           "vq_attention", "window_linear_attention", "factored_window_linear_attention",
           "factored_window_linear_step"]
