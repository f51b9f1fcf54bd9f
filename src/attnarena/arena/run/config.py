"""Run configuration: a task, a preset and a mixer, resolved to every value a run uses."""
from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch

from attnarena._validate import check_int, check_real
from attnarena.arena.store import stable_id
from attnarena.options import DTYPES
from attnarena.stack import canonical, layer_mixers, path_name
from attnarena.tasks import create_task, task_presets

SCHEDULES = ("cosine", "rsqrt", "constant")
TRAIN_DEFAULTS = {"clip": 1.0, "eval_examples": 512}
MODEL_DEFAULTS = {"mlp_dim": None, "dropout": 0.0, "position": "learned"}


class _Unset:
    def __repr__(self):
        return "unset"


UNSET = _Unset()  # a setting not given: the preset's value applies


class _Overrides(Mapping):
    """A typed section of settings that override a task preset's values. Only the fields
    given count: as a mapping it holds exactly those (so ``{**preset, **overrides}``
    merges them)."""

    section: ClassVar[str] = ""

    def __iter__(self):
        return (f.name for f in fields(self) if getattr(self, f.name) is not UNSET)

    def __len__(self):
        return sum(1 for _ in self)

    def __getitem__(self, key):
        if key not in self.keys_valid() or getattr(self, key) is UNSET:
            raise KeyError(key)
        return getattr(self, key)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.items())})"

    @classmethod
    def keys_valid(cls) -> tuple:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls, value):
        """``value`` as this section: an instance, or a mapping of its settings (checked)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"{cls.section} settings must be a table of name = value, got "
                            f"{type(value).__name__}")
        bad = sorted(set(value) - set(cls.keys_valid()))
        if bad:
            raise ValueError(f"unknown {cls.section} setting(s) {bad}; valid: "
                             f"{', '.join(cls.keys_valid())}")
        return cls(**value)


@dataclass(frozen=True, repr=False)
class ModelSettings(_Overrides):
    """Model settings a run overrides (``[run.model]`` in a suite); unset ones come from the
    task's preset."""

    section: ClassVar[str] = "model"
    dim: int = UNSET
    depth: int = UNSET
    heads: int = UNSET
    mlp_dim: int | None = UNSET
    position: str = UNSET
    dropout: float = UNSET
    pooling: str = UNSET
    mixer_dim: int | None = UNSET
    norm: bool = UNSET

    def __post_init__(self):
        _check_model(dict(self))


@dataclass(frozen=True, repr=False)
class TrainSettings(_Overrides):
    """Training settings a run overrides (``[run.train]`` in a suite); unset ones come from
    the task's preset."""

    section: ClassVar[str] = "train"
    steps: int = UNSET
    batch: int = UNSET
    lr: float = UNSET
    warmup: int = UNSET
    schedule: str = UNSET
    weight_decay: float = UNSET
    eval_every: int = UNSET
    clip: float = UNSET
    eval_examples: int = UNSET

    def __post_init__(self):
        _check_train(dict(self))


@dataclass
class RunConfig:
    """One training run. ``model`` and ``train`` override the preset's values; they are
    checked when the config is made (a dict is turned into ``ModelSettings`` /
    ``TrainSettings``), the names of task, mixer and preset when it is resolved."""

    task: str
    mixer: str
    preset: str = "cpu"
    seed: int = 0
    mixer_options: dict = field(default_factory=dict)
    task_options: dict = field(default_factory=dict)
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    device: str = "auto"
    dtype: str = "float32"

    def __post_init__(self):
        self.model = ModelSettings.of(self.model)
        self.train = TrainSettings.of(self.train)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) \
                or not 0 <= self.seed < 1 << 30:
            raise ValueError(f"seed must be an int in [0, 2^30), got {self.seed!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")

    def resolve(self) -> "ResolvedRun":
        """Every value the run uses, validated, with the run's id: computed once, then
        passed down (``as_dict`` is what is written next to results)."""
        presets = task_presets(self.task)
        if self.preset not in presets:
            raise ValueError(f"task {self.task!r} has no preset {self.preset!r}; presets: "
                             f"{', '.join(sorted(presets))}")
        mixer = canonical(self.mixer)  # unknown names, bad patterns and layer options fail
        base = copy.deepcopy(presets[self.preset])
        model = {**MODEL_DEFAULTS, **base["model"], **self.model}
        train = {**TRAIN_DEFAULTS, **base["train"], **self.train}
        task_options = {**base["task"], **self.task_options}
        task = create_task(self.task, **task_options)  # validates the options
        unused = sorted(set(model) - set(task.model_keys))
        if unused:
            raise ValueError(f"task {self.task!r} builds a model that takes no {unused} "
                             f"setting; it takes: {', '.join(task.model_keys)}")
        if not task.takes(mixer):
            raise ValueError(f"mixer {mixer!r} has no causal pattern in every layer, which "
                             f"the {self.task!r} task's model needs")
        task.check_data()  # a missing or malformed data directory fails before training
        _check_train(train)
        _check_model(model)
        # the stack fits the depth, and every model-wide option is taken by some layer
        layer_mixers(self.mixer, model.get("depth", 2), self.mixer_options)
        # option values (a window of "abc") fail now, not after a run is claimed
        _check_buildable(json.dumps([self.task, task_options, mixer, self.mixer_options,
                                     model], sort_keys=True, default=str))
        least = task.min_eval_examples  # 0 for datasets: their whole splits
        if not isinstance(train["eval_examples"], int) or train["eval_examples"] < least:
            raise ValueError(f"train.eval_examples must be an int >= {least} for task "
                             f"{self.task!r}" + (" (0 evaluates whole splits)" if not least
                                                 else "") + f", got {train['eval_examples']!r}")
        return ResolvedRun.of({"task": self.task, "preset": self.preset, "mixer": mixer,
                               "mixer_options": dict(self.mixer_options),
                               "task_options": task_options, "model": model, "train": train,
                               "seed": self.seed, "device": self.device,
                               "dtype": self.dtype})


@dataclass(frozen=True)
class ResolvedRun(Mapping):
    """A run with every value it uses filled in and checked, and its id; frozen. Read it by
    attribute (``run.task``, ``run.train["steps"]``) or as the plain mapping it was resolved
    to (``run["task"]``, ``as_dict()`` for a copy to write or change)."""

    id: str
    task: str
    preset: str
    mixer: str
    mixer_options: dict
    task_options: dict
    model: dict
    train: dict
    seed: int
    device: str
    dtype: str

    @classmethod
    def of(cls, resolved: Mapping) -> "ResolvedRun":
        """The run of a resolved config (as ``as_dict`` gives, or as read from a run's
        config.json)."""
        if isinstance(resolved, ResolvedRun):
            return resolved
        values = copy.deepcopy(dict(resolved))
        values.setdefault("dtype", "float32")
        values.setdefault("device", "auto")
        return cls(id=run_id(values), **values)

    def as_dict(self) -> dict:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)
                if f.name != "id"}

    def __getitem__(self, key):
        if key == "id" or key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return (f.name for f in fields(self) if f.name != "id")

    def __len__(self) -> int:
        return len(fields(self)) - 1


def _check_train(train: dict) -> None:
    """Check the training settings given."""
    for key in ("steps", "batch", "eval_every"):
        if key in train:
            check_int(train[key], f"train.{key}")
    if "warmup" in train:
        check_int(train["warmup"], "train.warmup", minimum=0)
    if "lr" in train:
        check_real(train["lr"], "train.lr", low_open=True)
    if "weight_decay" in train:
        check_real(train["weight_decay"], "train.weight_decay")
    if "clip" in train:
        check_real(train["clip"], "train.clip")  # 0 turns clipping off
    if "schedule" in train and train["schedule"] not in SCHEDULES:
        raise ValueError(f"unknown schedule {train['schedule']!r}; valid: "
                         f"{', '.join(SCHEDULES)}")


def _check_model(model: dict) -> None:
    for key in ("dim", "depth", "heads"):
        if key in model:
            check_int(model[key], f"model.{key}")
    for key, least in (("mlp_dim", 0), ("mixer_dim", 1)):
        if model.get(key) is not None:
            check_int(model[key], f"model.{key}", minimum=least)
    if "dropout" in model:
        check_real(model["dropout"], "model.dropout", high=1.0, high_open=True)
    for key in ("position", "pooling"):
        if key in model and not isinstance(model[key], str):
            raise ValueError(f"model.{key} must be a string, got {model[key]!r}")
    if "norm" in model and not isinstance(model["norm"], bool):
        raise ValueError(f"model.norm must be true or false, got {model['norm']!r}")


@functools.lru_cache(maxsize=1024)
def _check_buildable(key: str) -> None:
    """Build the run's model on the meta device (nothing allocated): every option value
    is checked by the constructor that takes it. A model that the meta device cannot build
    is left to be built for real."""
    task_name, task_options, mixer, mixer_options, model = json.loads(key)
    task = create_task(task_name, **task_options)
    try:
        with torch.device("meta"):
            task.build_model(mixer, mixer_options, model)
    except (ValueError, TypeError):
        raise
    except Exception:  # noqa: BLE001  (an op the meta device lacks)
        return


RESOLVED_TABLES = ("mixer_options", "task_options", "model")  # and train, where written


def check_resolved(resolved, where: str) -> dict:
    """Check a resolved run config read from a file (a run folder's config.json): the keys
    ``RunConfig.resolve`` writes, with the types it writes; returns it.

    Raises:
        ValueError: one line naming ``where`` and the first thing wrong.
    """
    try:
        if not isinstance(resolved, dict):
            raise ValueError(f"expected a run config (a JSON object), got "
                             f"{type(resolved).__name__}")
        # what building the model reads; a distilled student's config holds no more
        missing = [k for k in ("task", "mixer", *RESOLVED_TABLES) if k not in resolved]
        if missing:
            raise ValueError(f"the run config lacks {', '.join(missing)}")
        for key in ("task", "preset", "mixer"):
            if key in resolved and not isinstance(resolved[key], str):
                raise ValueError(f"{key} must be a string, got {resolved[key]!r}")
        for key in (*RESOLVED_TABLES, "train"):
            if key in resolved and not isinstance(resolved[key], dict):
                raise ValueError(f"{key} must be a table, got {resolved[key]!r}")
        if resolved.get("dtype", "float32") not in DTYPES:
            raise ValueError(f"unknown dtype {resolved['dtype']!r}; valid: "
                             f"{', '.join(DTYPES)}")
        _check_model(resolved["model"])
        _check_train(resolved.get("train", {}))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return resolved


def run_id(resolved: dict) -> str:
    """Stable id of a resolved config; the device is not part of what a run computes."""
    key = {k: v for k, v in resolved.items() if k != "device"}
    digest = stable_id(key)
    return f"{resolved['task']}-{path_name(resolved['mixer'])}-s{resolved['seed']}-{digest}"
