"""Compression recipes as plain data: each method is a config dataclass (validated in
``__post_init__``) registered with the function that applies it, in the shape of torchao's
``quantize_(model, config)``. A recipe is a list of steps applied in order (prune, then
distill, then quantize); ``apply_recipe`` returns what each step did, and ``restore_recipe``
rebuilds the same structure on a fresh model so that saved weights load into it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass
class CompressData:
    """What data-driven methods see of the task.

    ``calibration``: a few batches (dicts of tensors on the model's device);
    ``loss(model, batch)``: the task's loss; ``train_batch(step)``: a fresh training batch;
    ``teacher``: the uncompressed model (distillation); ``build(mixer, options, model)``:
    a new untrained model for this task (a student of another mechanism);
    ``importance_loss``: what head and neuron importance differentiate (default ``loss``;
    a model whose loss is its distance to itself needs another, as that is zero).
    """

    calibration: list
    loss: Callable
    importance_loss: Callable | None = None
    train_batch: Callable | None = None
    teacher: nn.Module | None = None
    build: Callable | None = None
    seed: int = 0
    log: Callable | None = None  # progress lines of long steps (distillation)


@dataclass
class Method:
    name: str
    config: type
    apply: Callable        # (model, config, data) -> (model, report dict)
    restore: Callable      # (model, config, report) -> model with the compressed structure
    family: str
    paper: str
    check: Callable        # (model, config) -> None; raises when the method cannot apply


METHODS: dict[str, Method] = {}


def register_method(name: str, config: type, *, family: str, paper: str,
                    restore: Callable | None = None, check: Callable | None = None):
    """Register ``apply`` under ``name``; ``restore`` rebuilds the structure for loading
    (default: the structure is unchanged); ``check`` refuses a model the method cannot
    take before any work is done."""
    def wrap(apply):
        if name in METHODS:
            raise ValueError(f"compression method {name!r} is already registered")
        METHODS[name] = Method(name, config, apply, restore or (lambda model, c, r: model),
                               family, paper, check or (lambda model, c: None))
        return apply
    return wrap


def list_methods() -> list[str]:
    return sorted(METHODS)


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown compression method {name!r}; valid: "
                         f"{', '.join(sorted(METHODS))}")
    return METHODS[name]


@dataclass
class Step:
    method: str
    config: object = field(repr=False)

    def to_dict(self) -> dict:
        return {"method": self.method, **dataclasses.asdict(self.config)}

    def label(self) -> str:
        defaults = self.config.__class__()
        changed = [f"{f.name}={getattr(self.config, f.name)}"
                   for f in dataclasses.fields(self.config)
                   if getattr(self.config, f.name) != getattr(defaults, f.name)]
        return f"{self.method}({', '.join(changed)})" if changed else self.method


def make_step(name: str, options: dict | None = None) -> Step:
    """A validated step from a method name and its options (strings from the command line
    are converted to each field's type)."""
    spec = method(name)
    known = {f.name: f for f in dataclasses.fields(spec.config)}
    converted = {}
    for key, value in (options or {}).items():
        if key not in known:
            raise ValueError(f"method {name!r} has no option {key!r}; valid: "
                             f"{', '.join(known) or 'none'}")
        converted[key] = value
    try:
        return Step(name, spec.config(**converted))
    except TypeError as error:
        raise ValueError(f"{name}: {error}") from None


def recipe_from_dicts(steps: list[dict]) -> list[Step]:
    """Steps from ``[{"method": name, **options}, ...]`` (a TOML file's ``[[step]]``
    tables, or a stored recipe)."""
    if not steps:
        raise ValueError("a recipe needs at least one step")
    out = []
    for entry in steps:
        entry = dict(entry)
        if "method" not in entry:
            raise ValueError(f"a recipe step needs a 'method', got {entry!r}; valid methods: "
                             f"{', '.join(list_methods())}")
        out.append(make_step(entry.pop("method"), entry))
    return out


def recipe_from_table(table) -> list[Step]:
    """A recipe from one TOML table: ``{method = NAME, ...options}`` is a recipe of one step
    (its options may include a step count, as distill's ``steps``), ``{steps = [{method =
    NAME, ...}, ...]}`` one of several."""
    if not isinstance(table, dict):
        raise ValueError(f"a recipe must be a table, got {table!r:.80}")
    if "method" in table:
        return recipe_from_dicts([table])
    steps = table.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise ValueError(f"a recipe is {{method = 'NAME', ...}} or {{steps = [{{method = "
                         f"'NAME', ...}}, ...]}}, got {table!r:.120}")
    return recipe_from_dicts(steps)


def check_recipe(model, steps: list[Step]) -> None:
    """Each step's own check on the model, before anything is computed."""
    for step in steps:
        method(step.method).check(model, step.config)


def recipe_label(steps: list[Step]) -> str:
    return " + ".join(s.label() for s in steps)


def apply_recipe(model, steps: list[Step], data: CompressData, log=print):
    """Apply each step in turn; returns (model, [report of each step]). The model may be
    replaced (a distilled student of another mechanism)."""
    reports = []
    data.log = log
    for step in steps:
        log(f"  {step.label()}")
        model, report = method(step.method).apply(model, step.config, data)
        reports.append(report)
    return model, reports


def restore_recipe(model, steps: list[Step], reports: list[dict]):
    """The structure ``apply_recipe`` left, rebuilt on a fresh model (weights to be loaded)."""
    for step, report in zip(steps, reports):
        model = method(step.method).restore(model, step.config, report)
    return model


def check_number(name, value, low, high, *, integer=False, open_low=False, open_high=False):
    """One clear line for a number out of its range."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, "
                         f"got {value!r}")
    below = value <= low if open_low else value < low
    above = value >= high if open_high else value > high
    if below or above:
        left, right = "(" if open_low else "[", ")" if open_high else "]"
        raise ValueError(f"{name} must be in {left}{low}, {high}{right}, got {value!r}")


def linear_layers(model, *, include_head: bool = True) -> dict[str, nn.Linear]:
    """Every nn.Linear by qualified name (the output head too unless told otherwise)."""
    found = {n: m for n, m in model.named_modules() if type(m) is nn.Linear}
    if not include_head:
        found = {n: m for n, m in found.items() if not n.startswith("head")}
    return found


def set_module(model, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def float_parameters(model, done: set[str]) -> list[dict]:
    """The parameters of modules outside ``done`` (names), grouped by module: what a
    method left in float (embeddings, norms, convolutions, a recurrent mixer's gates)."""
    kept = []
    for name, module in model.named_modules():
        if name in done or any(name.startswith(d + ".") for d in done):
            continue
        own = [(n, p) for n, p in module.named_parameters(recurse=False)]
        own += [(n, b) for n, b in module.named_buffers(recurse=False)
                if b is not None and b.is_floating_point() and n in module._buffers
                and n not in module._non_persistent_buffers_set]
        if own:
            kept.append({"module": name or "(model)", "type": type(module).__name__,
                         "parameters": sum(int(p.numel()) for _, p in own)})
    return kept


@torch.no_grad()
def linear_inputs(model, names, batches, loss, limit: int = 4096) -> dict[str, torch.Tensor]:
    """Inputs (N, in) each named linear layer sees on the calibration batches (at most
    ``limit`` rows each, spread evenly)."""
    captured = {n: [] for n in names}
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, args, n=n: captured[n].append(args[0].detach().reshape(-1, args[0].shape[-1])))
        for n in names]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            loss(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for name, parts in captured.items():
        rows = torch.cat(parts) if parts else torch.zeros(0)
        if rows.shape[0] > limit:
            rows = rows[torch.linspace(0, rows.shape[0] - 1, limit).long()]
        out[name] = rows
    return out


def loss_and_output(model, batch, loss):
    """(the task's loss, the model's own output: logits or predictions) in one forward."""
    captured = []
    handle = model.register_forward_hook(lambda m, args, out: captured.append(out))
    try:
        value = loss(model, batch)
    finally:
        handle.remove()
    if not captured:
        raise ValueError("the task's loss did not call the model's forward")
    out = captured[-1]
    if hasattr(out, "last_hidden_state"):  # a transformers model's output
        out = out.last_hidden_state
    return value, (out[0] if isinstance(out, tuple) else out)


@torch.no_grad()
def model_output(model, batch, loss) -> torch.Tensor:
    return loss_and_output(model, batch, loss)[1]
