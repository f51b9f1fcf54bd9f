"""``attnarena data``: a task's data written to disk in its on-disk format.

Generated datasets (ListOps, Pathfinder) are written in LRA's release formats. Text,
Retrieval and Image cannot be generated: their data comes from the original downloads,
and ``synthetic=True`` writes a small stand-in in the same layout to try the pipeline.
Tasks that draw fresh examples for every batch (copy, mqar, selective_copy,
induction_heads, icl_regression) write ``train.npz``, ``val.npz`` and ``test.npz`` holding
``examples`` examples each, exactly the tensors a batch holds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attnarena.seeds import batch_seed, eval_seed
from attnarena.tasks.kinds import DatasetTask
from attnarena.tasks.registry import create_task, task_presets

SYNTHETIC = {"text": "write_synthetic_imdb", "retrieval": "write_synthetic_aan",
             "image": "write_synthetic_cifar"}
DOWNLOADS = {"text": "IMDB's aclImdb folder (ai.stanford.edu/~amaas/data/sentiment)",
             "retrieval": "LRA's release (lra_release/tsv_data/new_aan_pairs.*.tsv)",
             "image": "CIFAR-10's python version (cifar-10-batches-py)"}


def write_task_data(name: str, out_dir, preset: str | None = None,
                    options: dict | None = None, synthetic: bool = False,
                    examples: int = 1000) -> list[Path]:
    """Write task ``name``'s data under ``out_dir`` with the task settings of ``preset``
    (default "cpu", the preset ``attnarena train`` reads by default) and ``options`` on top;
    returns the paths written."""
    presets = task_presets(name)
    if preset is None:
        preset = "cpu"
    if preset not in presets:
        raise ValueError(f"task {name!r} has no preset {preset!r}; presets: "
                         f"{', '.join(sorted(presets))}")
    task = create_task(name, **{**presets[preset]["task"], **(options or {})})
    out = Path(out_dir)
    if name in SYNTHETIC:
        if not synthetic:
            raise ValueError(f"task {name!r} reads real data that cannot be generated: get "
                             f"{DOWNLOADS[name]} and pass its folder with --data; --synthetic "
                             "writes a small made-up stand-in in the same layout")
        from attnarena.tasks import image, text

        module = image if name == "image" else text
        written = getattr(module, SYNTHETIC[name])(out)
        return written if isinstance(written, list) else [written]
    if synthetic:
        raise ValueError(f"--synthetic is for tasks whose data cannot be generated "
                         f"({', '.join(SYNTHETIC)}); {name!r} generates its own")
    if hasattr(task, "write_data"):
        return task.write_data(out)
    if isinstance(task, DatasetTask):
        raise ValueError(f"task {name!r} has no on-disk writer")
    if examples < 1:
        raise ValueError(f"examples must be >= 1, got {examples}")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split in ("train", "val", "test"):
        seed = batch_seed(0, 0) if split == "train" else eval_seed(0, split)
        parts = list(task.eval_batches(split, examples, seed))
        arrays = {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}
        paths.append(out / f"{split}.npz")
        np.savez_compressed(paths[-1], **arrays)
    return paths
