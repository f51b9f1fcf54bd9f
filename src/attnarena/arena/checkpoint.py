"""Checkpoints that survive a kill at any instant.

Each checkpoint is a directory ``step-NNNNNNNN`` holding the weights (safetensors), the best
weights so far, and the optimizer state, step, history and random state. It is written
under a temporary name and renamed into place, an atomic step on POSIX file systems, so a
reader sees either a whole checkpoint or none; older checkpoints are removed after.
"""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """A checkpoint that exists but cannot be read."""


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def untie(weights: dict) -> dict:
    """safetensors refuses shared storage (tied embeddings): store independent copies."""
    seen, out = set(), {}
    for name, tensor in weights.items():
        tensor = tensor.detach().contiguous().cpu()
        out[name] = tensor.clone() if tensor.data_ptr() in seen else tensor
        seen.add(tensor.data_ptr())
    return out


def _complete(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("step-*")
                  if p.is_dir() and "." not in p.name)  # temporary folders have a suffix


def save_checkpoint(directory, model, best_weights, state: dict) -> None:
    """Write one complete checkpoint for ``state['step']``, then drop older ones."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{state['step']:08d}"
    # A name private to this process: another process never removes what this one writes.
    tmp = directory / f"{final.name}.{socket.gethostname()}-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(untie(model.state_dict()), str(tmp / "model.safetensors"))
    if best_weights is not None:
        save_file(untie(best_weights), str(tmp / "best.safetensors"))
    torch.save(state, tmp / "state.pt")
    for path in tmp.iterdir():
        _fsync(path)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for older in _complete(directory):
        if older != final:
            shutil.rmtree(older, ignore_errors=True)


def load_checkpoint(directory):
    """(weights, best weights or None, state) of the newest complete checkpoint, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    complete = _complete(directory)
    if not complete:
        return None
    newest = complete[-1]
    best = newest / "best.safetensors"
    try:
        # weights_only: a planted state.pt must not run code (it admits tensors and plain
        # containers, which is all a checkpoint holds).
        state = torch.load(newest / "state.pt", weights_only=True)
        return (load_file(str(newest / "model.safetensors")),
                load_file(str(best)) if best.exists() else None, state)
    except Exception as error:  # torch and safetensors raise many kinds for damaged files
        raise CheckpointError(f"the checkpoint {newest} cannot be read ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'no detail'}); "
                              f"delete that folder to restart the run from its previous "
                              f"checkpoint or from scratch") from None
