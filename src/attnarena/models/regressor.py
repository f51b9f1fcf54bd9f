"""Sequence regressor over real-valued tokens (in-context regression)."""
from __future__ import annotations

import torch
from torch import nn

from attnarena.models.trunk import Backbone


class SequenceRegressor(Backbone):
    """(B, L, input_dim) real tokens -> (B, L) predictions, one per position.

    A linear embedding, causal blocks over any mixer, a linear readout. ``norm=False``
    leaves every layer norm out, so that with ``mlp_dim=0``, ``position="none"`` and a
    linear mixer without feature map or normalization the model is von Oswald et al.'s
    linear self-attention ("Transformers learn in-context by gradient descent", 2023).
    """

    def __init__(self, input_dim: int, *, dim: int = 64, depth: int = 2, heads: int = 4,
                 mixer: str = "softmax", mixer_options: dict | None = None,
                 mlp_dim: int | None = None, position: str = "learned", max_len: int = 1024,
                 dropout: float = 0.0, norm: bool = True, mixer_dim: int | None = None):
        super().__init__()
        self.input_dim = input_dim
        self.embed = nn.Linear(input_dim, dim)
        options = self._build_positions(position, max_len, dim, mixer, mixer_options, dropout)
        self._build_blocks(depth, dim, mixer, options, heads=heads, causal=True,
                           mlp_dim=mlp_dim, dropout=dropout, mixer_dim=mixer_dim, norm=norm)
        self.readout = nn.Linear(dim, 1)

    def forward(self, inputs):
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 3 \
                or inputs.shape[-1] != self.input_dim or not inputs.is_floating_point():
            got = (f"{tuple(inputs.shape)} {inputs.dtype}" if isinstance(inputs, torch.Tensor)
                   else type(inputs).__name__)
            raise ValueError(f"inputs must be a float tensor (batch, length, {self.input_dim}), "
                             f"got {got}")
        x = self._positioned(self.embed(inputs.to(self.embed.weight.dtype)))
        return self.readout(self.forward_blocks(x))[..., 0]
