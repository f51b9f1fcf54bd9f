"""Compression recipes as plain data: each method is a config dataclass (validated in
``__post_init__``) registered with the function that applies it to a subject
(``attnarena.subject``), in the shape of torchao's ``quantize_(model, config)``. A recipe
is a list of steps applied in order (prune, then distill, then quantize); ``apply_recipe``
returns what each step did, and ``restore_recipe`` rebuilds the same structure on a fresh
model so that saved weights load into it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from attnarena.subject import CompressData, Subject, subject_of  # noqa: F401 (CompressData)


@dataclass
class Method:
    name: str
    config: type
    apply: Callable        # (subject, config, data) -> (subject, report dict)
    restore: Callable      # (subject, config, report) -> subject with the compressed structure
    family: str
    paper: str
    check: Callable        # (subject, config) -> None; raises when the method cannot apply
    final: bool = False    # it leaves a model no other method acts on (an ONNX Runtime graph)


METHODS: dict[str, Method] = {}


def register_method(name: str, config: type, *, family: str, paper: str,
                    restore: Callable | None = None, check: Callable | None = None,
                    final: bool = False):
    """Register ``apply`` under ``name``; ``restore`` rebuilds the structure for loading
    (default: the structure is unchanged); ``check`` refuses a model the method cannot
    take before any work is done; ``final`` marks a method that must be a recipe's last
    step (its result is no longer a torch model)."""
    def wrap(apply):
        if name in METHODS:
            raise ValueError(f"compression method {name!r} is already registered")
        METHODS[name] = Method(name, config, apply, restore or (lambda model, c, r: model),
                               family, paper, check or (lambda model, c: None), final)
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


def recipes_from_tables(tables, where: str, what: str = "recipes") -> list[list[Step]]:
    """Recipes from a list of TOML tables (a suite's ``recipes = [...]``, a file's
    ``[[recipe]]``), each as ``recipe_from_table`` reads it; ``where`` names the place,
    ``what`` the list."""
    if not isinstance(tables, list) or not tables:
        raise ValueError(f"{where} lists no {what} (each a table with steps = [{{method = "
                         "'NAME', ...}, ...]} or a single method = 'NAME')")
    try:
        return [recipe_from_table(table) for table in tables]
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def recipes_from_file(path) -> list[list[Step]]:
    """The ``[[recipe]]`` tables of a TOML file."""
    import tomllib
    from pathlib import Path

    try:
        loaded = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"cannot read the recipes {path}: {error}") from None
    except RecursionError:
        raise ValueError(f"{path} nests tables or arrays too deeply to read") from None
    return recipes_from_tables(loaded.get("recipe"), str(path), "[[recipe]] tables")


def recipe_from_methods(texts) -> list[Step]:
    """One recipe from steps written ``'NAME key=value ...'`` (the command line's)."""
    from attnarena.options import parse_options

    steps = []
    for text in texts:
        name, *pairs = text.split() or [""]
        steps.append(make_step(name, parse_options(pairs, f" of method {name}")))
    return steps


def check_recipe(model, steps: list[Step]) -> None:
    """Each step's own check on the model (or subject), before anything is computed."""
    subject = subject_of(model)
    for index, step in enumerate(steps):
        if method(step.method).final and index != len(steps) - 1:
            raise ValueError(f"{step.method} must be the last step of a recipe (it leaves a "
                             f"graph no later step can change); got {recipe_label(steps)}")
        method(step.method).check(subject, step.config)


def recipe_label(steps: list[Step]) -> str:
    return " + ".join(s.label() for s in steps)


def apply_recipe(model, steps: list[Step], data: CompressData, log=print):
    """Apply each step in turn to ``model`` (an ``nn.Module`` or a ``Subject``); returns
    (the compressed model, [report of each step]), a subject when given one. The model may
    be replaced (a distilled student of another mechanism)."""
    subject = subject_of(model)
    reports = []
    data.log = log
    for step in steps:
        log(f"  {step.label()}")
        subject, report = method(step.method).apply(subject, step.config, data)
        reports.append(report)
    return (subject if isinstance(model, Subject) else subject.model), reports


def restore_recipe(model, steps: list[Step], reports: list[dict]):
    """The structure ``apply_recipe`` left, rebuilt on a fresh model or subject (weights to
    be loaded); returns the same kind it was given."""
    subject = subject_of(model)
    for step, report in zip(steps, reports):
        subject = method(step.method).restore(subject, step.config, report)
    return subject if isinstance(model, Subject) else subject.model


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


def loss_and_output(subject, batch, loss):
    """(the task's loss, the model's own output: logits or predictions) in one forward, of
    a model or subject."""
    subject = subject_of(subject)
    captured = []
    model = subject.model
    handle = model.register_forward_hook(lambda m, args, out: captured.append(out))
    try:
        value = loss(model, batch)
    finally:
        handle.remove()
    if not captured:
        raise ValueError("the task's loss did not call the model's forward")
    return value, subject.output(captured[-1])


@torch.no_grad()
def model_output(subject, batch, loss) -> torch.Tensor:
    return loss_and_output(subject, batch, loss)[1]
