"""Checkpoints that survive a kill at any instant.

Each checkpoint is a directory ``step-NNNNNNNN`` holding the weights (safetensors), the best
weights so far, and the optimizer state, step, history and random state. It is written
under a temporary name and renamed into place, an atomic step on POSIX file systems, so a
reader sees either a whole checkpoint or none; older checkpoints are removed after.
"""
from __future__ import annotations

import math
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


def newest_step(directory) -> int | None:
    """The step of the newest complete checkpoint in ``directory``, or None."""
    found = _complete(Path(directory)) if Path(directory).is_dir() else []
    return int(found[-1].name.split("-")[1]) if found else None


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


STATE_KEYS = ("step", "history", "best_score", "train_seconds", "tokens", "optimizer", "rng")


def check_weights(weights: dict, expected: dict, where: str, hint: str = "") -> None:
    """Refuse ``weights`` unless they hold exactly the tensors of ``expected`` (a model's
    ``state_dict()``), with its shapes and dtypes, and every value finite.

    Raises:
        CheckpointError: one line naming ``where``, what was expected and what was found.
    """
    def refuse(problem):
        raise CheckpointError(f"{where}: {problem}{hint}")

    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    for names, what in ((missing, "lacks"), (unexpected, "has tensors the model does not, ")):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            refuse(f"the weights {what} {', '.join(names[:3])}{more}")
    for name, want in expected.items():
        got = weights[name]
        if tuple(got.shape) != tuple(want.shape):
            refuse(f"{name} has shape {tuple(got.shape)}, the model expects "
                   f"{tuple(want.shape)}")
        if got.dtype != want.dtype:
            refuse(f"{name} is stored as {got.dtype}, the model expects {want.dtype}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            refuse(f"{name} holds NaN or infinite values")


def _check_state(state, steps: int, eval_every: int) -> str | None:
    """What is wrong with a checkpoint's state for a run of ``steps`` steps evaluated every
    ``eval_every`` (checkpoints are written at each evaluation), or None."""
    if not isinstance(state, dict):
        return f"its state is {type(state).__name__}, not a dict"
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        return f"its state lacks {', '.join(missing)}"
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= steps:
        return f"its step is {step!r}, outside the run's 1..{steps}"
    if step % eval_every and step != steps:
        return (f"its step {step} is not one at which the run writes checkpoints (every "
                f"{eval_every} steps, and the last)")
    history = state["history"]
    evaluations = step // eval_every + (1 if step == steps and steps % eval_every else 0)
    if not isinstance(history, list) or len(history) != evaluations \
            or not all(isinstance(h, dict) for h in history) \
            or (history and history[-1].get("step") != step):
        return (f"its history does not match step {step} ({evaluations} evaluations "
                f"expected)")
    for key in ("train_seconds", "best_score"):
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or (key == "train_seconds" and value < 0):
            return f"its {key} is {value!r}"
    return None


def load_checkpoint(directory, *, model=None, steps=None, eval_every=None):
    """(weights, best weights or None, state) of the newest complete checkpoint, or None.

    With ``model`` the weights are checked against its tensors (names, shapes, dtypes,
    finite values); with ``steps`` and ``eval_every`` the state against the run's settings
    (a step the run could have reached and written, a history that matches it).

    Raises:
        CheckpointError: the checkpoint cannot be read or does not fit the run; the message
            names the folder to delete.
    """
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
        loaded = (load_file(str(newest / "model.safetensors")),
                  load_file(str(best)) if best.exists() else None, state)
    except Exception as error:  # torch and safetensors raise many kinds for damaged files
        raise CheckpointError(f"the checkpoint {newest} cannot be read ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'no detail'}); "
                              f"delete that folder to restart the run from its previous "
                              f"checkpoint or from scratch") from None
    hint = (f"; delete {newest} to restart the run from its previous checkpoint or from "
            "scratch")
    if steps is not None:
        problem = _check_state(state, steps, eval_every or steps)
        if problem:
            raise CheckpointError(f"the checkpoint {newest} does not fit the run: {problem}"
                                  f"{hint}")
    if model is not None:
        expected = model.state_dict()
        for weights in loaded[:2]:
            if weights is not None:
                check_weights(weights, expected, f"the checkpoint {newest}", hint)
    return loaded
