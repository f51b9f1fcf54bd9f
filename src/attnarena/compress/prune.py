"""Pruning: attention heads and MLP neurons by importance, removed structurally (the
matrices shrink, so the model gets smaller and faster), and unstructured magnitude pruning
for comparison.

Importance follows Michel et al. 2019 ("Are Sixteen Heads Really Better than One?"): a
gate xi multiplies each head's output (each MLP neuron's activation); its importance is
E|dL/dxi| over calibration batches of the task, at xi = 1. Scores are normalized within
each layer (L2) and the lowest are pruned across the model, one head or neuron always
kept per layer.

A mixer's heads are laid out in its parameters: ``HEAD_LAYOUTS`` says, for each mechanism,
which parameters have a heads-major axis (``(name, axis)``, or ``(name, axis, groups)``
when the axis holds several heads-major blocks side by side). Pruning keeps those slices
of the kept heads and lowers the mixer's head count; depthwise convolutions, group norms
and head norms over the pruned channels shrink with them. (Dilated attention is left out:
its heads' dilation offsets follow their index, so removing one shifts the others.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from attnarena.compress.recipe import (check_number, float_parameters, linear_layers,
                                       register_method)
from attnarena.models.block import Block
from attnarena.mixers.base import Mixer

_QKV = tuple((f"{p}.{t}", 0) for p in ("q_proj", "k_proj", "v_proj") for t in ("weight", "bias"))
_OUT = (("o_proj.weight", 1),)
HEAD_LAYOUTS = {
    **{name: _QKV + _OUT for name in ("softmax", "local", "bigbird", "longformer", "sparse",
                                      "linear", "performer", "linformer")},
    "cosine": _QKV + _OUT + (("length_power", 0),),
    "hedgehog": _QKV + _OUT + (("feature_weight", 0),),
    "lolcats": _QKV + _OUT + (("feature_weight", 0),),
    "flatten": _QKV + _OUT + (("conv.weight", 0), ("conv.bias", 0)),
    "agent": _QKV + _OUT + (("conv.weight", 0), ("conv.bias", 0)),
    "nystromformer": _QKV + _OUT + (("conv.weight", 0),),
    "log_linear": _QKV + _OUT + (("level_weights.weight", 0), ("level_weights.bias", 0),
                                 ("norm.weight", 0)),
    "reformer": (("qk_proj.weight", 0), ("qk_proj.bias", 0), ("v_proj.weight", 0),
                 ("v_proj.bias", 0)) + _OUT,
    "gaam": (("mean_offset", 1), ("raw_scale", 1), ("v_proj.weight", 0),
             ("v_proj.bias", 0)) + _OUT,
    "retention": (("q_proj.weight", 0), ("k_proj.weight", 0), ("v_proj.weight", 0),
                  ("g_proj.weight", 0), ("norm.weight", 0), ("norm.bias", 0),
                  ("log_decay", 0)) + _OUT,
    "gla": (("q_proj.weight", 0), ("k_proj.weight", 0), ("v_proj.weight", 0),
            ("g_proj.weight", 0), ("gate.1.weight", 0), ("gate.1.bias", 0),
            ("norm.weight", 0)) + _OUT,
    "mlstm": (("q_proj.weight", 0), ("k_proj.weight", 0), ("v_proj.weight", 0),
              ("o_gate.weight", 0), ("gates.weight", 0, 2), ("gates.bias", 0, 2),
              ("norm.weight", 0)) + _OUT,
    "deltanet": (("q_proj.weight", 0), ("k_proj.weight", 0), ("v_proj.weight", 0),
                 ("q_conv.conv.weight", 0), ("q_conv.conv.bias", 0),
                 ("k_conv.conv.weight", 0), ("k_conv.conv.bias", 0),
                 ("v_conv.conv.weight", 0), ("v_conv.conv.bias", 0),
                 ("b_proj.weight", 0), ("b_proj.bias", 0), ("norm.weight", 0)) + _OUT,
}
HEAD_LAYOUTS["gated_deltanet"] = HEAD_LAYOUTS["deltanet"] + (
    ("A_log", 0), ("dt_bias", 0), ("a_proj.weight", 0), ("g_proj.weight", 0))


def output_projection(mixer) -> str:
    """Name of the layer whose input columns are the heads' outputs."""
    return "o_proj"


def head_mixers(model, strict: bool = True) -> list[tuple[str, Mixer]]:
    """(name, mixer) of every mixer in ``model`` whose heads can be pruned. ``strict``:
    a clear error when there is none, or a mixer with heads has no layout."""
    found, missing = [], set()
    for name, module in model.named_modules():
        if isinstance(module, Mixer) and module.heads > 1:
            if module.info.name in HEAD_LAYOUTS:
                found.append((name, module))
            else:
                missing.add(module.info.name)
    if strict and missing:
        raise ValueError(f"head pruning does not know how {', '.join(sorted(missing))} lays out "
                         f"its heads; it prunes: {', '.join(sorted(HEAD_LAYOUTS))}")
    if strict and not found:
        raise ValueError("this model has no mixer with more than one head to prune (head "
                         "pruning needs heads > 1)")
    return found


def _per_head_index(size: int, heads: int, kept: torch.Tensor, groups: int) -> torch.Tensor:
    width = size // (heads * groups)
    index = [(g * heads + h) * width + torch.arange(width)
             for g in range(groups) for h in kept.tolist()]
    return torch.cat(index)


def prune_mixer_heads(mixer: Mixer, kept: list[int]) -> None:
    """Keep only the heads ``kept`` (indices) of ``mixer``, in place."""
    heads = mixer.heads
    kept = torch.as_tensor(sorted(kept), dtype=torch.long)
    if len(kept) == heads:
        return
    if len(kept) == 0:
        raise ValueError("at least one head must be kept")
    for entry in HEAD_LAYOUTS[mixer.info.name]:
        name, axis, groups = (*entry, 1)[:3]
        module_name, _, attribute = name.rpartition(".")
        module = mixer.get_submodule(module_name) if module_name else mixer
        tensor = getattr(module, attribute)
        if tensor is None:
            continue
        index = _per_head_index(tensor.shape[axis], heads, kept, groups).to(tensor.device)
        sliced = tensor.detach().index_select(axis, index)
        if attribute in module._buffers:  # a per-head constant (retention's decays)
            module._buffers[attribute] = sliced
        else:
            setattr(module, attribute, nn.Parameter(sliced, requires_grad=tensor.requires_grad))
    for module in mixer.modules():
        _resize(module, heads, len(kept))
    mixer.heads = len(kept)


def _resize(module, heads: int, kept: int) -> None:
    """Keep a module's bookkeeping in step with its sliced weights."""
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
        module.in_channels = module.out_channels = module.groups = module.weight.shape[0]
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = module.weight.shape[0]
        if module.num_groups == heads:
            module.num_groups = kept
    elif not isinstance(module, Mixer) and getattr(module, "heads", None) == heads:
        module.heads = kept  # per-head norms


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
            data.loss(model, batch).backward()
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


def head_importance(model, data) -> dict[str, torch.Tensor]:
    """Michel et al.'s importance of every head: {mixer name: (heads,) scores}."""
    mixers = head_mixers(model)
    targets = {f"{n}.{output_projection(m)}": m.heads for n, m in mixers}
    scores = _gated_importance(model, data, targets)
    return {n: scores[f"{n}.{output_projection(m)}"] for n, m in mixers}


@register_method("prune_heads", HeadPruneConfig, family="pruning",
                 paper="Michel et al. 2019, Are Sixteen Heads Really Better than One?",
                 restore=lambda m, c, r: _restore_heads(m, r),
                 check=lambda m, c: head_mixers(m))
def prune_heads(model, config, data):
    scores = head_importance(model, data)
    kept = _choose(scores, config.fraction)
    before = sum(len(s) for s in scores.values())
    for name, indices in kept.items():
        prune_mixer_heads(model.get_submodule(name), indices)
    return model, {"kept": kept, "heads_before": before,
                   "heads_after": sum(len(k) for k in kept.values()),
                   "importance": {n: s.tolist() for n, s in scores.items()}}


def _restore_heads(model, report):
    for name, indices in report["kept"].items():
        prune_mixer_heads(model.get_submodule(name), indices)
    return model


# -- MLP neurons --------------------------------------------------------------------------

def mlp_blocks(model) -> dict[str, Block]:
    found = {n: m for n, m in model.named_modules() if isinstance(m, Block) and m.mlp is not None}
    if not found:
        raise ValueError("this model has no MLP to prune (its blocks were built with "
                         "mlp_dim=0)")
    return found


def prune_mlp_neurons(block: Block, kept: list[int]) -> None:
    """Keep only the hidden neurons ``kept`` of ``block``'s MLP, in place."""
    first, last = block.mlp[0], block.mlp[-1]
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
                 check=lambda m, c: mlp_blocks(m))
def prune_mlp(model, config, data):
    blocks = mlp_blocks(model)
    scores = _gated_importance(model, data, {f"{n}.mlp.{len(b.mlp) - 1}": b.mlp[-1].in_features
                                             for n, b in blocks.items()})
    kept = _choose({n.rsplit(".mlp.", 1)[0]: s for n, s in scores.items()}, config.fraction)
    before = sum(b.mlp[0].out_features for b in blocks.values())
    for name, indices in kept.items():
        prune_mlp_neurons(blocks[name], indices)
    return model, {"kept": kept, "neurons_before": before,
                   "neurons_after": sum(len(k) for k in kept.values())}


def _restore_mlp(model, report):
    blocks = mlp_blocks(model)
    for name, indices in report["kept"].items():
        prune_mlp_neurons(blocks[name], indices)
    return model


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
def magnitude(model, config, data):
    layers = linear_layers(model)
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
    return model, {"sparsity": zeros / max(total, 1), "pruned": sorted(layers),
                   "kept_float": float_parameters(model, set(layers))}
