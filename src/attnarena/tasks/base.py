"""The task interface and registry.

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
import dataclasses
import difflib
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from attnarena._validate import check_int, check_options, check_real
from attnarena.registry import mixer_info

_TASKS: dict[str, type] = {}
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
        return not cls.needs_causal or "causal" in mixer_info(mixer).patterns

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


def _model_settings(model: dict, keys) -> dict:
    return {k: model[k] for k in keys if k in model and model[k] is not None}


class LMTask(Task):
    """Next-token prediction scored at weighted positions, with a causal LM."""

    needs_causal = True

    def build_model(self, mixer, mixer_options, model):
        from attnarena.models import CausalLM

        return CausalLM(self.vocab_size, mixer=mixer, mixer_options=mixer_options,
                        max_len=self.sequence_length,
                        **_model_settings(model, self.model_keys))

    def score(self, model, batch, stats=True):
        logits = model(batch["inputs"]).float()
        targets, weights = batch["targets"], batch["weights"]
        per_token = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        count = weights.sum()
        loss_sum = (per_token * weights).sum()
        if not stats:
            return loss_sum / count.clamp_min(1.0), None
        correct = ((logits.argmax(-1) == targets).float() * weights).sum()
        return loss_sum / count.clamp_min(1.0), {"loss": float(loss_sum.detach()),
                                                 "total": float(correct),
                                                 "count": float(count)}


def encoder_settings(mixer: str, model: dict) -> dict:
    """EncoderClassifier settings: noncausal when the mixer has a noncausal self pattern,
    otherwise causal (pooling then reads the last position or a causal mean)."""
    settings = _model_settings(model, ClassificationTask.model_keys)
    settings["causal"] = "self" not in mixer_info(mixer).patterns
    return settings


class ClassificationTask(Task):
    """One label per sequence, with an encoder classifier."""

    num_classes: int = 2
    model_keys = Task.model_keys + ("pooling",)

    def build_model(self, mixer, mixer_options, model):
        from attnarena.models import EncoderClassifier

        return EncoderClassifier(self.num_classes, vocab_size=self.vocab_size, mixer=mixer,
                                 mixer_options=mixer_options, max_len=self.sequence_length,
                                 **encoder_settings(mixer, model))

    def logits(self, model, batch):
        return model(batch["inputs"], mask=batch["mask"])

    def score(self, model, batch, stats=True):
        logits = self.logits(model, batch).float()
        labels = batch["labels"]
        loss_sum = F.cross_entropy(logits, labels, reduction="sum")
        n = labels.shape[0]
        if not stats:
            return loss_sum / max(n, 1), None
        correct = (logits.argmax(-1) == labels).sum()
        return loss_sum / max(n, 1), {"loss": float(loss_sum.detach()),
                                      "total": float(correct), "count": float(n)}


class MatchingTask(ClassificationTask):
    """A label per pair of sequences, with a dual encoder (shared weights)."""

    combine: str = "paper"

    def build_model(self, mixer, mixer_options, model):
        from attnarena.models import DualEncoder

        return DualEncoder(self.num_classes, vocab_size=self.vocab_size, mixer=mixer,
                           mixer_options=mixer_options, max_len=self.sequence_length,
                           combine=self.combine, **encoder_settings(mixer, model))

    def logits(self, model, batch):
        return model(batch["inputs"], batch["inputs2"], mask=batch["mask"],
                     mask2=batch["mask2"])


class RegressionTask(Task):
    """Real-valued targets at weighted positions; mean squared error."""

    metric = "mse"
    higher_is_better = False
    needs_causal = True

    @property
    def vocab_size(self) -> int:
        return 0

    def score(self, model, batch, stats=True):
        predictions = model(batch["inputs"]).float()
        weights = batch["weights"]
        squared = (predictions - batch["targets"]) ** 2
        count = weights.sum()
        total = (squared * weights).sum()
        mean = total / count.clamp_min(1.0)
        if not stats:
            return mean, None
        summed = float(total.detach())
        return mean, {"loss": summed, "total": summed, "count": float(count)}


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


class DatasetTask(Task):
    """A task over fixed splits of examples, read from ``data_dir`` or generated. Subclasses
    implement ``load_splits`` (every split's examples, read or generated once) and
    ``collate`` (examples -> batch dict)."""

    reads_data = True
    min_eval_examples = 0

    @abc.abstractmethod
    def load_splits(self) -> dict:
        """{"train": [...], "val": [...], "test": [...]}: every example of each split."""

    @abc.abstractmethod
    def collate(self, examples: list) -> dict:
        """A batch dict from a list of examples."""

    def split(self, split: str) -> list:
        check_split(split)
        splits = self.__dict__.get("_splits")  # cached on the instance, frozen or not
        if splits is None:
            splits = self.load_splits()
            for name in SPLITS:
                if not splits.get(name):
                    raise ValueError(f"task {self.name!r} has no {name} examples")
            self.__dict__["_splits"] = splits
        return splits[split]

    def prepare(self):
        self.split("train")

    def batch(self, size, generator, split="train"):
        examples = self.split(split)
        index = torch.randint(0, len(examples), (size,), generator=generator)
        return self.collate([examples[i] for i in index.tolist()])

    def eval_batches(self, split, examples, seed, batch_size=256):
        """The first ``examples`` examples of the split in order (all when 0 or more than
        the split holds); ``seed`` is unused: the split itself is fixed."""
        data = self.split(split)
        n = len(data) if not examples else min(examples, len(data))
        for start in range(0, n, batch_size):
            yield self.collate(data[start:min(n, start + batch_size)])


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


def register_task(cls):
    if not cls.name or cls.name in _TASKS:
        raise ValueError(f"task name {cls.name!r} is empty or already registered")
    for preset, values in cls.presets.items():
        if "task" not in values or "model" not in values or "train" not in values:
            raise ValueError(f"task {cls.name!r} preset {preset!r} needs task, model and train "
                             "sections")
    _TASKS[cls.name] = cls
    return cls


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def task_class(name):
    if name not in _TASKS:
        close = difflib.get_close_matches(str(name), _TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown task {name!r}{hint}; valid tasks: {', '.join(list_tasks())}")
    return _TASKS[name]


def task_presets(name: str) -> dict:
    return task_class(name).presets


def task_options(name: str) -> dict:
    """The options a task takes, with their defaults (the preset's values override them)."""
    return {f.name: f.default for f in dataclasses.fields(task_class(name)) if f.init}


def create_task(name: str, **options) -> Task:
    """Build a registered task; every option is checked against its declared type."""
    check_options(options, task_options(name), f"task {name!r}")
    cls = task_class(name)
    for field in dataclasses.fields(cls):
        if field.name in options:
            _check_option(name, field, options[field.name])
    return cls(**options)


def _check_option(task: str, field, value) -> None:
    """Range and type checks that follow a task option's declared type: ints are positive
    (seeds may be 0), floats finite, strings strings; ``| None`` admits None."""
    kind = str(field.type)
    if value is None and "None" in kind:
        return
    what = f"task {task!r} option {field.name}"
    if kind.startswith("int"):
        check_int(value, what, minimum=0 if field.name.endswith("seed") else 1)
    elif kind.startswith("float"):
        check_real(value, what, low=-math.inf)
    elif kind.startswith("str") and not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {value!r}")
    elif kind.startswith("bool") and not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, got {value!r}")
