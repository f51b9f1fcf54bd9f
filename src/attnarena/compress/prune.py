"""Pruning: attention heads and MLP neurons by importance, removed structurally (the
matrices shrink, so the model gets smaller and faster), and unstructured magnitude pruning
for comparison. Arena models and BERT-family pretrained encoders alike.

Importance follows Michel et al. 2019 ("Are Sixteen Heads Really Better than One?"): a
gate xi multiplies each head's output (each MLP neuron's activation); its importance is
E|dL/dxi| over calibration batches of the task, at xi = 1. Scores are normalized within
each layer (L2) and the lowest are pruned across the model, one head or neuron always
kept per layer.

A mixer's heads are laid out in its parameters: ``HEAD_LAYOUTS`` says, for each mechanism,
which parameters have a heads-major axis (``(name, axis)``, or ``(name, axis, groups)``
when the axis holds several heads-major blocks side by side). Pruning keeps those slices
of the kept heads and lowers the mixer's head count; depthwise convolutions, group norms
and head norms over the pruned channels shrink with them. ``UNPRUNABLE`` says why the
others are left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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
    **{name: _QKV + _OUT for name in ("local", "bigbird", "longformer", "sparse", "linear",
                                      "performer", "linformer")},
    "softmax": _QKV + _OUT + (("gate.weight", 0), ("gate.bias", 0)),  # gated attention
    "aaren": _QKV + _OUT + (("query", 0),),
    "separable": _QKV + _OUT + (("score.weight", 0), ("score.bias", 0)),
    "latte": _QKV + _OUT,  # q_proj and k_proj rows: each head's latents together
    "xcit": _QKV + _OUT + (("temperature", 0),),
    "transformer_vq": _QKV + _OUT + (("codebook", 0),),
    "routing": _QKV + _OUT + (("centroids", 0),),
    "transnormer": _QKV + _OUT + (("norm_weight", 0),),
    "soft": (("qk_proj.weight", 0), ("qk_proj.bias", 0), ("v_proj.weight", 0),
             ("v_proj.bias", 0)) + _OUT,
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
    "gsa": (("q_proj.weight", 0), ("k_proj.weight", 0), ("v_proj.weight", 0),
            ("a_proj.weight", 0), ("g_proj.weight", 0), ("norm.weight", 0)) + _OUT,
    "ttt_linear": (("q_proj.weight", 0), ("k_proj.weight", 0), ("v_proj.weight", 0),
                   ("lr_proj.weight", 0), ("lr_proj.bias", 0), ("initial_weight", 0),
                   ("norm.weight", 0)) + _OUT,
    "titans": (("q_proj.weight", 0), ("k_proj.weight", 0), ("v_proj.weight", 0),
               ("gate_proj.weight", 0, 3), ("gate_proj.bias", 0, 3), ("W1", 0), ("W2", 0),
               ("norm.weight", 0)) + _OUT,
    "deltanet": (("q_proj.weight", 0), ("k_proj.weight", 0), ("v_proj.weight", 0),
                 ("q_conv.conv.weight", 0), ("q_conv.conv.bias", 0),
                 ("k_conv.conv.weight", 0), ("k_conv.conv.bias", 0),
                 ("v_conv.conv.weight", 0), ("v_conv.conv.bias", 0),
                 ("b_proj.weight", 0), ("b_proj.bias", 0), ("norm.weight", 0)) + _OUT,
}
# Mechanisms whose heads depend on each other: removing one would change the rest.
UNPRUNABLE = {
    "dilated": "its heads' dilation offsets follow their index",
    "mamba2": "its output norm is taken over all heads together",
    "moh": "its router scores every head jointly",
}
HEAD_LAYOUTS["gated_deltanet"] = HEAD_LAYOUTS["deltanet"] + (
    ("A_log", 0), ("dt_bias", 0), ("a_proj.weight", 0), ("g_proj.weight", 0))
# RG-LRU's heads are the blocks of its block-diagonal gates and the channels they gate.
HEAD_LAYOUTS["rglru"] = tuple((f"{p}.{t}", 0) for p in ("in_proj", "gate_proj", "conv.conv",
                                                         "gate_a", "gate_x")
                              for t in ("weight", "bias")) + (("Lambda", 0),) + _OUT
# DeltaProduct's n_h keys, values and betas of a head lie together (head-major); its decay
# and output gate exist only when gated.
HEAD_LAYOUTS["deltaproduct"] = HEAD_LAYOUTS["gated_deltanet"]


@dataclass
class HeadGroup:
    """The heads of one attention layer: ``output`` names the linear layer whose input
    columns are the heads' outputs (head by head); ``prune(kept)`` keeps those heads."""
    name: str
    heads: int
    output: str
    prune: Callable


def _bert_attentions(model) -> list[tuple[str, nn.Module]]:
    """(name, self-attention) of BERT-family layers: query, key and value linear maps and
    ``num_attention_heads``, the output map in the parent's ``output.dense``."""
    found = []
    for name, module in model.named_modules():
        if all(isinstance(getattr(module, a, None), nn.Linear) for a in ("query", "key", "value")) \
                and hasattr(module, "num_attention_heads") and "." in name:
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            if isinstance(getattr(getattr(parent, "output", None), "dense", None), nn.Linear):
                found.append((name, module))
    return found


def prune_bert_heads(attention, output: nn.Linear, kept: list[int]) -> None:
    """Keep only the heads ``kept`` of a BERT-family self-attention, in place."""
    heads, width = attention.num_attention_heads, attention.attention_head_size
    if len(kept) == heads:
        return
    index = torch.cat([h * width + torch.arange(width) for h in sorted(kept)])
    for linear in (attention.query, attention.key, attention.value):
        linear.weight = nn.Parameter(linear.weight.detach()[index])
        linear.bias = nn.Parameter(linear.bias.detach()[index])
        linear.out_features = len(index)
    output.weight = nn.Parameter(output.weight.detach()[:, index])
    output.in_features = len(index)
    attention.num_attention_heads, attention.all_head_size = len(kept), len(index)


def head_groups(model, strict: bool = True) -> list[HeadGroup]:
    """Every attention layer of ``model`` whose heads can be pruned: arena mixers with a
    layout in ``HEAD_LAYOUTS`` and BERT-family self-attention. ``strict``: a clear error
    when there is none, or a mixer with heads has no layout."""
    found, missing = [], set()
    for name, module in model.named_modules():
        if isinstance(module, Mixer) and module.heads > 1:
            if module.info.name in HEAD_LAYOUTS:
                found.append(HeadGroup(name, module.heads, f"{name}.o_proj",
                                       lambda kept, m=module: prune_mixer_heads(m, kept)))
            else:
                missing.add(module.info.name)
    for name, module in _bert_attentions(model):
        if module.num_attention_heads > 1:
            parent = name.rsplit(".", 1)[0]
            output = model.get_submodule(f"{parent}.output.dense")
            found.append(HeadGroup(name, module.num_attention_heads, f"{parent}.output.dense",
                                   lambda kept, m=module, o=output: prune_bert_heads(m, o, kept)))
    if strict and missing:
        why = "; ".join(f"{n}: {UNPRUNABLE[n]}" for n in sorted(missing) if n in UNPRUNABLE)
        raise ValueError(f"head pruning does not know how {', '.join(sorted(missing))} lays out "
                         f"its heads{f' ({why})' if why else ''}; it prunes: "
                         f"{', '.join(sorted(HEAD_LAYOUTS))}")
    if strict and not found:
        raise ValueError("this model has no attention layer with more than one head to prune "
                         "(head pruning needs heads > 1)")
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
        module = mixer
        for part in module_name.split(".") if module_name else ():
            module = getattr(module, part, None)
        tensor = getattr(module, attribute, None)
        if tensor is None:  # an optional part this mixer was built without
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


def head_importance(model, data) -> dict[str, torch.Tensor]:
    """Michel et al.'s importance of every head: {layer name: (heads,) scores}."""
    groups = head_groups(model)
    scores = _gated_importance(model, data, {g.output: g.heads for g in groups})
    return {g.name: scores[g.output] for g in groups}


@register_method("prune_heads", HeadPruneConfig, family="pruning",
                 paper="Michel et al. 2019, Are Sixteen Heads Really Better than One?",
                 restore=lambda m, c, r: _restore_heads(m, r),
                 check=lambda m, c: head_groups(m))
def prune_heads(model, config, data):
    scores = head_importance(model, data)
    kept = _choose(scores, config.fraction)
    _restore_heads(model, {"kept": kept})
    return model, {"kept": kept, "heads_before": sum(len(s) for s in scores.values()),
                   "heads_after": sum(len(k) for k in kept.values()),
                   "importance": {n: s.tolist() for n, s in scores.items()}}


def _restore_heads(model, report):
    groups = {g.name: g for g in head_groups(model, strict=False)}
    for name, indices in report["kept"].items():
        groups[name].prune(indices)
    return model


# -- MLP neurons --------------------------------------------------------------------------

def mlp_units(model) -> dict[str, tuple[nn.Linear, nn.Linear]]:
    """{name: (first, last)} linear pairs of every MLP: arena blocks' ``mlp`` and
    BERT-family layers' ``intermediate.dense`` / ``output.dense``."""
    found = {n: (m.mlp[0], m.mlp[-1]) for n, m in model.named_modules()
             if isinstance(m, Block) and m.mlp is not None}
    for name, module in model.named_modules():
        first = getattr(getattr(module, "intermediate", None), "dense", None)
        last = getattr(getattr(module, "output", None), "dense", None)
        if isinstance(first, nn.Linear) and isinstance(last, nn.Linear):
            found[name] = (first, last)
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
def prune_mlp(model, config, data):
    units = mlp_units(model)
    names = {n: _name_of(model, last) for n, (_, last) in units.items()}
    scores = _gated_importance(model, data, {names[n]: last.in_features
                                             for n, (_, last) in units.items()})
    kept = _choose({n: scores[names[n]] for n in units}, config.fraction)
    before = sum(first.out_features for first, _ in units.values())
    _restore_mlp(model, {"kept": kept})
    return model, {"kept": kept, "neurons_before": before,
                   "neurons_after": sum(len(k) for k in kept.values())}


def _name_of(model, module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def _restore_mlp(model, report):
    units = mlp_units(model)
    for name, indices in report["kept"].items():
        prune_mlp_neurons(*units[name], indices)
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
                   "not_pruned": float_parameters(model, set(layers))}
