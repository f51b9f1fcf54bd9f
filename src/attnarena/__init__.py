"""attnarena: the efficient-Transformer arena.

    import attnarena as aa
    aa.list_mixers()
    m = aa.create_mixer("linear", dim=256, heads=4, causal=True)
"""
from attnarena import mixers, ops  # noqa: F401  (mixers registers every mechanism)
from attnarena.mixers.base import Mixer
from attnarena.registry import (MixerInfo, create_mixer, list_mixers, mixer_info,
                                mixer_options, register_mixer)

__version__ = "0.1.0"

__all__ = ["Mixer", "MixerInfo", "create_mixer", "list_mixers", "mixer_info", "mixer_options",
           "ops", "register_mixer"]
