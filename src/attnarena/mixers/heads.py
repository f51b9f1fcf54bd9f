"""How each mixer lays out its heads in its parameters, and pruning heads by that layout.

``HEAD_LAYOUTS`` says, for each mechanism, which parameters have a heads-major axis
(``(name, axis)``, or ``(name, axis, groups)`` when the axis holds several heads-major
blocks side by side). Pruning keeps those slices of the kept heads and lowers the mixer's
head count; depthwise convolutions, group norms and head norms over the pruned channels
shrink with them. ``UNPRUNABLE`` says why the others are left out.
"""
from __future__ import annotations

import torch
from torch import nn

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
                   ("norm.weight", 0)) + _OUT,  # inner="linear"
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



def why_unprunable(mixer: Mixer) -> str:
    """Why a mixer's heads cannot be pruned ("" when they can). A mixer whose options
    decide it says so itself (``unprunable_reason``)."""
    name = mixer.info.name
    if name in HEAD_LAYOUTS:
        return getattr(mixer, "unprunable_reason", "")
    return UNPRUNABLE.get(name, "its head layout is not described (HEAD_LAYOUTS)")


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
