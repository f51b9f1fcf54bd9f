"""attnarena: the efficient-Transformer arena.

    import attnarena as aa
    aa.list_mixers()
    m = aa.create_mixer("linear", dim=256, heads=4, causal=True)
"""
from attnarena import mixers, ops  # noqa: F401  (mixers registers every mechanism)
from attnarena._validate import debug_checks
from attnarena.mixers.base import Mixer
from attnarena.registry import (MixerInfo, create_mixer, list_mixers, mixer_info,
                                mixer_options, register_mixer)

__version__ = "0.1.0"


def train(task: str, mixer: str, *, steps: int | None = None, preset: str = "cpu",
          seed: int = 0, mixer_options=None, model=None, train=None, out="results",
          store: bool = True, device: str = "auto", progress: bool = False):
    """Train one run of ``mixer`` on ``task`` at ``preset`` (``steps`` overrides the
    preset's), recorded in ``OUT/arena.sqlite`` unless ``store`` is False, its model saved
    in ``OUT/runs/RUN_ID``. Like ``attnarena train``, it trains each time it is called (a
    run already in the store is trained again and its row replaced; ``attnarena run``
    reuses finished runs). Returns (run id, metrics). See
    ``attnarena.arena.run.runner.train_run``."""
    from pathlib import Path

    from attnarena.arena.run.config import RunConfig
    from attnarena.arena.run.runner import train_run

    overrides = {**(train or {}), **({} if steps is None else {"steps": steps})}
    config = RunConfig(task=task, mixer=mixer, preset=preset, seed=seed,
                       mixer_options=dict(mixer_options or {}), model=dict(model or {}),
                       train=overrides, device=device)
    run, metrics = train_run(config, out=out, progress=progress,
                             store_path=Path(out) / "arena.sqlite" if store else None)
    return run.id, metrics


def speed(names, *, length: int, dim: int = 256, heads: int = 4, batch: int = 1,
          pass_: str = "fwd", causal: bool = True, dtype: str = "float32",
          device: str = "auto", repeats: int = 5) -> list[dict]:
    """Time the mechanisms ``names`` ("name" or "name:key=value") side by side at
    ``length``: one row each with the median time (``median_ms``), its quartiles
    (``q1_ms``, ``q3_ms``), the peak memory (``peak_mem_mb``) and ``status``; ``pass_``
    is "fwd", "fwdbwd" or "decode" (one step after ``length`` tokens). ``attnarena
    speed`` is the same sweep over several lengths, with its plot."""
    from attnarena.arena.measure.environment import resolve_device
    from attnarena._validate import check_int
    from attnarena.arena.measure.speed import SpeedConfig, run_speed

    check_int(dim, "dim")
    check_int(heads, "heads")
    if dim % heads:
        raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
    config = SpeedConfig(mixers=list(names), lengths=[length], pass_=pass_, batch=batch,
                         heads=heads, head_dim=dim // heads, dtype=dtype,
                         device=resolve_device(device), causal=causal, repeats=repeats)
    return run_speed(config, progress=False)["rows"]


def load_run(source, *, results_dir="results", device="cpu"):
    """The trained model of a finished run (a run id or a run folder), in eval mode; see
    ``attnarena.arena.run.artifacts.load_run``."""
    from attnarena.arena.run.artifacts import load_run as load

    return load(source, results_dir=results_dir, device=device)


def run_config(source, *, results_dir="results") -> dict:
    """The resolved config a finished run (a run id or a run folder) was trained with."""
    from attnarena.arena.run.artifacts import run_config as read

    return read(source, results_dir=results_dir)


def load_compressed(folder, *, device="cpu"):
    """A model saved by ``attnarena compress`` (its folder under ``results/compressed``),
    in eval mode; see ``attnarena.arena.deploy.compressed.load_compressed``."""
    from attnarena.arena.deploy.compressed import load_compressed as load

    return load(folder, device=device)


__all__ = ["Mixer", "MixerInfo", "create_mixer", "debug_checks", "list_mixers",
           "load_compressed", "load_run", "mixer_info", "mixer_options", "ops", "register_mixer",
           "run_config", "speed", "train"]
