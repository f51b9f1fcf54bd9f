"""The four kinds of task (language modelling, classification, matching, regression) and
the base of tasks drawn from a fixed dataset; see ``tasks.base`` for what each batch holds."""
from __future__ import annotations

import abc

import torch
import torch.nn.functional as F

from attnarena.stack import stack_patterns
from attnarena.tasks.base import SPLITS, Task, check_split


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
    settings["causal"] = "self" not in stack_patterns(mixer)
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
