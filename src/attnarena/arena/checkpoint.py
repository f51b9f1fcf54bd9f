"""Checkpoints that survive a kill at any instant: weights in safetensors, optimizer state,
step, history and random states beside them, each file written to a temporary name and
renamed into place (an atomic step on POSIX file systems)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(directory, model, best_weights, state: dict) -> None:
    """Write weights (and the best weights so far), then the state that points at them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic(directory / "model.safetensors", lambda p: save_file(_untie(weights), str(p)))
    if best_weights is not None:
        _atomic(directory / "best.safetensors", lambda p: save_file(_untie(best_weights), str(p)))
    _atomic(directory / "state.pt", lambda p: torch.save(state, p))


def _untie(weights: dict) -> dict:
    """safetensors refuses shared storage (tied embeddings): store independent copies."""
    seen, out = set(), {}
    for name, tensor in weights.items():
        ptr = tensor.data_ptr()
        out[name] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out


def load_checkpoint(directory):
    """(weights, best weights or None, state) or None when there is no complete checkpoint."""
    directory = Path(directory)
    if not (directory / "state.pt").exists() or not (directory / "model.safetensors").exists():
        return None
    state = torch.load(directory / "state.pt", weights_only=False)
    best = directory / "best.safetensors"
    return (load_file(str(directory / "model.safetensors")),
            load_file(str(best)) if best.exists() else None, state)
