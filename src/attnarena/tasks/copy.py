"""The copy task: read a random string, a separator, then reproduce the string.

A tiny probe of whether a causal mixer can retrieve tokens from its context; used by the
default ``attnarena run`` for a short training per mechanism.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnarena.tasks.kinds import LMTask
from attnarena.tasks.registry import register_task


@register_task
@dataclass(frozen=True)
class CopyTask(LMTask):
    """Sequences ``s SEP s`` with s drawn uniformly from ``vocab`` symbols.

    Token ids: 0..vocab-1 symbols, ``vocab`` = separator. The model is scored on the second
    copy: predicting s[i] at the position right before it.
    """

    vocab: int = 16
    length: int = 8

    name = "copy"
    presets = {
        "cpu": {"task": {"vocab": 16, "length": 8},
                "model": {"dim": 64, "depth": 2, "heads": 4, "position": "learned"},
                "train": {"steps": 600, "batch": 32, "lr": 3e-3, "warmup": 60,
                          "schedule": "cosine", "weight_decay": 0.0, "eval_every": 200}},
    }

    @property
    def vocab_size(self) -> int:
        return self.vocab + 1

    @property
    def sequence_length(self) -> int:
        return 2 * self.length + 1

    def batch(self, size: int, generator: torch.Generator | None = None, split: str = "train"):
        """inputs (B, 2n), next-token targets (B, 2n), weights (B, 2n): 1 where the target
        is a token of the copy. Every split is drawn the same way (from other seeds)."""
        s = torch.randint(0, self.vocab, (size, self.length), generator=generator)
        sep = torch.full((size, 1), self.vocab)
        seq = torch.cat([s, sep, s], dim=1)
        inputs, targets = seq[:, :-1], seq[:, 1:]
        weights = torch.zeros_like(targets, dtype=torch.float32)
        weights[:, self.length:] = 1.0
        return {"inputs": inputs, "targets": targets, "weights": weights}
