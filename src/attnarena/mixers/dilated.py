"""LongNet's dilated attention (Ding et al. 2023, "LongNet: Scaling Transformers to
1,000,000,000 Tokens")."""
from __future__ import annotations

from attnarena import ops
from attnarena.mixers.qkv import QKVMixer
from attnarena.registry import register_mixer


@register_mixer(
    "dilated", family="sparse attention",
    export_caveat=("the traced graph does not reproduce the model even at the traced shape (its "
                   "segments are gathered by index arithmetic fixed while tracing)"),
    paper="Ding et al. 2023, LongNet: Scaling Transformers to 1,000,000,000 Tokens",
    complexity="O(L sum(w / r^2) D)", patterns=("self", "causal"), forms=("parallel",),
    approximates_softmax=True)
class DilatedAttention(QKVMixer):
    """Dilated attention (Ding et al. 2023): for each (segment length w, dilation r) the
    sequence is cut into segments of w tokens and, in each, every r-th token (offset by
    the head index, so heads cover different positions) attends densely to the others
    selected; the branches are mixed with weights proportional to their softmax
    denominators, which equals softmax attention over all the keys the branches give a
    query (counted once per branch).

    Options: segment_lengths, dilation_rates (same length; each w divisible by its r).
    """

    def __init__(self, dim, heads=1, causal=False, *, segment_lengths=(64, 256, 1024),
                 dilation_rates=(1, 4, 16)):
        super().__init__(dim, heads, causal)
        self.segment_lengths, self.dilation_rates = ops.dilated.check_dilation(
            segment_lengths, dilation_rates)

    def _forward(self, x, context, mask):
        q, k, v = self.project(x)
        o = ops.dilated_attention(q, k, v, segment_lengths=self.segment_lengths,
                                  dilation_rates=self.dilation_rates, causal=self.causal,
                                  mask=mask)
        return self.o_proj(self.merge_heads(o))
