"""Suites: lists of (mixer, task, preset, seed) runs plus speed sweeps, in a TOML file.

    name = "mine"
    [[runs]]                       # any number of run groups; each is a product
    tasks = ["copy", "mqar"]       # or "all" (tasks that need data only with --data)
    mixers = ["softmax", "gla"]    # or "all" (every mechanism the task's model can take)
    preset = "cpu"                 # optional, default "cpu"
    seeds = [0, 1]                 # optional, default [0]
    mixer_options = {}             # optional, passed to every mixer of the group
    task_options = {}              # optional, e.g. {max_length = 4096}
    skip_without_data = false      # optional: leave out tasks whose data folder is missing
    model = {}                     # optional overrides of the preset's model settings
    train = {}                     # optional overrides of the preset's training settings;
                                   # a list in model or train is a sweep: every value runs,
                                   # e.g. train = {lr = [1e-4, 1e-3]}
    [speed]                        # optional
    mixers = ["softmax", "gla"]    # or "all"; options as "name:key=value"
    lengths = [1024, 4096]
    passes = ["fwd", "decode"]     # fwd, fwdbwd, decode
    batch = 1, heads = 4, head_dim = 64, causal = true   (optional)
    [[compress]]                   # optional, after training: compress the suite's runs
    mixers = ["softmax"]           # optional: only these runs' mixers (default: all)
    tasks = ["mqar"]               # optional
    recipes = [{method = "int8_dynamic"},
               {steps = [{method = "prune_heads", fraction = 0.5}, {method = "distill"}]}]
    [[linearize]]                  # optional, after training: linearize the suite's softmax runs
    mixers = ["hedgehog", "gla"]   # the mechanisms swapped in (options as "name(key=value)")
    tasks = ["mqar"]               # optional: only these tasks' softmax runs (default: all)
    steps = 150                    # optional: attention-transfer and fine-tuning steps each
    transfer_steps = 150           # optional: stage 1 alone (overrides steps)
    finetune_steps = 150           # optional: stage 2 alone
    loss = "mse"                   # optional: stage 1's objective, mse or attention
    Each teacher is linearized at its own seed, and each mechanism is also trained from
    scratch for as many steps (``attnarena linearize --run``), so a suite of several seeds
    gives the transfer-versus-scratch comparison with its spread.

Tasks that read data find it under the data root given to ``load_suite`` (``attnarena
run --data ROOT``): ``ROOT/<task>``, e.g. ``ROOT/text`` holding ``aclImdb``. ListOps and
Pathfinder read ``ROOT/<task>`` when it exists and generate their data otherwise.
"""
from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from attnarena.arena.run.config import RunConfig
from attnarena.arena.measure.environment import resolve_device
from attnarena.arena.measure.speed import PASSES, SpeedConfig
from attnarena.options import parse_mixers
from attnarena.registry import list_mixers, mixer_info
from attnarena.stack import canonical
from attnarena.tasks import list_tasks
from attnarena.tasks.registry import task_class

RUN_KEYS = {"tasks", "mixers", "preset", "seeds", "mixer_options", "task_options", "model",
            "train", "skip_without_data"}
SPEED_KEYS = {"mixers", "lengths", "passes", "batch", "heads", "head_dim", "causal", "dtype",
              "repeats", "time_budget"}


MAX_RUNS = 5000  # a suite larger than this is refused unless asked for (--max-runs)


class SuiteError(ValueError):
    """A suite file that cannot be read or does not describe a valid suite."""


def unknown_keys(given, valid, what: str) -> None:
    """ValueError naming the first few keys of ``given`` not in ``valid``, and their count."""
    bad = sorted(set(given) - set(valid), key=str)
    if bad:
        shown = ", ".join(repr(k) for k in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"unknown {what} key(s) {shown}{more} ({len(bad)} in all); valid: "
                         f"{', '.join(sorted(valid))}")


@dataclass
class Suite:
    name: str
    runs: list = field(default_factory=list)  # ResolvedRun, each resolved once
    speed: list = field(default_factory=list)  # SpeedConfig, one per pass
    compress: list = field(default_factory=list)  # CompressGroup
    linearize: list = field(default_factory=list)  # LinearizeGroup
    notes: list = field(default_factory=list)  # what was left out, and why


@dataclass
class CompressGroup:
    """Recipes (lists of compression steps) for the suite's runs of these mixers and
    tasks (None: all)."""
    recipes: list
    mixers: list | None = None
    tasks: list | None = None

    def takes(self, config) -> bool:
        return ((self.mixers is None or canonical(config.mixer) in map(canonical, self.mixers))
                and (self.tasks is None or config.task in self.tasks))


COMPRESS_KEYS = {"mixers", "tasks", "recipes"}


def _tables(groups, name: str, keys) -> list[dict]:
    """The tables of a suite's ``[[name]]`` array, each checked for unknown keys."""
    if not isinstance(groups, list):
        raise ValueError(f"{name} must be an array of tables ([[{name}]])")
    for group in groups:
        if not isinstance(group, dict):
            raise ValueError(f"each [[{name}]] must be a table, got {group!r:.80}")
        unknown_keys(group, keys, name)
    return groups


def _only_tasks(group: dict, name: str) -> list | None:
    """A table's optional ``tasks`` (None: every task of the suite)."""
    return None if "tasks" not in group else _names(group["tasks"], list_tasks(),
                                                    f"{name}.tasks")


def _compress_groups(groups) -> list[CompressGroup]:
    from attnarena.compress.recipe import recipes_from_tables

    return [CompressGroup(
        recipes=recipes_from_tables(group.get("recipes"), "a [[compress]] table"),
        mixers=None if "mixers" not in group else _names(group["mixers"], list_mixers(),
                                                         "compress.mixers"),
        tasks=_only_tasks(group, "compress"))
        for group in _tables(groups, "compress", COMPRESS_KEYS)]


@dataclass
class LinearizeGroup:
    """Mechanisms to linearize the suite's finished softmax runs of these tasks (None: all)
    into, with the stages' steps and loss."""
    mixers: list  # mechanism names, options as "name(key=value)"
    tasks: list | None = None
    transfer_steps: int = 300
    finetune_steps: int = 300
    loss: str = "mse"

    def takes(self, config) -> bool:
        return config.mixer == "softmax" and (self.tasks is None or config.task in self.tasks)

    def configs(self, seed: int) -> list:
        """One ``LinearizeConfig`` per mechanism, at the teacher's ``seed``."""
        from attnarena.linearize import LinearizeConfig
        from attnarena.stack import parse_stack

        out = []
        for spec in self.mixers:
            layers = parse_stack(spec)  # unknown names and options fail here
            if len(layers) != 1:
                raise ValueError(f"linearize.mixers: {spec!r} is a stack; linearization swaps "
                                 "one mechanism into every layer (name one mechanism)")
            if layers[0].name == "softmax":
                raise ValueError("linearize.mixers: softmax is what linearization starts from; "
                                 "name the mechanisms that replace it")
            if layers[0].name not in _taking_over():
                raise ValueError(f"linearize.mixers: {spec!r} cannot take over softmax "
                                 "attention's query, key, value and output weights; mechanisms "
                                 f"that can: {', '.join(_taking_over())}")
            out.append(LinearizeConfig(mixer=layers[0].name, options=dict(layers[0].options),
                                       transfer_steps=self.transfer_steps,
                                       finetune_steps=self.finetune_steps, loss=self.loss,
                                       seed=seed))
        return out


LINEARIZE_KEYS = {"mixers", "tasks", "steps", "transfer_steps", "finetune_steps", "loss"}


def _linearize_groups(groups) -> list[LinearizeGroup]:
    out = []
    for group in _tables(groups, "linearize", LINEARIZE_KEYS):
        if "mixers" not in group:
            raise ValueError("a [[linearize]] table needs mixers: the mechanisms to swap in")
        steps = group.get("steps", 300)
        made = LinearizeGroup(
            mixers=_names(group["mixers"], _taking_over(), "linearize.mixers"),
            tasks=_only_tasks(group, "linearize"),
            transfer_steps=group.get("transfer_steps", steps),
            finetune_steps=group.get("finetune_steps", steps), loss=group.get("loss", "mse"))
        made.configs(seed=0)  # names, options, steps and loss are checked here
        out.append(made)
    return out


def _taking_over() -> list[str]:
    """The mechanisms that can take over softmax attention's weights (linearization's)."""
    return [m for m in list_mixers() if m != "softmax" and mixer_info(m).reuses_attention_weights]


def builtin_suites() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("attnarena.suites").iterdir()
                  if p.name.endswith(".toml"))


def load_suite(name_or_path: str, mixers=None, tasks=None, device: str = "auto",
               data_root=None, max_runs: int = MAX_RUNS) -> Suite:
    """Read a built-in suite by name or a TOML file by path; ``mixers`` / ``tasks`` keep
    only those; ``data_root`` holds a folder per task that reads data. Everything is
    validated here, before anything runs; a suite of more than ``max_runs`` runs (counted
    from the shape of its sweeps, before any is built) is refused."""
    device = resolve_device(device)
    path = Path(name_or_path)
    if name_or_path in builtin_suites():
        text = resources.files("attnarena.suites").joinpath(f"{name_or_path}.toml").read_text()
        source = f"built-in suite {name_or_path!r}"
    elif path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text()
        except OSError as error:
            raise SuiteError(f"cannot read suite file {path}: {error.strerror}") from None
        source = f"suite file {path}"
    else:
        raise SuiteError(f"unknown suite {name_or_path!r}; built-in suites: "
                         f"{', '.join(builtin_suites())}, or give a path to a .toml file")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SuiteError(f"{source} is not valid TOML: {error}") from None
    except RecursionError:
        raise SuiteError(f"{source} nests tables or arrays too deeply to read") from None
    try:
        return _build(data, mixers, tasks, device, data_root, max_runs)
    except (ValueError, TypeError) as error:
        raise SuiteError(f"{source}: {error}") from None
    except RecursionError:
        raise SuiteError(f"{source}: settings nested too deeply") from None


def _names(value, valid, what):
    if value == "all":
        return list(valid)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of names or \"all\", got {value!r}")
    return value


def _task_data(task: str, data_root) -> dict:
    """{"data_dir": ROOT/task} when that folder exists and the task reads data."""
    if data_root is None or not task_class(task).reads_data:
        return {}
    folder = Path(data_root) / task
    return {"data_dir": str(folder.resolve())} if folder.is_dir() else {}


def _grid(settings, what) -> list[dict]:
    """A settings table whose list values are alternatives -> every combination."""
    if not isinstance(settings, dict):
        raise ValueError(f"{what} must be a table of settings, got {settings!r}")
    keys = sorted(settings)
    choices = []
    for key in keys:
        value = settings[key]
        if isinstance(value, list):
            if not value:
                raise ValueError(f"{what}.{key} lists no values")
            choices.append(value)
        else:
            choices.append([value])
    return [dict(zip(keys, combo)) for combo in itertools.product(*choices)]


def _grid_size(settings) -> int:
    """How many combinations ``_grid(settings)`` makes, without making them."""
    if not isinstance(settings, dict):
        return 1  # _grid reports the error
    return math.prod(len(v) if isinstance(v, list) else 1 for v in settings.values())


def count_runs(groups) -> int:
    """The number of runs a suite's groups name at most (before filters and duplicates),
    from the shape of their sweeps alone."""
    total = 0
    for group in groups:
        if not isinstance(group, dict):
            continue
        sizes = []
        for key, every in (("tasks", list_tasks), ("mixers", list_mixers)):
            value = group.get(key, [])
            sizes.append(len(every()) if value == "all" else
                         len(value) if isinstance(value, list) else 1)
        seeds = group.get("seeds", [0])
        sizes += [len(seeds) if isinstance(seeds, list) else 1,
                  _grid_size(group.get("model", {})), _grid_size(group.get("train", {}))]
        total += math.prod(sizes)
    return total


def _build(data, mixer_filter, task_filter, device, data_root=None, max_runs=MAX_RUNS):
    unknown_keys(data, {"name", "runs", "speed", "compress", "linearize"}, "top-level")
    # names and patterns, each in its canonical form (unknown names fail here)
    mixer_filter = [canonical(name) for name in mixer_filter] if mixer_filter else None
    for name in task_filter or []:
        task_class(name)  # an unknown name fails here, with a did-you-mean
    suite = Suite(name=str(data.get("name", "custom")),
                  compress=_compress_groups(data.get("compress", [])),
                  linearize=_linearize_groups(data.get("linearize", [])))
    groups = data.get("runs", [])
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise ValueError("runs must be an array of tables ([[runs]])")
    planned = count_runs(groups)
    if planned > max_runs:
        raise ValueError(f"the suite names {planned:,} runs, more than the limit of "
                         f"{max_runs:,}; narrow its sweeps, or raise the limit (--max-runs)")
    seen = set()
    for group in groups:
        unknown_keys(group, RUN_KEYS, "run")
        every_task = group.get("tasks") == "all"
        tasks = _names(group.get("tasks", []), list_tasks(), "tasks")
        if every_task or group.get("skip_without_data", False):
            # tasks that need data join when the data root has their folder
            missing = [t for t in tasks if task_class(t).needs_data
                       and not _task_data(t, data_root)]
            if missing and not (task_filter and not set(missing) & set(task_filter)):
                where = (f"no folder {', '.join(str(Path(data_root) / t) for t in missing)}"
                         if data_root else "no --data ROOT given")
                suite.notes.append(f"left out {', '.join(missing)}: these tasks read a "
                                   f"download and there is {where}")
            tasks = [t for t in tasks if t not in missing]
        every_mixer = group.get("mixers") == "all"
        mixers = _names(group.get("mixers", []), list_mixers(), "mixers")
        seeds = group.get("seeds", [0])
        if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
            raise ValueError(f"seeds must be a list of ints, got {seeds!r}")
        for task in tasks:
            if task_filter and task not in task_filter:
                continue
            for mixer in mixers:
                if mixer_filter and canonical(mixer) not in mixer_filter:
                    continue
                if every_mixer and not task_class(task).takes(mixer):
                    continue
                options = {**_task_data(task, data_root), **group.get("task_options", {})}
                for model, train in itertools.product(_grid(group.get("model", {}), "model"),
                                                      _grid(group.get("train", {}), "train")):
                    for seed in seeds:
                        config = RunConfig(task=task, mixer=mixer,
                                           preset=group.get("preset", "cpu"), seed=seed,
                                           mixer_options=group.get("mixer_options", {}),
                                           task_options=options, model=model, train=train,
                                           device=device)
                        run = config.resolve()  # validates names and options
                        if run.id not in seen:
                            seen.add(run.id)
                            suite.runs.append(run)
    speed = data.get("speed")
    if speed:
        if not isinstance(speed, dict):
            raise ValueError(f"speed must be a table ([speed]), got {speed!r:.80}")
        unknown_keys(speed, SPEED_KEYS, "speed")
        specs = parse_mixers(_names(speed.get("mixers", []), list_mixers(), "speed.mixers"))
        if mixer_filter:
            specs = [s for s in specs if s.name in mixer_filter]
        passes = speed.get("passes", ["fwd"])
        for pass_ in passes:
            if pass_ not in PASSES:
                raise ValueError(f"unknown pass {pass_!r}; valid: {', '.join(PASSES)}")
            pattern = "causal" if speed.get("causal", True) else "self"
            chosen = [s for s in specs if pattern in mixer_info(s.name).patterns
                      and (pass_ != "decode" or mixer_info(s.name).decodes)]
            if chosen:
                suite.speed.append(SpeedConfig(
                    mixers=chosen, lengths=speed.get("lengths", [1024, 4096]), pass_=pass_,
                    batch=speed.get("batch", 1), heads=speed.get("heads", 4),
                    head_dim=speed.get("head_dim", 64), dtype=speed.get("dtype", "float32"),
                    device=device, causal=speed.get("causal", True),
                    repeats=speed.get("repeats", 5), time_budget=speed.get("time_budget", 60.0)))
    if not suite.runs and not suite.speed:
        raise ValueError("the suite selects no runs and no speed cases")
    if device == "cpu" and any(c.preset == "paper" for c in suite.runs):
        suite.notes.append(_cost_note(suite))
    return suite


def _cost_note(suite) -> str:
    """What a suite of published configurations costs, said before a CPU starts on it."""
    from attnarena.tasks import create_task

    tokens = 0
    for run in suite.runs:
        length = create_task(run.task, **run.task_options).sequence_length
        tokens += run.train["steps"] * run.train["batch"] * length
    biggest = max((s.batch for s in suite.speed), default=0)
    speed = f", then speed sweeps at batch {biggest}" if biggest else ""
    return (f"note: suite {suite.name!r} runs published (paper) configurations: "
            f"{len(suite.runs)} runs training on {tokens / 1e9:.1f} billion tokens{speed}. It "
            f"is meant for a GPU (--device cuda): at 100,000 training tokens/s, more than this "
            f"CPU gives these models, that is {tokens / 1e5 / 86400:,.0f} days. Ctrl-C stops "
            "it, and the same command resumes it.")
