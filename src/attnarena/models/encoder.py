"""Encoder classifier: embed, a stack of blocks over any mixer, pool, classify."""
from __future__ import annotations

import torch
from torch import nn

from attnarena._validate import check_mask
from attnarena.models.embedding import PatchEmbedding, check_tokens
from attnarena.models.trunk import Backbone

POOLINGS = ("mean", "cls")


class EncoderClassifier(Backbone):
    """Sequence classifier over token ids (``vocab_size``) or image patches (``image_size``,
    ``patch_size``, ``channels``).

    Entry points: ``forward_features`` (token features after the final norm),
    ``forward_head`` (pool + classify), ``forward_intermediates`` (every block's output),
    ``forward``.
    """

    def __init__(self, num_classes: int, *, vocab_size: int | None = None,
                 image_size: int | None = None, patch_size: int | None = None, channels: int = 1,
                 dim: int = 64, depth: int = 2, heads: int = 4, mixer: str = "softmax",
                 mixer_options: dict | None = None, mlp_dim: int | None = None,
                 pooling: str = "mean", position: str = "learned", max_len: int = 1024,
                 dropout: float = 0.0, causal: bool = False,
                 mixer_dim: int | None = None, norm: bool = True):
        super().__init__()
        if (vocab_size is None) == (image_size is None):
            raise ValueError("give exactly one of vocab_size (token input) or image_size and "
                             "patch_size (image input)")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        self.vocab_size, self.pooling, self.causal = vocab_size, pooling, causal
        self.dim = dim
        if vocab_size is not None:
            self.embed = nn.Embedding(vocab_size, dim)
        else:
            if patch_size is None:
                raise ValueError("image input needs patch_size")
            self.embed = PatchEmbedding(image_size, patch_size, channels, dim)
            max_len = self.embed.num_patches
        extra = 1 if pooling == "cls" else 0
        options = self._build_positions(position, max_len + extra, dim, mixer, mixer_options,
                                        dropout)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pooling == "cls" else None
        self._build_blocks(depth, dim, mixer, options, heads=heads, causal=causal,
                           mlp_dim=mlp_dim, dropout=dropout, mixer_dim=mixer_dim, norm=norm)
        # num_classes=0: no head, forward returns the pooled features (dual encoders).
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()

    def _embed(self, inputs, mask):
        if self.vocab_size is not None:
            check_tokens(inputs, self.vocab_size, "inputs")
            check_mask(mask, inputs.shape)
            x = self.embed(inputs.long())
        else:
            if mask is not None:
                raise ValueError("image input takes no mask")
            x = self.embed(inputs)
        if self.cls_token is not None:
            # The CLS token goes where every position can reach it: first, or last when causal.
            cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
            x = torch.cat([x, cls] if self.causal else [cls, x], dim=1)
            if mask is not None:
                ones = mask.new_ones(mask.shape[0], 1)
                mask = torch.cat([mask, ones] if self.causal else [ones, mask], dim=1)
        return self._positioned(x), mask

    def forward_intermediates(self, inputs, mask=None):
        """List of (B, L', dim) outputs, one per block, and the mask over them."""
        x, mask = self._embed(inputs, mask)
        return self.forward_blocks(x, mask, intermediates=True), mask

    def forward_features(self, inputs, mask=None):
        """(B, L', dim) token features after the final norm, and the mask over them."""
        x, mask = self._embed(inputs, mask)
        return self.forward_blocks(x, mask), mask

    def pool(self, features, mask=None):
        """(B, L', dim) -> (B, dim)."""
        if self.pooling == "cls":
            return features[:, -1] if self.causal else features[:, 0]
        if mask is None:
            return features.mean(dim=1)
        weights = mask.to(features.dtype)[..., None]
        return (features * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def forward_head(self, features, mask=None, pre_logits: bool = False):
        pooled = self.pool(features, mask)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, inputs, mask=None):
        """inputs: (B, L) token ids or (B, C, H, W) images; mask: (B, L) bool -> (B, classes)."""
        features, mask = self.forward_features(inputs, mask)
        return self.forward_head(features, mask)
