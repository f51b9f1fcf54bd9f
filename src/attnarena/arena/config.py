"""Run configuration: a task, a preset and a mixer, resolved to every value a run uses."""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field

from attnarena._validate import check_int, check_real
from attnarena.options import DTYPES
from attnarena.registry import check_mixer_options
from attnarena.tasks import create_task, task_presets

SCHEDULES = ("cosine", "rsqrt", "constant")
MODEL_KEYS = ("dim", "depth", "heads", "mlp_dim", "position", "dropout", "pooling",
              "mixer_dim", "norm")
TRAIN_KEYS = ("steps", "batch", "lr", "warmup", "schedule", "weight_decay", "eval_every",
              "clip", "eval_examples")
TRAIN_DEFAULTS = {"clip": 1.0, "eval_examples": 512}
MODEL_DEFAULTS = {"mlp_dim": None, "dropout": 0.0, "position": "learned"}


@dataclass
class RunConfig:
    """One training run. ``model`` and ``train`` override the preset's values."""

    task: str
    mixer: str
    preset: str = "cpu"
    seed: int = 0
    mixer_options: dict = field(default_factory=dict)
    task_options: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "float32"

    def resolve(self) -> dict:
        """Every value the run uses, validated, as plain data (written next to results)."""
        presets = task_presets(self.task)
        if self.preset not in presets:
            raise ValueError(f"task {self.task!r} has no preset {self.preset!r}; presets: "
                             f"{', '.join(sorted(presets))}")
        check_mixer_options(self.mixer, self.mixer_options)  # and an unknown mixer name
        base = copy.deepcopy(presets[self.preset])
        for section, given, allowed in (("model", self.model, MODEL_KEYS),
                                        ("train", self.train, TRAIN_KEYS)):
            bad = sorted(set(given) - set(allowed))
            if bad:
                raise ValueError(f"unknown {section} setting(s) {bad}; valid: "
                                 f"{', '.join(allowed)}")
        model = {**MODEL_DEFAULTS, **base["model"], **self.model}
        train = {**TRAIN_DEFAULTS, **base["train"], **self.train}
        task_options = {**base["task"], **self.task_options}
        task = create_task(self.task, **task_options)  # validates the options
        unused = sorted(set(model) - set(task.model_keys))
        if unused:
            raise ValueError(f"task {self.task!r} builds a model that takes no {unused} "
                             f"setting; it takes: {', '.join(task.model_keys)}")
        if not task.takes(self.mixer):
            raise ValueError(f"mixer {self.mixer!r} has no causal pattern, which the "
                             f"{self.task!r} task's model needs")
        task.check_data()  # a missing or malformed data directory fails before training
        if train["schedule"] not in SCHEDULES:
            raise ValueError(f"unknown schedule {train['schedule']!r}; valid: "
                             f"{', '.join(SCHEDULES)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) \
                or not 0 <= self.seed < 1 << 30:
            raise ValueError(f"seed must be an int in [0, 2^30), got {self.seed!r}")
        _check_train(train)
        _check_model(model)
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        least = task.min_eval_examples  # 0 for datasets: their whole splits
        if not isinstance(train["eval_examples"], int) or train["eval_examples"] < least:
            raise ValueError(f"train.eval_examples must be an int >= {least} for task "
                             f"{self.task!r}" + (" (0 evaluates whole splits)" if not least
                                                 else "") + f", got {train['eval_examples']!r}")
        return {"task": self.task, "preset": self.preset, "mixer": self.mixer,
                "mixer_options": dict(self.mixer_options), "task_options": task_options,
                "model": model, "train": train, "seed": self.seed, "device": self.device,
                "dtype": self.dtype}

    def run_id(self) -> str:
        return run_id(self.resolve())


def _check_train(train: dict) -> None:
    for key in ("steps", "batch", "eval_every"):
        check_int(train[key], f"train.{key}")
    check_int(train["warmup"], "train.warmup", minimum=0)
    check_real(train["lr"], "train.lr", low_open=True)
    check_real(train["weight_decay"], "train.weight_decay")
    check_real(train["clip"], "train.clip")  # 0 turns clipping off


def _check_model(model: dict) -> None:
    for key in ("dim", "depth", "heads"):
        if key in model:
            check_int(model[key], f"model.{key}")
    for key, least in (("mlp_dim", 0), ("mixer_dim", 1)):
        if model.get(key) is not None:
            check_int(model[key], f"model.{key}", minimum=least)
    check_real(model["dropout"], "model.dropout", high=1.0, high_open=True)
    for key in ("position", "pooling"):
        if key in model and not isinstance(model[key], str):
            raise ValueError(f"model.{key} must be a string, got {model[key]!r}")
    if "norm" in model and not isinstance(model["norm"], bool):
        raise ValueError(f"model.norm must be true or false, got {model['norm']!r}")


def run_id(resolved: dict) -> str:
    """Stable id of a resolved config; the device is not part of what a run computes."""
    key = {k: v for k, v in resolved.items() if k != "device"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"{resolved['task']}-{resolved['mixer']}-s{resolved['seed']}-{digest}"


def from_dict(data: dict) -> RunConfig:
    known = set(RunConfig.__dataclass_fields__)
    bad = sorted(set(data) - known)
    if bad:
        raise ValueError(f"unknown run setting(s) {bad}; valid: {', '.join(sorted(known))}")
    return RunConfig(**data)


def to_dict(config: RunConfig) -> dict:
    return asdict(config)
