"""Position information for the backbones.

``learned`` and ``sinusoidal`` (Vaswani et al. 2017) are added to the token embeddings and
work with every mixer. ``rope`` (Su et al. 2021) and ``alibi`` (Press et al. 2022, "Train
Short, Test Long") act inside attention, so they are mixer options (``rope=True``,
``alibi=True``) that only some mixers accept. ``none`` adds nothing (recurrent mixers carry
order themselves).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from attnarena.registry import mixer_options
from attnarena.stack import stack_names

POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
IN_MIXER = {"rope": "rope", "alibi": "alibi"}


class AddedPositions(nn.Module):
    """Adds a (max_len, dim) table of position vectors to (B, L, dim) embeddings."""

    def __init__(self, kind: str, max_len: int, dim: int):
        super().__init__()
        self.kind, self.max_len = kind, max_len
        if kind == "learned":
            self.table = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        else:
            position = torch.arange(max_len, dtype=torch.float32)[:, None]
            freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32)
                             * (-math.log(10000.0) / dim))
            table = torch.zeros(max_len, dim)
            table[:, 0::2] = torch.sin(position * freq)
            table[:, 1::2] = torch.cos(position * freq[: dim // 2])
            self.register_buffer("table", table, persistent=False)

    def forward(self, x, offset: int = 0):
        L = x.shape[1]
        if offset + L > self.max_len:
            raise ValueError(f"sequence of {offset + L} positions exceeds max_len={self.max_len} "
                             f"of the {self.kind} position table; build the model with a larger "
                             "max_len")
        return x + self.table[offset:offset + L].to(x.dtype)


def build_positions(kind: str, max_len: int, dim: int, mixer, mixer_options_in: dict):
    """Returns (module or None, mixer options updated for in-mixer positions). In a hybrid
    stack, in-mixer positions go to the layers whose mechanism takes them."""
    if kind not in POSITIONS:
        raise ValueError(f"unknown position {kind!r}; valid: {', '.join(POSITIONS)}")
    options = dict(mixer_options_in)
    if kind in ("learned", "sinusoidal"):
        return AddedPositions(kind, max_len, dim), options
    if kind in IN_MIXER:
        flag = IN_MIXER[kind]
        if not any(flag in mixer_options(name) for name in stack_names(mixer)):
            from attnarena.registry import list_mixers
            able = [n for n in list_mixers() if flag in mixer_options(n)]
            raise ValueError(f"position {kind!r} acts inside attention, and mixer {mixer!r} "
                             f"does not take it; mixers that do: {', '.join(able)}")
        options[flag] = True
    return None, options
