"""Low-rank adapters (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models")
on chosen linear layers: W x + (alpha / r) B A x with A small random and B zero, so adding
adapters leaves the model unchanged; ``merge_lora`` folds B A into W and puts the plain
``nn.Linear`` back, exactly (the same function up to float rounding).

Written here rather than taken from peft so that the arena's own models (which need no
extra) and pretrained ones adapt the same way.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from attnarena._validate import check_int


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``rank`` update."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float | None = None):
        super().__init__()
        check_int(rank, "rank")
        if rank > min(base.in_features, base.out_features):
            raise ValueError(f"rank must be at most min(in, out) = "
                             f"{min(base.in_features, base.out_features)}, got {rank}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank, self.scaling = rank, (alpha if alpha is not None else rank) / rank
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=weight.dtype,
                                               device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=weight.dtype,
                                               device=weight.device))

    @property
    def in_features(self):
        return self.base.in_features

    @property
    def out_features(self):
        return self.base.out_features

    @property
    def weight(self):
        return self.base.weight

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def merged(self) -> nn.Linear:
        """The plain linear layer with the update folded into its weight."""
        with torch.no_grad():
            self.base.weight += (self.lora_B @ self.lora_A) * self.scaling
        for p in self.base.parameters():
            p.requires_grad_(True)
        return self.base


def add_lora(model: nn.Module, select, rank: int = 8, alpha: float | None = None) -> list[str]:
    """Wrap every ``nn.Linear`` of ``model`` whose qualified name satisfies ``select(name)``
    in a ``LoRALinear``; returns the names wrapped."""
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and select(full):
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                wrapped.append(full)
    if not wrapped:
        raise ValueError("no linear layer matched the adapter selection")
    return wrapped


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter of ``model`` into its linear layer; returns how many."""
    count = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
                count += 1
    return count


def train_only(model: nn.Module, params) -> list[nn.Parameter]:
    """Freeze every parameter of ``model`` but ``params`` (returned as a list)."""
    params = list(params)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, LoRALinear)
            for p in (m.lora_A, m.lora_B)]
