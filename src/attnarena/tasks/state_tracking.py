"""State tracking: the running product of a sequence of group elements (the "word problem").

Tasks from the state-tracking literature that separate recurrences by what their state
transitions can express: parity (the group Z2), modular addition (Z5), and composition of
permutations of S3 and S5. Diagonal recurrences with transitions in [0, 1] cannot solve
parity at all lengths (Sarrof et al. 2024; Grazzi et al. 2025, "Unlocking State-Tracking in
Linear RNNs Through Negative Eigenvalues"), and no constant-depth diagonal model tracks the
non-solvable S5 (Merrill et al. 2024, "The Illusion of State in State-Space Models");
products of Householder-like transitions with eigenvalues down to -1 can (Grazzi et al.
2025; Siems et al. 2025, "DeltaProduct").

Each example is a sequence of uniformly drawn elements x_1 ... x_L (token ids are element
indices); the target at position t is the element x_1 x_2 ... x_t, scored at every
position. Models train at ``length``; after training every length in ``test_lengths`` is
evaluated too, and the run records accuracy per length (length generalization).
"""
from __future__ import annotations

import abc
import functools
import itertools
from dataclasses import dataclass, replace

import torch

from attnarena._validate import check_int
from attnarena.tasks.base import check_split
from attnarena.tasks.kinds import LMTask
from attnarena.tasks.registry import register_task


def _presets(cpu_steps: int) -> dict:
    return {
        # At the scale of the state-tracking papers' word problems (Merrill et al. 2024;
        # Grazzi et al. 2025; Siems et al. 2025): train at 128, test to 4x longer (their
        # exact lengths and training budgets differ from paper to paper); no position
        # encoding, so that longer sequences hold nothing unseen but their length.
        "paper": {"task": {"length": 128, "test_lengths": [256, 512]},
                  "model": {"dim": 128, "depth": 1, "heads": 4, "position": "none"},
                  "train": {"steps": 20_000, "batch": 128, "lr": 1e-3, "warmup": 500,
                            "schedule": "cosine", "weight_decay": 0.1, "eval_every": 1000,
                            "eval_examples": 1024}},
        # CPU: train at 16, test at 32 and 64 (4x).
        "cpu": {"task": {"length": 16, "test_lengths": [32, 64]},
                "model": {"dim": 64, "depth": 1, "heads": 4, "position": "none"},
                "train": {"steps": cpu_steps, "batch": 64, "lr": 3e-3, "warmup": 50,
                          "schedule": "cosine", "weight_decay": 0.0, "eval_every": 250,
                          "eval_examples": 512}},
    }


class StateTracking(LMTask):
    """Base of the word problems: a subclass gives its group's ``table`` (``table[a, b]`` is
    the index of a followed by b)."""

    length: int = 16
    test_lengths: tuple = ()

    def __post_init__(self):
        check_int(self.length, f"{self.name} length")
        lengths = self.test_lengths
        if not isinstance(lengths, (list, tuple)):
            raise ValueError(f"{self.name} test_lengths must be a list of ints, got {lengths!r}")
        for value in lengths:
            check_int(value, f"{self.name} test_lengths entry")
        object.__setattr__(self, "test_lengths", tuple(sorted(set(lengths) - {self.length})))

    @abc.abstractmethod
    def table(self) -> torch.Tensor:
        """(n, n) long tensor: index of the product of elements a then b."""

    @property
    def elements(self) -> int:
        return self.table().shape[0]

    @property
    def vocab_size(self) -> int:
        return self.elements

    @property
    def sequence_length(self) -> int:
        return max((self.length, *self.test_lengths))

    def generalization_lengths(self) -> tuple:
        return (self.length, *self.test_lengths) if self.test_lengths else ()

    def at_length(self, length: int) -> "StateTracking":
        return self if length == self.length else replace(self, length=length, test_lengths=())

    def batch(self, size, generator, split="train"):
        check_split(split)
        table = self.table()
        inputs = torch.randint(0, self.elements, (size, self.length), generator=generator)
        targets = torch.empty_like(inputs)
        state = torch.zeros(size, dtype=torch.long)  # index 0 is the identity
        for t in range(self.length):
            state = table[state, inputs[:, t]]
            targets[:, t] = state
        return {"inputs": inputs, "targets": targets,
                "weights": torch.ones(size, self.length)}


@functools.lru_cache(maxsize=None)
def _cyclic(n: int) -> torch.Tensor:
    index = torch.arange(n, device="cpu")  # cached: never on the device of a caller's context
    return (index[:, None] + index[None, :]) % n


@functools.lru_cache(maxsize=None)
def _symmetric(n: int) -> torch.Tensor:
    """S_n's permutations (identity first, lexicographic order); a then b maps i to
    b[a[i]]."""
    perms = list(itertools.permutations(range(n)))
    where = {p: i for i, p in enumerate(perms)}
    return torch.tensor([[where[tuple(b[a[i]] for i in range(n))] for b in perms]
                         for a in perms], device="cpu")


@register_task
@dataclass(frozen=True)
class Parity(StateTracking):
    """Running parity of a bit string (the group Z2)."""

    length: int = 16
    test_lengths: tuple = ()

    name = "parity"
    presets = _presets(1000)

    def table(self):
        return _cyclic(2)


@register_task
@dataclass(frozen=True)
class ModularAddition(StateTracking):
    """Running sum modulo ``modulus`` (default 5) of digits in [0, modulus)."""

    length: int = 16
    test_lengths: tuple = ()
    modulus: int = 5

    name = "mod_addition"
    presets = _presets(1000)

    def __post_init__(self):
        super().__post_init__()
        check_int(self.modulus, "mod_addition modulus", minimum=2)

    def table(self):
        return _cyclic(self.modulus)


@register_task
@dataclass(frozen=True)
class WordS3(StateTracking):
    """Composition of permutations of three items (S3, 6 elements, solvable)."""

    length: int = 16
    test_lengths: tuple = ()

    name = "word_s3"
    presets = _presets(1500)

    def table(self):
        return _symmetric(3)


@register_task
@dataclass(frozen=True)
class WordS5(StateTracking):
    """Composition of permutations of five items (S5, 120 elements, not solvable)."""

    length: int = 16
    test_lengths: tuple = ()

    name = "word_s5"
    presets = _presets(1500)

    def table(self):
        return _symmetric(5)
