"""Seeds of training batches and evaluation sets, shared by the training loop and the data
writer so that ``attnarena data`` writes exactly the examples a run sees.

torch's CPU generator keeps only the low 32 bits of a seed. Training batches use seeds in
[0, 2^31); validation and test sets use 2^31 + 2 * seed and 2^31 + 2 * seed + 1, so no
evaluation set is a training batch and validation differs from test.
"""
from __future__ import annotations


def batch_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (1 << 31)


def eval_seed(seed: int, split: str) -> int:
    return (1 << 31) + 2 * seed + (1 if split == "test" else 0)
