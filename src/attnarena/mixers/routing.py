"""Routing Transformer (Roy et al. 2021): attention within online k-means clusters."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnarena import ops
from attnarena._validate import check_int, check_real
from attnarena.mixers.qkv import QKVMixer
from attnarena.ops.routing import assign
from attnarena.registry import register_mixer


@register_mixer(
    "routing", family="sparse attention",
    export_caveat=("a graph traced at one length does not reproduce the model at a longer one "
                   "(largest error 0.6% of the output's scale, over the 0.1% allowed)"),
    paper="Roy et al. 2021, Efficient Content-Based Sparse Attention with Routing "
          "Transformers",
    complexity="O(L m D), m the largest cluster", patterns=("self", "causal"), forms=("parallel",),
    approximates_softmax=True)
class RoutingAttention(QKVMixer):
    """Routing attention (Roy et al. 2021): ``clusters`` (k) centroids per head, shared by
    queries and keys; a query attends to the keys assigned to its own nearest centroid. The
    centroids are online k-means (the paper's mini-batch k-means): in training, each moves
    toward the mean of the normalized queries and keys assigned to it, with decay ``ema``.

    Options: clusters, ema, bias.
    """

    def __init__(self, dim, heads=1, causal=False, *, clusters=8, ema=0.999, bias=True):
        super().__init__(dim, heads, causal, bias=bias)
        check_int(clusters, "clusters")
        check_real(ema, "ema", high=1.0, high_open=True)
        self.clusters, self.ema = clusters, float(ema)
        self.register_buffer("centroids",
                             F.normalize(torch.randn(heads, clusters, self.head_dim), dim=-1))

    @torch.no_grad()
    def _update_centroids(self, q, k, mask):
        """Move each centroid toward the mean of the queries and keys assigned to it."""
        sums = torch.zeros_like(self.centroids)
        counts = torch.zeros(self.centroids.shape[:2], dtype=sums.dtype, device=sums.device)
        for x, valid in ((q, None), (k, mask)):
            member = F.one_hot(assign(x, self.centroids), self.clusters).to(sums.dtype)
            if valid is not None:
                member = member * valid[:, None, :, None].to(sums.dtype)
            counts += member.sum((0, 2))
            sums += torch.einsum("bhlk,bhld->hkd", member, F.normalize(x, dim=-1).to(sums.dtype))
        means = sums / counts.clamp_min(1)[..., None]
        moved = F.normalize(self.ema * self.centroids + (1 - self.ema) * means, dim=-1)
        self.centroids.copy_(torch.where((counts > 0)[..., None], moved, self.centroids))

    def _forward(self, x, context, mask):
        q, k, v = (self.split_heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        if self.training:
            self._update_centroids(q.detach(), k.detach(), mask)
        o = ops.routing_attention(q, k, v, centroids=self.centroids, causal=self.causal,
                                  mask=mask)
        return self.o_proj(self.merge_heads(o))
