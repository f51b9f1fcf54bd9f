"""Dual encoder for matching tasks (LRA's Retrieval): one shared encoder, two pooled
vectors u and v, combined and classified."""
from __future__ import annotations

import torch
from torch import nn

from attnarena._validate import check_mask
from attnarena.models.encoder import EncoderClassifier

COMBINES = {"paper": 4, "concat": 2}


class DualEncoder(nn.Module):
    """Encodes both sequences with one encoder and classifies the pair.

    ``combine="paper"`` feeds [u, v, u * v, u - v] to the classifier (Tay et al. 2021, the
    LRA paper); ``combine="concat"`` feeds [u, v], as LRA's released code trained. The
    classifier is a two-layer MLP with a ReLU. Other settings go to ``EncoderClassifier``.
    """

    def __init__(self, num_classes: int, *, combine: str = "paper", **encoder_settings):
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"unknown combine {combine!r}; valid: {', '.join(COMBINES)}")
        self.combine = combine
        self.encoder = EncoderClassifier(0, **encoder_settings)
        dim = self.encoder.dim
        self.classifier = nn.Sequential(nn.Linear(COMBINES[combine] * dim, dim), nn.ReLU(),
                                        nn.Linear(dim, num_classes))

    def encode(self, inputs, mask=None):
        """(B, L) ids -> (B, dim) pooled vector."""
        return self.encoder(inputs, mask=mask)

    def forward(self, inputs, inputs2, mask=None, mask2=None):
        if inputs.shape[0] != inputs2.shape[0]:
            raise ValueError(f"both sequences need the same batch size, got {inputs.shape[0]} "
                             f"and {inputs2.shape[0]}")
        # One encoder call over both sequences, padded to a common length.
        length = max(inputs.shape[1], inputs2.shape[1])
        pair, masks = [], []
        for x, m in ((inputs, mask), (inputs2, mask2)):
            check_mask(m, x.shape)
            if m is None:
                m = torch.ones(x.shape, dtype=torch.bool, device=x.device)
            extra = length - x.shape[1]
            pair.append(nn.functional.pad(x, (0, extra)))
            masks.append(nn.functional.pad(m, (0, extra), value=False))
        pooled = self.encode(torch.cat(pair), torch.cat(masks))
        u, v = pooled.chunk(2)
        features = [u, v] if self.combine == "concat" else [u, v, u * v, u - v]
        return self.classifier(torch.cat(features, dim=-1))
