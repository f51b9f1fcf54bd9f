"""A new mixer that takes over trained attention projections: how linearization puts a
linear-time mechanism where softmax attention was, in the arena's models and in pretrained
ones alike."""
from __future__ import annotations

from torch import nn

from attnarena.registry import create_mixer, mixer_info

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def mixer_taking_over(mechanism: str, projections: dict, *, heads: int, causal: bool,
                      options: dict | None = None):
    """A new ``mechanism`` mixer whose q_proj, k_proj, v_proj, o_proj are the given trained
    ``nn.Linear`` modules (those named in ``projections``), built with the mechanism's
    ``pretrained_options`` and ``options``; returns (mixer, the options it was built with).
    Raises ValueError when the mixer has no square projection to take one over."""
    reference = next(iter(projections.values())).weight
    width = reference.shape[1]
    settings = {**dict(mixer_info(mechanism).pretrained_options or ()), **(options or {})}
    mixer = create_mixer(mechanism, dim=width, heads=heads, causal=causal, **settings)
    for name in PROJECTIONS:
        current = getattr(mixer, name, None)
        if not (isinstance(current, nn.Linear) and current.weight.shape == (width, width)):
            raise ValueError(f"mixer {mechanism!r} with options {settings} has no square "
                             f"{name} of width {width} to take the trained weights")
    for name, module in projections.items():
        setattr(mixer, name, module)
    return mixer.to(device=reference.device, dtype=reference.dtype), settings


def new_parameters(mixer) -> list[nn.Parameter]:
    """A mixer's parameters less the projections it took over (what attention transfer
    trains)."""
    return [p for name, p in mixer.named_parameters()
            if not name.startswith(tuple(f"{n}." for n in PROJECTIONS))]
