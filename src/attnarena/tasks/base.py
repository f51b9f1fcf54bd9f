"""The task interface (``Task``); the four kinds of task are in ``kinds``, their registry in
``registry`` and helpers for reading and batching examples in ``io``.

A task makes batches (dicts of tensors), builds the model it needs around a mixer, and
scores a model on a batch. Four kinds share the training loop:

- ``LMTask``: token ids ``inputs`` (B, L), next-token ``targets`` (B, L) and ``weights``
  (B, L) saying which predictions count; a causal language model; accuracy over weighted
  positions.
- ``ClassificationTask``: ``inputs`` (B, L) ids with a ``mask`` (B, L) of real tokens, and
  ``labels`` (B,); an encoder classifier; accuracy.
- ``MatchingTask``: two sequences (``inputs``/``mask`` and ``inputs2``/``mask2``) and
  ``labels``; a dual encoder; accuracy.
- ``RegressionTask``: real vectors ``inputs`` (B, L, D), ``targets`` and ``weights`` (B, L);
  a sequence regressor; mean squared error (lower is better).

Tasks whose examples come from a fixed dataset (read from a directory or generated once
from a seed) derive from ``DatasetTask``: training batches draw examples of the train split
at random, evaluation walks the validation or test split in order. Presets hold the
published ("paper") and CPU-sized ("cpu") task, model and training settings.
"""
from __future__ import annotations

import abc

import torch

from attnarena.stack import stack_patterns

SPLITS = ("train", "val", "test")


class Task(abc.ABC):
    """Base class. Subclasses set ``name``, ``presets`` and implement the rest."""

    name: str = ""
    presets: dict = {}
    metric: str = "accuracy"
    higher_is_better: bool = True
    reads_data: bool = False  # True when the task takes a ``data_dir`` option
    needs_data: bool = False  # True when it cannot run without one
    needs_causal: bool = False  # True when the model is causal (every mixer must be)
    min_eval_examples: int = 1  # DatasetTask: 0, meaning whole splits
    # model settings ``build_model`` takes
    model_keys: tuple = ("dim", "depth", "heads", "mlp_dim", "position", "dropout",
                         "mixer_dim", "norm")

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids (0 for tasks over real vectors)."""

    @property
    @abc.abstractmethod
    def sequence_length(self) -> int:
        """Longest input a model sees."""

    @abc.abstractmethod
    def batch(self, size: int, generator: torch.Generator, split: str = "train") -> dict:
        """``size`` random examples of ``split`` as a dict of tensors."""

    @abc.abstractmethod
    def build_model(self, mixer: str, mixer_options: dict, model: dict) -> torch.nn.Module:
        """The backbone and head this task needs, with ``model`` settings (dim, depth,
        heads, mlp_dim, position, dropout, pooling, mixer_dim)."""

    @abc.abstractmethod
    def score(self, model, batch: dict, stats: bool = True):
        """(mean loss, {"loss": sum, "total": sum of the metric, "count": n}); the dict is
        None when ``stats`` is False (training steps need only the loss)."""

    @classmethod
    def takes(cls, mixer: str) -> bool:
        """Whether the task's model can be built around ``mixer``."""
        return not cls.needs_causal or "causal" in stack_patterns(mixer)

    def baselines(self, examples: int, seed: int) -> dict | None:
        """Reference scores computed without a model on the test examples of ``seed``
        (None when the task has none)."""
        return None

    def eval_batches(self, split: str, examples: int, seed: int, batch_size: int = 256):
        """Batches of a fixed evaluation set: ``examples`` examples drawn with ``seed``."""
        check_split(split)
        generator = torch.Generator().manual_seed(seed)
        remaining = examples
        while remaining > 0:
            size = min(batch_size, remaining)
            yield self.batch(size, generator, split)
            remaining -= size

    @torch.no_grad()
    def evaluate(self, model, examples: int, seed: int, device, split: str = "val") -> dict:
        """Loss and the task's metric of ``model`` over a fixed evaluation set of ``split``:
        {"loss", "metric", "count"}."""
        was_training = model.training
        model.eval()
        totals: dict = {}
        for batch in self.eval_batches(split, examples, seed):
            _, stats = self.score(model, {k: v.to(device) for k, v in batch.items()})
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value
        model.train(was_training)
        count = max(totals.get("count", 0.0), 1.0)
        return {"loss": totals.get("loss", 0.0) / count, "metric": self.value(totals),
                "count": totals.get("count", 0.0)}

    def generalization_lengths(self) -> tuple:
        """Lengths a trained model is tested at one by one, the training length first
        (``at_length`` gives the task at each); none by default."""
        return ()

    def at_length(self, length: int) -> "Task":
        """The same task with sequences of ``length`` (tasks with generalization lengths);
        the task itself at its training length."""
        raise ValueError(f"task {self.name!r} is tested at its training length only")

    def check_data(self) -> None:
        """Raises ValueError when the task's data directory is missing or malformed."""

    def prepare(self) -> None:
        """Reads or generates whatever the task holds in memory (before training starts,
        so that it does not count as training time)."""

    def value(self, totals: dict) -> float:
        """The task's metric from summed ``score`` statistics."""
        return totals.get("total", 0.0) / max(totals.get("count", 0.0), 1.0)


def check_split(split):
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
