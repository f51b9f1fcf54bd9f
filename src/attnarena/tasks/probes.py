"""Selective copying and induction heads, the synthetic probes of the Mamba paper (Gu and
Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", Section
4.1): tasks that need content-aware selection rather than fixed-offset recall.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnarena._validate import check_int
from attnarena.tasks.base import check_split
from attnarena.tasks.kinds import LMTask
from attnarena.tasks.registry import register_task


@register_task
@dataclass(frozen=True)
class SelectiveCopy(LMTask):
    """``tokens`` data tokens scattered at random positions of a ``length``-long stretch of
    noise, then ``tokens`` marker tokens; at each marker the model must output the data
    tokens in their order. Token ids: 0 noise, 1 marker, 2..vocab-1 data. Scored on the
    marker positions."""

    vocab: int = 16
    length: int = 4096
    tokens: int = 16

    name = "selective_copy"
    # The paper's setting: a 4096-long stretch, vocabulary 16, 16 tokens to copy, two-layer
    # models of width 64.
    presets = {
        "paper": {"task": {"vocab": 16, "length": 4096, "tokens": 16},
                  "model": {"dim": 64, "depth": 2, "heads": 4, "position": "none"},
                  "train": {"steps": 400_000, "batch": 64, "lr": 1e-4, "warmup": 0,
                            "schedule": "constant", "weight_decay": 0.0, "eval_every": 10_000}},
        # CPU: a 128-long stretch with 8 tokens.
        "cpu": {"task": {"vocab": 16, "length": 128, "tokens": 8},
                "model": {"dim": 64, "depth": 2, "heads": 4, "position": "learned"},
                "train": {"steps": 1500, "batch": 32, "lr": 2e-3, "warmup": 100,
                          "schedule": "cosine", "weight_decay": 0.0, "eval_every": 250}},
    }

    def __post_init__(self):
        if self.vocab < 3:
            raise ValueError(f"selective_copy needs vocab >= 3 (noise, marker, data), got "
                             f"{self.vocab}")
        if not 1 <= self.tokens <= self.length:
            raise ValueError(f"selective_copy needs 1 <= tokens <= length, got tokens "
                             f"{self.tokens} and length {self.length}")

    @property
    def vocab_size(self):
        return self.vocab

    @property
    def sequence_length(self):
        return self.length + self.tokens

    def batch(self, size, generator, split="train"):
        check_split(split)
        L, n = self.length, self.tokens
        inputs = torch.zeros(size, L + n, dtype=torch.long)
        data = torch.randint(2, self.vocab, (size, n), generator=generator)
        for b in range(size):
            where = torch.randperm(L, generator=generator)[:n].sort().values
            inputs[b, where] = data[b]
        inputs[:, L:] = 1
        targets = torch.zeros_like(inputs)
        targets[:, L:] = data
        weights = torch.zeros(size, L + n)
        weights[:, L:] = 1.0
        return {"inputs": inputs, "targets": targets, "weights": weights}


@register_task
@dataclass(frozen=True)
class InductionHeads(LMTask):
    """Random tokens with a trigger token (id 0) placed once, followed by a token t; the
    sequence ends with the trigger again, and the model must output t. Scored at the last
    position. ``test_length`` (default: ``length``) sets the length of the validation and
    test sequences, to measure extrapolation (the paper trains at 256 and tests up to
    2^20)."""

    vocab: int = 16
    length: int = 256
    test_length: int | None = None

    name = "induction_heads"
    presets = {
        # The paper's setting: length 256, vocabulary 16, two-layer models of width 64.
        "paper": {"task": {"vocab": 16, "length": 256},
                  "model": {"dim": 64, "depth": 2, "heads": 4, "position": "none"},
                  "train": {"steps": 8192, "batch": 8, "lr": 1e-3, "warmup": 0,
                            "schedule": "constant", "weight_decay": 0.0, "eval_every": 512}},
        "cpu": {"task": {"vocab": 16, "length": 64},
                "model": {"dim": 64, "depth": 2, "heads": 4, "position": "learned"},
                "train": {"steps": 1000, "batch": 32, "lr": 2e-3, "warmup": 100,
                          "schedule": "cosine", "weight_decay": 0.0, "eval_every": 250}},
    }

    def __post_init__(self):
        if self.vocab < 3:
            raise ValueError(f"induction_heads needs vocab >= 3, got {self.vocab}")
        for key in ("length", "test_length"):
            value = getattr(self, key)
            if value is not None:
                check_int(value, f"induction_heads {key}", minimum=4)

    @property
    def vocab_size(self):
        return self.vocab

    @property
    def sequence_length(self):
        return max(self.length, self.test_length or 0)

    def batch(self, size, generator, split="train"):
        check_split(split)
        L = self.length if split == "train" or self.test_length is None else self.test_length
        inputs = torch.randint(1, self.vocab, (size, L), generator=generator)
        where = torch.randint(0, L - 2, (size,), generator=generator)  # trigger, then t
        rows = torch.arange(size)
        inputs[rows, where] = 0
        inputs[:, -1] = 0
        targets = torch.zeros_like(inputs)
        targets[:, -1] = inputs[rows, where + 1]
        weights = torch.zeros(size, L)
        weights[:, -1] = 1.0
        return {"inputs": inputs, "targets": targets, "weights": weights}
