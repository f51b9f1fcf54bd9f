"""Performer's FAVOR+ (Choromanski et al. 2021, "Rethinking Attention with Performers"):
positive orthogonal random features whose dot products estimate the softmax kernel
exp(q.k / sqrt(d)) without bias, fed to linear attention (prefix sums when causal)."""
from __future__ import annotations

import math

import torch

from attnarena._validate import check_int
from attnarena.mixers.linear import ALL_FORMS, ALL_PATTERNS, LinearAttentionBase
from attnarena.registry import register_mixer


def orthogonal_gaussian(rows: int, dim: int, generator=None, device=None) -> torch.Tensor:
    """(rows, dim) random matrix: blocks of orthogonal rows, each row rescaled to the norm
    of a Gaussian vector so that marginals match i.i.d. N(0, I) rows (FAVOR+'s ORF)."""
    blocks = []
    for _ in range(-(-rows // dim)):
        gaussian = torch.randn(dim, dim, generator=generator, device=device)
        q, _ = torch.linalg.qr(gaussian)
        blocks.append(q.T)
    w = torch.cat(blocks)[:rows]
    norms = torch.randn(rows, dim, generator=generator, device=device).norm(dim=1)
    return w * norms[:, None]


def favor_features(x, projection, is_query):
    """Positive random features phi(x) = exp(w.x - |x|^2/2 - c) / sqrt(m).

    x: (B, H, L, D) already scaled by D^-1/4; projection: (m, D). The offset c cancels in
    the normalized output: per query its own max (any per-query constant cancels); for keys
    the bound max_w |w|^2 / 2 >= w.x - |x|^2/2, minus a margin, which depends on no input,
    so causal use and token-by-token decoding see the same features.
    """
    logits = x @ projection.T - (x * x).sum(-1, keepdim=True) / 2  # (B, H, L, m)
    if is_query:
        offset = logits.amax(-1, keepdim=True).detach()
    else:
        offset = (projection * projection).sum(-1).max() / 2 - 30.0
    return torch.exp(logits - offset) / math.sqrt(projection.shape[0])


@register_mixer(
    "performer", family="linear attention",
    paper="Choromanski et al. 2021, Rethinking Attention with Performers",
    complexity="O(L M D)", patterns=ALL_PATTERNS, forms=ALL_FORMS)
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
        self.register_buffer("projection", orthogonal_gaussian(features, d))
        self._forwards_since_redraw = 0

    @property
    def feature_dim(self) -> int:
        return self.num_features

    @torch.no_grad()
    def redraw(self, generator=None):
        """Draw a new random projection in place."""
        self.projection.copy_(orthogonal_gaussian(self.num_features, self.head_dim, generator,
                                                  self.projection.device))

    def features(self, q, k):
        scale = self.head_dim ** -0.25
        projection = self.projection.to(q.dtype)
        return (favor_features(q * scale, projection, True),
                favor_features(k * scale, projection, False))

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
