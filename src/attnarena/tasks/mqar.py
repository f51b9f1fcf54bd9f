"""Multi-query associative recall (Arora et al. 2023, "Zoology: Measuring and Improving
Recall in Efficient Language Models")."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnarena._validate import check_int
from attnarena.tasks.base import check_split
from attnarena.tasks.kinds import LMTask
from attnarena.tasks.registry import register_task


@register_task
@dataclass(frozen=True)
class MQAR(LMTask):
    """Key-value pairs k1 v1 k2 v2 ... (distinct keys from [1, V/2), values from [V/2, V)),
    then every key queried once at an even slot of the remaining space, the slot index
    drawn without replacement with p(i) ~ a i^(a - 1), a = 0.01, so queries cluster near
    the pairs. The value follows its query; the model is scored on predicting it. Filler
    positions hold random tokens.

    ``train_examples`` fixes the training set (Zoology's 100k), drawn once from
    ``data_seed``, and training batches sample it; without it every batch is fresh.
    Validation and test examples are always fresh draws from their own seeds.
    """

    vocab: int = 8192
    length: int = 64
    pairs: int = 4
    power: float = 0.01
    train_examples: int | None = None
    data_seed: int = 0

    name = "mqar"
    # Zoology's Figure 2: vocab 8192, (length, pairs) in {(64,4), (128,8), (256,16),
    # (512,64)}, 2 layers, 1 head, no MLP, learned positions, widths 64-512, 100k train
    # examples, best of 4 learning rates in logspace(-4, -2).
    presets = {
        "paper": {"task": {"vocab": 8192, "length": 256, "pairs": 16,
                           "train_examples": 100_000},
                  "model": {"dim": 128, "depth": 2, "heads": 1, "mlp_dim": 0,
                            "position": "learned"},
                  "train": {"steps": 6250, "batch": 64, "lr": 1e-3, "warmup": 300,
                            "schedule": "cosine", "weight_decay": 0.1, "eval_every": 500,
                            "eval_examples": 3000}},
        "cpu": {"task": {"vocab": 64, "length": 32, "pairs": 4},
                "model": {"dim": 64, "depth": 2, "heads": 1, "mlp_dim": 0,
                          "position": "learned"},
                "train": {"steps": 1500, "batch": 64, "lr": 3e-3, "warmup": 50,
                          "schedule": "cosine", "weight_decay": 0.0, "eval_every": 250}},
    }

    def __post_init__(self):
        if self.train_examples is not None:
            check_int(self.train_examples, "mqar train_examples")
        if self.vocab < 4 or self.pairs < 1:
            raise ValueError("mqar needs vocab >= 4 and pairs >= 1")
        if self.pairs > self.vocab // 2 - 1:
            raise ValueError(f"{self.pairs} distinct keys do not fit in [1, {self.vocab // 2})")
        if 4 * self.pairs > self.length:
            raise ValueError(f"length {self.length} too short for {self.pairs} pairs and "
                             "their queries (needs 4 * pairs)")

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def sequence_length(self) -> int:
        return self.length

    def batch(self, size, generator, split="train"):
        check_split(split)
        if split == "train" and self.train_examples:
            index = torch.randint(0, self.train_examples, (size,), generator=generator)
            return {k: v[index] for k, v in self.fixed_set().items()}
        return self._draw(size, generator)

    def prepare(self):
        if self.train_examples:
            self.fixed_set()

    def fixed_set(self) -> dict:
        """The fixed training set, drawn once from ``data_seed`` and kept."""
        if "_fixed" not in self.__dict__:  # cached on the frozen instance
            generator = torch.Generator().manual_seed(self.data_seed)
            self.__dict__["_fixed"] = self._draw(self.train_examples, generator)
        return self.__dict__["_fixed"]

    def _draw(self, size, generator):
        V, L, P = self.vocab, self.length, self.pairs
        half = V // 2
        seq = torch.randint(0, V, (size, L + 1), generator=generator)
        weights = torch.zeros(size, L)
        slots = (L + 1 - 2 * P) // 2  # even positions left after the pairs
        i = torch.arange(1, slots + 1, dtype=torch.float64)
        p = self.power * i ** (self.power - 1)
        for b in range(size):
            keys = torch.randperm(half - 1, generator=generator)[:P] + 1
            values = torch.randperm(V - half, generator=generator)[:P] + half
            seq[b, 0:2 * P:2], seq[b, 1:2 * P:2] = keys, values
            chosen = torch.multinomial(p, P, replacement=False, generator=generator)
            where = 2 * P + 2 * chosen
            seq[b, where], seq[b, where + 1] = keys, values
            weights[b, where] = 1.0
        return {"inputs": seq[:, :-1], "targets": seq[:, 1:], "weights": weights}
