"""Helpers for tasks that read or hold examples: padding, batching, splitting, and finding
a dataset's directory."""
from __future__ import annotations

from pathlib import Path

import torch


def pad_sequences(sequences, pad_id: int = 0, multiple: int = 16, limit: int | None = None):
    """Lists of token ids -> (ids (B, L), mask (B, L)): sequences cut to ``limit``, L the
    longest rounded up to ``multiple`` but never past ``limit``."""
    if limit is not None:
        sequences = [s[:limit] for s in sequences]
    longest = max((len(s) for s in sequences), default=1)
    length = max(multiple, -(-longest // multiple) * multiple)
    if limit is not None:
        length = min(length, limit)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), length, dtype=torch.bool)
    for i, seq in enumerate(sequences):
        ids[i, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[i, :len(seq)] = True
    return ids, mask


def labelled_batch(inputs, labels, mask=None) -> dict:
    """A classification batch: ``inputs`` (B, L) ids, ``labels`` (B,) and the ``mask`` of
    real tokens (all of them when None)."""
    if mask is None:
        mask = torch.ones(inputs.shape, dtype=torch.bool)
    return {"inputs": inputs, "mask": mask, "labels": torch.as_tensor(labels, dtype=torch.long)}


def divide(examples: list, train: int, val: int) -> dict:
    """The first ``train`` examples, the next ``val``, and the rest, as the three splits."""
    return {"train": examples[:train], "val": examples[train:train + val],
            "test": examples[train + val:]}


def data_directory(task: str, data_dir, expected: str, needs=(), inside: str | None = None
                   ) -> Path:
    """``data_dir`` as an existing directory holding every path in ``needs`` (its child
    ``inside`` when it has one: the folder a download unpacks to), or an error saying what
    belongs there."""
    if data_dir is None:
        raise ValueError(f"task {task!r} reads its data from a directory: give data_dir "
                         f"(`--data DIR` on the command line) holding {expected}")
    path = Path(data_dir)
    if not path.is_dir():
        raise ValueError(f"task {task!r}: data directory {str(path)!r} does not exist; "
                         f"expected a directory holding {expected}")
    if inside and (path / inside).is_dir():
        path = path / inside
    missing = [str(n) for n in needs if not (path / n).exists()]
    if missing:
        raise ValueError(f"task {task!r}: {path} lacks {', '.join(missing)}; expected "
                         f"{expected}")
    return path
