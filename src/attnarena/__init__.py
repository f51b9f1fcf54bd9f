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


def load_run(source, *, results_dir="results", device="cpu"):
    """The trained model of a finished run (a run id or a run folder), in eval mode; see
    ``attnarena.arena.artifacts.load_run``."""
    from attnarena.arena.artifacts import load_run as load

    return load(source, results_dir=results_dir, device=device)


def load_compressed(folder, *, device="cpu"):
    """A model saved by ``attnarena compress`` (its folder under ``results/compressed``),
    in eval mode; see ``attnarena.arena.compressed.load_compressed``."""
    from attnarena.arena.compressed import load_compressed as load

    return load(folder, device=device)


__all__ = ["Mixer", "MixerInfo", "create_mixer", "list_mixers", "load_compressed", "load_run",
           "mixer_info", "mixer_options", "ops", "register_mixer"]
