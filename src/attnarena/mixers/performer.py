"""Performer's FAVOR+ (Choromanski et al. 2021, "Rethinking Attention with Performers"):
positive orthogonal random features whose dot products estimate the softmax kernel
exp(q.k / sqrt(d)) without bias, fed to linear attention (prefix sums when causal)."""
from __future__ import annotations

import math

import torch

from attnarena import ops
from attnarena._validate import check_int
from attnarena.mixers.linear import LinearAttentionBase
from attnarena.registry import FORMS, PATTERNS, register_mixer


@register_mixer(
    "performer", family="linear attention",
    paper="Choromanski et al. 2021, Rethinking Attention with Performers",
    complexity="O(L M D)", patterns=PATTERNS, forms=FORMS,
    approximates_softmax=True)
class Performer(LinearAttentionBase):
    """FAVOR+ attention (Choromanski et al. 2021, "Rethinking Attention with Performers").

    Options: features (number of random features m; default head_dim * ln(head_dim), as the
    paper recommends), redraw_interval (draw new features every N training forwards;
    None keeps them fixed), form, chunk_size, bias.
    """

    def __init__(self, dim, heads=1, causal=False, *, features=None, redraw_interval=None,
                 form="chunk", chunk_size=64, bias=True):
        super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size, bias=bias)
        d = self.head_dim
        if features is None:
            features = max(1, int(d * math.log(d))) if d > 1 else 1
        check_int(features, "features")
        if redraw_interval is not None and (isinstance(redraw_interval, bool) or
                                            not isinstance(redraw_interval, int)
                                            or redraw_interval < 1):
            raise ValueError(f"redraw_interval must be a positive int or None, "
                             f"got {redraw_interval!r}")
        self.num_features, self.redraw_interval = features, redraw_interval
        self.register_buffer("projection", ops.orthogonal_gaussian(features, d))
        self._forwards_since_redraw = 0

    @property
    def feature_dim(self) -> int:
        return self.num_features

    @torch.no_grad()
    def redraw(self, generator=None):
        """Draw a new random projection in place."""
        self.projection.copy_(ops.orthogonal_gaussian(self.num_features, self.head_dim, generator,
                                                  self.projection.device))

    def map_features(self, x, positions, is_query):
        return ops.favor_features(x * self.head_dim ** -0.25, self.projection.to(x.dtype),
                                  is_query)

    def _forward(self, x, context, mask):
        if self.training and self.redraw_interval is not None:
            if self._forwards_since_redraw >= self.redraw_interval:
                self.redraw()
                self._forwards_since_redraw = 0
            self._forwards_since_redraw += 1
        return super()._forward(x, context, mask)

    def extra_repr(self):
        return (f"{super().extra_repr()}, features={self.num_features}, "
                f"redraw_interval={self.redraw_interval}")
