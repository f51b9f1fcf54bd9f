"""The trunk every backbone shares: position information, embedding dropout, a stack of
blocks over any mixer, and a final norm. A backbone embeds its inputs, runs the trunk and
reads out."""
from __future__ import annotations

from torch import nn

from attnarena._validate import check_finite, entering, inside

from attnarena.models.block import Block
from attnarena.models.positions import build_positions
from attnarena.stack import layer_mixers


def block_stack(depth: int, dim: int, mixer, *, heads: int, causal: bool,
                mixer_options: dict | None = None, mlp_dim: int | None = None,
                dropout: float = 0.0, mixer_dim: int | None = None,
                norm: bool = True) -> nn.ModuleList:
    """``depth`` blocks over the stack ``mixer`` (a mechanism name or a pattern, see
    ``attnarena.stack``)."""
    return nn.ModuleList(
        Block(dim, name, heads=heads, causal=causal, mixer_options=options,
              mlp_dim=mlp_dim, dropout=dropout, mixer_dim=mixer_dim, norm=norm)
        for name, options in layer_mixers(mixer, depth, mixer_options))


class Backbone(nn.Module):
    """Base of the backbones: ``_build_positions`` then ``_build_blocks`` make the trunk
    (``positions``, ``drop``, ``blocks``, ``norm``); ``forward_blocks`` runs it on embeddings."""

    def _build_positions(self, position: str, max_len: int, dim: int, mixer: str,
                         mixer_options: dict | None, dropout: float) -> dict:
        """Position module (or None) and embedding dropout; returns the mixer options with
        in-mixer positions (rope, alibi) switched on."""
        self.positions, options = build_positions(position, max_len, dim, mixer,
                                                  mixer_options or {})
        self.drop = nn.Dropout(dropout)
        return options

    def _build_blocks(self, depth: int, dim: int, mixer: str, options: dict, *, heads: int,
                      causal: bool, mlp_dim: int | None, dropout: float,
                      mixer_dim: int | None, norm: bool) -> None:
        self.blocks = block_stack(depth, dim, mixer, heads=heads, causal=causal,
                                  mixer_options=options, mlp_dim=mlp_dim, dropout=dropout,
                                  mixer_dim=mixer_dim, norm=norm)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def _positioned(self, x, offset: int = 0):
        """(B, L, dim) embeddings with positions added (from ``offset``) and dropout."""
        if self.positions is not None:
            x = self.positions(x, offset)
        return self.drop(x)

    def forward_blocks(self, x, mask=None, intermediates: bool = False):
        """Blocks over positioned embeddings -> (B, L, dim) after the final norm, or with
        ``intermediates`` the list of every block's output (before the norm)."""
        if entering():  # the model's inputs, checked once for all its blocks
            check_finite(x, "the embedded inputs")
        outputs = []
        with inside():
            for block in self.blocks:
                x = block(x, mask=mask)
                outputs.append(x)
        return outputs if intermediates else self.norm(x)
