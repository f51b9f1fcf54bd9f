"""Trained models to take away: a finished run's folder holds its weights and the config
that rebuilds the model.

``RESULTS/runs/<run id>/`` holds ``model.safetensors`` (the best validation checkpoint's
weights, the ones the test metric was measured with), ``config.json`` (the resolved run
config) and ``metrics.json``. ``load_run`` rebuilds the model from that folder;
``export_run`` copies it, with a short description, to a folder of the user's.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from attnarena.arena.run.checkpoint import check_weights, untie
from attnarena.arena.run.config import check_resolved
from attnarena.options import DTYPES

FILES = ("model.safetensors", "config.json", "metrics.json")


def run_folder(results_dir, run_id: str) -> Path:
    return Path(results_dir) / "runs" / run_id


def save_run(folder, model, resolved: dict, metrics: dict) -> Path:
    """Write weights, config and metrics, whole or not at all (a private temporary folder
    renamed into place)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        save_file(untie(model.state_dict()), str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _locate(source, results_dir) -> Path:
    path = Path(source)
    if (path / "config.json").is_file():
        return path
    folder = run_folder(results_dir, str(source))
    if (folder / "config.json").is_file():
        return folder
    raise ValueError(f"no trained run at {source!r}: expected a folder holding config.json and "
                     f"model.safetensors, or a run id with a folder under "
                     f"{Path(results_dir) / 'runs'} (runs trained before weights were kept "
                     "have none; run them again with --rerun)")


def build_run_model(resolved: dict):
    """The untrained model of a resolved run config (its task builds it)."""
    from attnarena.tasks import create_task

    task = create_task(resolved["task"], **resolved["task_options"])
    return task.build_model(resolved["mixer"], resolved["mixer_options"], resolved["model"])


def load_run(source, *, results_dir="results", device="cpu") -> torch.nn.Module:
    """The trained model of a finished run, in eval mode, ready for ``forward`` (and
    ``generate`` for language models).

    Args:
        source: a run id (as in the leaderboard) or a run folder (``results/runs/<id>`` or
            one written by ``attnarena export``).
        results_dir: where ``attnarena run`` / ``train`` wrote their results.
        device: where to put the model.

    Returns:
        The model (``run_config`` gives the run's resolved config).
    """
    return _read_run(source, results_dir, device)[1]


def run_config(source, *, results_dir="results") -> dict:
    """The resolved config a finished run (a run id or a run folder) was trained with."""
    folder = _locate(source, results_dir)
    try:
        resolved = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, RecursionError) as error:
        raise ValueError(f"cannot read the trained run in {folder}: "
                         f"{error or type(error).__name__}") from None
    check_resolved(resolved, str(folder / "config.json"))
    return resolved


def load_run_subject(source, *, results_dir="results", device="cpu"):
    """A finished run's trained model as a subject of compression and linearization
    (``ArenaSubject``), with its task (data prepared) and resolved config."""
    from attnarena.models import ArenaSubject
    from attnarena.tasks import create_task

    resolved, model = _read_run(source, results_dir, device)
    task = create_task(resolved["task"], **resolved["task_options"])
    task.prepare()
    return ArenaSubject(model, task, resolved)


def _read_run(source, results_dir, device):
    folder = _locate(source, results_dir)
    try:
        resolved = json.loads((folder / "config.json").read_text())
        weights = load_file(str(folder / "model.safetensors"))
    except (OSError, ValueError, RecursionError) as error:
        raise ValueError(f"cannot read the trained run in {folder}: "
                         f"{error or type(error).__name__}") from None
    check_resolved(resolved, str(folder / "config.json"))
    model = build_run_model(resolved).to(dtype=DTYPES[resolved.get("dtype", "float32")])
    check_weights(weights, model.state_dict(), str(folder / "model.safetensors"))
    model.load_state_dict(weights)
    return resolved, model.to(device).eval()


def export_run(source, out_dir, *, results_dir="results") -> list[Path]:
    """Copy a run's weights, config and metrics to ``out_dir`` with a README saying how to
    load them; returns the written paths."""
    folder = _locate(source, results_dir)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; name a folder")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in FILES:
        if (folder / name).exists():
            shutil.copyfile(folder / name, out / name)
            written.append(out / name)
    resolved = json.loads((folder / "config.json").read_text())
    readme = out / "README.md"
    readme.write_text(
        f"# {resolved['task']} / {resolved['mixer']} (seed {resolved['seed']})\n\n"
        "Weights of a model trained by attnarena: `model.safetensors` (safetensors, float "
        "tensors by parameter name), the resolved run config `config.json` (task, preset, "
        "mixer and its options, model and training settings) and `metrics.json`.\n\n"
        "```python\nimport attnarena as aa\n"
        f"model = aa.load_run({str(out)!r})   # eval mode, ready for forward\n```\n\n"
        "Without attnarena, `safetensors.torch.load_file('model.safetensors')` gives the "
        "tensors; `config.json` says which architecture they belong to.\n")
    written.append(readme)
    return written
