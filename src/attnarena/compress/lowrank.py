"""Low-rank factorization of linear layers by truncated SVD: W (out, in) ~ U_r S_r V_r^T
becomes two layers, in -> r -> out (Greenformers, Cahyawijaya et al. 2021; "Low Rank
Factorization for Compact Multi-Head Self-Attention", Mehta et al. 2019). The rank of each
layer is the smallest that keeps ``energy`` of its squared singular values, or the largest
within ``keep`` of its parameters; a layer is factorized only when that saves parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnarena.compress.recipe import check_number, register_method, set_module


class LowRankLinear(nn.Module):
    """x -> x V^T -> (x V^T) U^T + b: a rank-``rank`` linear map in two factors."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        weight = linear.weight.detach()
        u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
        root = s[:rank].sqrt()
        layer = cls(linear.in_features, linear.out_features, rank, linear.bias is not None)
        layer.down.weight.data.copy_((root[:, None] * vh[:rank]).to(weight.dtype))
        layer.up.weight.data.copy_((u[:, :rank] * root).to(weight.dtype))
        if linear.bias is not None:
            layer.up.bias.data.copy_(linear.bias.detach())
        return layer.to(weight.device)

    @property
    def weight(self) -> torch.Tensor:
        """The (out, in) product of the factors."""
        return self.up.weight @ self.down.weight

    def forward(self, x):
        return self.up(self.down(x))

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, rank={self.rank}"


def choose_rank(singular_values: torch.Tensor, shape, *, energy=None, keep=None) -> int:
    """The rank for one layer: kept squared-singular-value ``energy``, or the parameter
    fraction ``keep`` of the dense layer."""
    out_features, in_features = shape
    if energy is not None:
        power = singular_values.double() ** 2
        share = power.cumsum(0) / power.sum().clamp_min(1e-300)
        return int((share < energy - 1e-12).sum()) + 1
    return max(1, int(keep * in_features * out_features // (in_features + out_features)))


@dataclass
class LowRankConfig:
    """Give exactly one: ``energy`` in (0, 1] (rank keeping that share of the squared
    singular values) or ``keep`` in (0, 1) (each layer's parameter budget). ``head``: also
    factorize the output head."""
    energy: float | None = None
    keep: float | None = 0.5
    head: bool = False

    def __post_init__(self):
        if self.energy is not None:
            check_number("energy", self.energy, 0.0, 1.0, open_low=True)
            self.keep = None
        elif self.keep is None:
            raise ValueError("lowrank needs energy (kept share of the spectrum) or keep "
                             "(kept share of each layer's parameters)")
        else:
            check_number("keep", self.keep, 0.0, 1.0, open_low=True, open_high=True)


@register_method("lowrank", LowRankConfig, family="low-rank factorization",
                 paper="Cahyawijaya et al. 2021, Greenformers: Improving Computation and "
                       "Memory Efficiency in Transformer Models via Low-Rank Approximation",
                 restore=lambda m, c, r: _restore(m, r))
def lowrank(subject, config, data):
    ranks, before, after = {}, 0, 0
    model = subject.model
    for name, linear in subject.linear_layers(include_output=config.head).items():
        out_features, in_features = linear.weight.shape
        dense = in_features * out_features
        before += dense
        s = torch.linalg.svdvals(linear.weight.detach().double())
        rank = choose_rank(s, linear.weight.shape, energy=config.energy, keep=config.keep)
        if rank * (in_features + out_features) >= dense:
            after += dense
            continue
        set_module(model, name, LowRankLinear.from_linear(linear, rank))
        ranks[name] = rank
        after += rank * (in_features + out_features)
    return subject, {"ranks": ranks, "weights_before": before, "weights_after": after}


def _restore(subject, report):
    layers = subject.linear_layers()
    for name, rank in report["ranks"].items():
        linear = layers[name]
        set_module(subject.model, name, LowRankLinear(linear.in_features, linear.out_features, rank,
                                              linear.bias is not None).to(linear.weight.device))
    return subject
