"""Pruning: attention heads and MLP neurons by importance, removed structurally (the
matrices shrink, so the model gets smaller and faster), and unstructured magnitude pruning
for comparison. Any subject (``attnarena.subject``): arena models and BERT-family pretrained
encoders alike.

Importance follows Michel et al. 2019 ("Are Sixteen Heads Really Better than One?"): a
gate xi multiplies each head's output (each MLP neuron's activation); its importance is
E|dL/dxi| over calibration batches of the task, at xi = 1. Scores are normalized within
each layer (L2) and the lowest are pruned across the model, one head or neuron always
kept per layer.

How an attention's heads are removed is its subject's business (an arena mixer's by
``attnarena.mixers.heads``, a BERT layer's by its adapter).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from attnarena.compress.recipe import check_number, float_parameters, register_method
from attnarena.mixers.heads import HEAD_LAYOUTS
from attnarena.subject import subject_of

@dataclass
class HeadGroup:
    """The heads of one attention layer: ``output`` names the linear layer whose input
    columns are the heads' outputs (head by head); ``prune(kept)`` keeps those heads."""
    name: str
    heads: int
    output: str
    prune: Callable


def head_groups(subject, strict: bool = True) -> list[HeadGroup]:
    """Every attention layer of ``subject`` whose heads can be pruned. ``strict``: a clear
    error when there is none, or an attention with several heads cannot be pruned."""
    found, missing = [], {}
    for block in subject_of(subject).blocks():
        attention = block.attention
        if attention is None or attention.heads <= 1:
            continue
        if attention.prune is None:
            missing[attention.mechanism] = attention.unprunable
            continue
        found.append(HeadGroup(attention.name, attention.heads, attention.output, attention.prune))
    if strict and missing:
        why = "; ".join(f"{n}: {w}" for n, w in sorted(missing.items()) if w)
        raise ValueError(f"head pruning does not know how {', '.join(sorted(missing))} lays out "
                         f"its heads{f' ({why})' if why else ''}; it prunes: "
                         f"{', '.join(sorted(HEAD_LAYOUTS))}")
    if strict and not found:
        raise ValueError("this model has no attention layer with more than one head to prune "
                         "(head pruning needs heads > 1)")
    return found


def _gated_importance(model, data, targets: dict[str, int]) -> dict[str, torch.Tensor]:
    """E|dL/dxi| of a gate on each target layer's input, split into ``targets[name]``
    equal groups (heads, or neurons)."""
    gates = {name: torch.ones(count, requires_grad=True) for name, count in targets.items()}
    scores = {name: torch.zeros(count) for name, count in targets.items()}

    def hook(name):
        def scale(module, args):
            x = args[0]
            gate = gates[name].to(x.device, x.dtype).repeat_interleave(
                x.shape[-1] // len(gates[name]))
            return (x * gate,) + args[1:]
        return scale

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in targets]
    was_training = model.training
    model.eval()
    try:
        for batch in data.calibration:
            for gate in gates.values():
                gate.grad = None
            model.zero_grad(set_to_none=True)
            (data.importance_loss or data.loss)(model, batch).backward()
            for name, gate in gates.items():
                scores[name] += gate.grad.abs().cpu()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return scores


def _choose(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, list[int]]:
    """Indices kept per layer: the lowest layer-normalized scores pruned across layers,
    one kept per layer."""
    normalized = {n: s / s.norm().clamp_min(1e-12) for n, s in scores.items()}
    total = sum(len(s) for s in scores.values())
    target = int(round(fraction * total))
    candidates = sorted((float(v), n, i) for n, s in normalized.items()
                        for i, v in enumerate(s.tolist()))
    removed = {n: set() for n in scores}
    for _, name, index in candidates:
        if target == 0:
            break
        if len(scores[name]) - len(removed[name]) > 1:
            removed[name].add(index)
            target -= 1
    return {n: [i for i in range(len(s)) if i not in removed[n]] for n, s in scores.items()}


@dataclass
class HeadPruneConfig:
    """Prune ``fraction`` of all attention heads (the least important)."""
    fraction: float = 0.5

    def __post_init__(self):
        check_number("fraction", self.fraction, 0.0, 1.0, open_high=True)


def head_importance(subject, data) -> dict[str, torch.Tensor]:
    """Michel et al.'s importance of every head: {layer name: (heads,) scores}."""
    subject = subject_of(subject)
    groups = head_groups(subject)
    scores = _gated_importance(subject.model, data, {g.output: g.heads for g in groups})
    return {g.name: scores[g.output] for g in groups}


@register_method("prune_heads", HeadPruneConfig, family="pruning",
                 paper="Michel et al. 2019, Are Sixteen Heads Really Better than One?",
                 restore=lambda m, c, r: _restore_heads(m, r),
                 check=lambda m, c: head_groups(m))
def prune_heads(subject, config, data):
    scores = head_importance(subject, data)
    kept = _choose(scores, config.fraction)
    _restore_heads(subject, {"kept": kept})
    return subject, {"kept": kept, "heads_before": sum(len(s) for s in scores.values()),
                   "heads_after": sum(len(k) for k in kept.values()),
                   "importance": {n: s.tolist() for n, s in scores.items()}}


def _restore_heads(subject, report):
    groups = {g.name: g for g in head_groups(subject, strict=False)}
    for name, indices in report["kept"].items():
        groups[name].prune(indices)
    return subject


# -- MLP neurons --------------------------------------------------------------------------

def mlp_units(subject) -> dict[str, tuple[nn.Linear, nn.Linear]]:
    """{block name: (first, last)} linear pairs of every MLP of the subject."""
    found = {b.name: b.mlp for b in subject_of(subject).blocks() if b.mlp is not None}
    if not found:
        raise ValueError("this model has no MLP to prune (its blocks were built with "
                         "mlp_dim=0)")
    return found


def prune_mlp_neurons(first: nn.Linear, last: nn.Linear, kept: list[int]) -> None:
    """Keep only the hidden neurons ``kept`` between ``first`` and ``last``, in place."""
    index = torch.as_tensor(sorted(kept), dtype=torch.long, device=first.weight.device)
    if len(index) == first.out_features:
        return
    first.weight = nn.Parameter(first.weight.detach()[index])
    if first.bias is not None:
        first.bias = nn.Parameter(first.bias.detach()[index])
    last.weight = nn.Parameter(last.weight.detach()[:, index])
    first.out_features = last.in_features = len(index)


@dataclass
class MLPPruneConfig:
    """Prune ``fraction`` of all MLP hidden neurons (the least important)."""
    fraction: float = 0.5

    def __post_init__(self):
        check_number("fraction", self.fraction, 0.0, 1.0, open_high=True)


@register_method("prune_mlp", MLPPruneConfig, family="pruning",
                 paper="Michel et al. 2019 (gradient importance, applied to MLP neurons); "
                       "Kurtic et al. 2023, Ziplm (structured MLP pruning)",
                 restore=lambda m, c, r: _restore_mlp(m, r),
                 check=lambda m, c: mlp_units(m))
def prune_mlp(subject, config, data):
    units = mlp_units(subject)
    names = {n: _name_of(subject.model, last) for n, (_, last) in units.items()}
    scores = _gated_importance(subject.model, data, {names[n]: last.in_features
                                             for n, (_, last) in units.items()})
    kept = _choose({n: scores[names[n]] for n in units}, config.fraction)
    before = sum(first.out_features for first, _ in units.values())
    _restore_mlp(subject, {"kept": kept})
    return subject, {"kept": kept, "neurons_before": before,
                   "neurons_after": sum(len(k) for k in kept.values())}


def _name_of(model, module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def _restore_mlp(subject, report):
    units = mlp_units(subject)
    for name, indices in report["kept"].items():
        prune_mlp_neurons(*units[name], indices)
    return subject


# -- unstructured -------------------------------------------------------------------------

@dataclass
class MagnitudeConfig:
    """Zero the ``sparsity`` fraction of linear weights with the smallest magnitude, across
    all layers (``scope="global"``) or within each (``"layer"``)."""
    sparsity: float = 0.5
    scope: str = "global"

    def __post_init__(self):
        check_number("sparsity", self.sparsity, 0.0, 1.0, open_high=True)
        if self.scope not in ("global", "layer"):
            raise ValueError(f"scope must be global or layer, got {self.scope!r}")


@register_method("magnitude", MagnitudeConfig, family="pruning",
                 paper="Han et al. 2015, Learning both Weights and Connections for Efficient "
                       "Neural Networks (torch.nn.utils.prune)")
def magnitude(subject, config, data):
    layers = subject.linear_layers()
    pairs = [(m, "weight") for m in layers.values()]
    if config.scope == "global":
        torch_prune.global_unstructured(pairs, pruning_method=torch_prune.L1Unstructured,
                                        amount=config.sparsity)
    else:
        for module, name in pairs:
            torch_prune.l1_unstructured(module, name, amount=config.sparsity)
    for module, name in pairs:
        torch_prune.remove(module, name)
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    total = sum(m.weight.numel() for m in layers.values())
    return subject, {"sparsity": zeros / max(total, 1), "pruned": sorted(layers),
                     "not_pruned": float_parameters(subject.model, set(layers))}
