"""Mixed precision: a bit width per linear layer from its measured sensitivity, under a
model-size budget (the question LRP-QViT, Ding et al. 2024, answers with relevance scores;
here the sensitivity is measured directly: the increase of the task's loss on calibration
data when that layer alone is quantized at that width).

The assignment starts every layer at the widest choice and repeatedly narrows the layer
whose next narrower width costs the least loss per bit saved, until the mean bits per
weight fit the budget. Weights are symmetric per-channel integers (``QuantLinear``), so an
assignment is comparable with uniform ``int_static`` at the same size.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from attnarena.compress.fakequant import QuantLinear
from attnarena.compress.quantize import fake_quantize, restore_fake
from attnarena.subject import subject_of
from attnarena.compress.recipe import check_number, register_method, set_module


@dataclass
class MixedConfig:
    """Mean weight bits ``budget`` over the linear layers, each layer one of ``choices``."""
    budget: float = 4.0
    choices: list = field(default_factory=lambda: [2, 3, 4, 6, 8])

    def __post_init__(self):
        if isinstance(self.choices, str):
            self.choices = [int(c) for c in self.choices.split(",") if c.strip()]
        self.choices = sorted(set(self.choices))
        if not self.choices:
            raise ValueError("choices must name at least one bit width")
        for bits in self.choices:
            check_number("each of choices", bits, 2, 8, integer=True)
        check_number("budget", self.budget, 0.0, 32.0, open_low=True)
        if self.budget < self.choices[0]:
            raise ValueError(f"no assignment meets a budget of {self.budget} bits per weight: "
                             f"the narrowest choice is {self.choices[0]} bits")


@torch.no_grad()
def _mean_loss(model, data) -> float:
    was_training = model.training
    model.eval()
    try:
        return sum(float(data.loss(model, b)) for b in data.calibration) / len(data.calibration)
    finally:
        model.train(was_training)


@torch.no_grad()
def sensitivity(subject, data, choices) -> dict[str, dict[int, float]]:
    """Loss increase over the float model when one layer alone has ``bits``-bit weights:
    {layer: {bits: increase}}."""
    subject = subject_of(subject)
    model = subject.model
    base = _mean_loss(model, data)
    out = {}
    for name, linear in subject.linear_layers().items():
        out[name] = {}
        for bits in choices:
            set_module(model, name, QuantLinear.from_linear(linear, bits=bits, search=False))
            out[name][bits] = _mean_loss(model, data) - base
        set_module(model, name, linear)
    return out


def assign_bits(scores: dict[str, dict[int, float]], sizes: dict[str, int], budget: float,
                choices) -> dict[str, int]:
    """Greedy assignment: mean bits per weight (weighted by ``sizes``) <= ``budget``."""
    choices = sorted(choices)
    total = sum(sizes.values())
    if budget < choices[0]:
        raise ValueError(f"no assignment meets a budget of {budget} bits per weight: the "
                         f"narrowest choice is {choices[0]} bits")
    bits = {name: choices[-1] for name in scores}

    def used():
        return sum(bits[n] * sizes[n] for n in bits)

    while used() > budget * total + 1e-9:
        best = None
        for name, current in bits.items():
            lower = [c for c in choices if c < current]
            if not lower:
                continue
            narrower = lower[-1]
            cost = (scores[name][narrower] - scores[name][current]) / (
                (current - narrower) * sizes[name])
            if best is None or cost < best[0]:
                best = (cost, name, narrower)
        bits[best[1]] = best[2]
    return bits


@register_method("mixed", MixedConfig, family="quantization",
                 paper="Ding et al. 2024, LRP-QViT: Mixed-Precision Vision Transformer "
                       "Quantization via Layer-wise Relevance Propagation (sensitivity-driven "
                       "bit allocation)",
                 restore=lambda m, c, r: restore_fake(m, fmt="int", act_bits=0,
                                                      bits_of=r["bits"]))
def mixed(subject, config, data):
    layers = subject.linear_layers()
    sizes = {n: m.weight.numel() for n, m in layers.items()}
    scores = sensitivity(copy.deepcopy(subject), data, config.choices)
    bits = assign_bits(scores, sizes, config.budget, config.choices)
    report = fake_quantize(subject, data, fmt="int", bits=8, act_bits=0, search=False,
                           bits_of=bits)
    mean = sum(bits[n] * sizes[n] for n in bits) / max(sum(sizes.values()), 1)
    return subject, {**report, "mean_bits": mean,
                   "sensitivity": {n: {str(b): v for b, v in s.items()}
                                   for n, s in scores.items()}}
