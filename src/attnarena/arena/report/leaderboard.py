"""Reports from the store only: the leaderboard, plots, and machine-readable tables."""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict

from attnarena.arena.report.seeds import (SOLVED, call_difference, format_range,
                                          format_spread, min_gap, spread)
from attnarena.arena.report.speed import speed_markdown
from attnarena.arena.report.style import (fmt, format_metric, keep_ticks_within, label_log_axis,
                                          legend_outside, mixer_style, plural, pyplot)

MIN_ACCURACY_SPAN = 0.1  # a y axis spanning less than this would magnify noise


COLUMNS = ["task", "mixer", "preset", "seed", "dim", "lr", "setting", "metric", "test",
           "best_val", "tokens_per_s", "peak_mem_mb", "params", "steps", "train_seconds", "id"]
LRA_TASKS = {"listops", "text", "retrieval", "image", "pathfinder"}
# Settings named on the line above a table when every row shares them.
SHOWN_WHEN_COMMON = ("preset", "seed", "dim", "depth", "heads", "lr", "steps", "batch")
BASELINE_NAMES = {"least_squares": "least squares", "ridge": "ridge",
                  "gd_one_step": "one GD step (best step size)", "zero": "predict zero"}


def leaderboard_rows(store) -> list[dict]:
    rows = []
    for run in store.runs(status="done"):
        m = run["metrics"]
        metric = m.get("metric", "accuracy")
        config = run.get("config") or {}
        env = run.get("environment") or {}
        rows.append({"task": run["task"], "mixer": run["mixer"], "preset": run["preset"],
                     "seed": run["seed"], "dim": config.get("model", {}).get("dim"),
                     "lr": config.get("train", {}).get("lr"),
                     "settings": _flat_settings(config), "setting": _setting(config),
                     "problem": _problem(run, config), "metric": metric,
                     "higher_is_better": _higher_is_better(run["task"], metric),
                     "test": m[f"test_{metric}"], "best_val": m[f"best_val_{metric}"],
                     "tokens_per_s": m["tokens_per_s"], "peak_mem_mb": m["peak_mem_mb"],
                     "params": m["params"], "steps": m["steps"],
                     "train_seconds": m["train_seconds"], "baselines": m.get("baselines"),
                     "by_length": m.get("test_by_length"), "id": run["id"],
                     "threads": env.get("threads"), "jobs": env.get("jobs", 1),
                     "resumptions": m.get("resumptions", 0),
                     "solved_at": _solved_at(m.get("history", []), metric)})
    return rows


def _solved_at(history, metric):
    """The first step whose validation accuracy reached ``SOLVED`` (None: never, or not an
    accuracy)."""
    if metric != "accuracy":
        return None
    return next((h["step"] for h in history
                 if h.get(f"val_{metric}") is not None and h[f"val_{metric}"] >= SOLVED), None)


def training_conditions(rows) -> str:
    """How the rows' training throughputs were measured: threads per run and runs trained
    at once (``attnarena run --jobs``), e.g. "1 thread per run, 2 runs at once"."""
    seen = sorted({(r.get("threads"), r.get("jobs") or 1) for r in rows
                   if r.get("threads") is not None})
    return "; ".join(f"{plural(t, 'thread')} per run"
                     + ("" if j == 1 else f", {j} runs at once") for t, j in seen)


def _higher_is_better(task: str, metric: str) -> bool:
    """The task's own direction; a task no longer registered falls back on its metric."""
    from attnarena.tasks.registry import task_class

    try:
        return task_class(task).higher_is_better
    except ValueError:
        return metric == "accuracy"


def _accuracy_rows(rows):
    return [r for r in rows if r["metric"] == "accuracy"]


def _order(row):
    """Best first, in the task's direction."""
    return -row["test"] if row["higher_is_better"] else row["test"]


def _flat_settings(config: dict) -> dict:
    """Flat {name: value} of what a run was given: preset, seed, model and training
    settings, task options (not data folders) and mixer options."""
    flat = {"preset": config.get("preset"), "seed": config.get("seed")}
    for section in ("model", "train"):
        flat.update((config.get(section) or {}).items())
    for section, prefix in (("task_options", "task."), ("mixer_options", "mixer.")):
        for key, value in (config.get(section) or {}).items():
            if key != "data_dir":  # a name model or train settings use gets a prefix
                flat[prefix + key if key in flat else key] = value
    return flat


def _setting(config: dict) -> str:
    """What a run computes apart from its seed (and device): runs of one setting differ
    only by seed."""
    return json.dumps({k: v for k, v in config.items() if k not in ("seed", "device")},
                      sort_keys=True)


def _problem(run, config: dict) -> str:
    """The task with its options, e.g. ``mqar(length=64, pairs=4)``: one column of the
    average, whatever model or training settings were swept on it."""
    options = config.get("task_options") or {}
    shown = ", ".join(f"{k}={v}" for k, v in sorted(options.items()) if k != "data_dir")
    return f"{run['task']}({shown})" if shown else run["task"]


def swept_keys(rows) -> list[str]:
    """Settings that take more than one value among ``rows``, in a stable order. An option
    only some mechanisms have is part of their identity, not a sweep, unless one
    mechanism ran with several values of it."""
    def values(group):
        return {json.dumps(r["settings"].get(key), sort_keys=True) for r in group}

    by_mixer = defaultdict(list)
    for r in rows:
        by_mixer[r["mixer"]].append(r)
    swept = []
    for key in sorted({k for r in rows for k in r["settings"]}):
        if len(values(rows)) < 2:
            continue
        if all(key in r["settings"] for r in rows) or any(len(values(g)) > 1
                                                           for g in by_mixer.values()):
            swept.append(key)
    return swept


def common_line(rows, swept) -> str:
    """The settings every row shares, for the line above a table: the main model and
    training settings, and the task's options."""
    parts = []
    for key in SHOWN_WHEN_COMMON:
        if key not in swept and all(key in r["settings"] for r in rows):
            parts.append(f"{key} {format_value(rows[0]['settings'][key])}")
    problems = {r["problem"] for r in rows}
    if len(problems) == 1 and "(" in rows[0]["problem"]:
        parts.append("task " + rows[0]["problem"])
    return "All rows: " + ", ".join(parts) + "." if parts else ""


def run_label(row, swept) -> str:
    """``gla (seed 0, lr 0.001)``: the mechanism and what sets this run apart."""
    shown = [f"{k} {format_value(row['settings'].get(k))}" for k in swept]
    return f"{row['mixer']} ({', '.join(shown)})" if shown else row["mixer"]


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "-"
    return str(value)


def best_settings(rows) -> dict:
    """{(mixer, preset, problem): best mean test accuracy over seeds among the settings
    run}, so that a sweep (say over learning rates) counts by its best setting, as Zoology
    and LRA report."""
    best = {}
    for (mixer, preset, problem), (value, _) in best_runs(rows).items():
        best[(mixer, preset, problem)] = value
    return best


def best_runs(rows) -> dict:
    """{(mixer, preset, problem): (best mean test accuracy over seeds, that setting's
    runs)}."""
    by_setting = defaultdict(list)
    for r in _accuracy_rows(rows):
        by_setting[(r["mixer"], r["preset"], r["problem"], r["setting"])].append(r)
    best = {}
    for (mixer, preset, problem, _), runs in by_setting.items():
        mean = sum(r["test"] for r in runs) / len(runs)
        if mean > best.get((mixer, preset, problem), (-1.0, None))[0]:
            best[(mixer, preset, problem)] = (mean, runs)
    return best


def averages(rows) -> list[tuple]:
    """Average test accuracy per (mixer, preset) over the tasks it ran on all of (tasks
    scored by accuracy only; per task the best setting, each averaged over seeds)."""
    best = best_settings(rows)
    problems = {problem for _, _, problem in best}
    by_mixer = defaultdict(dict)
    for (mixer, preset, problem), value in best.items():
        by_mixer[(mixer, preset)][problem] = value
    out = []
    for (mixer, preset), per_task in by_mixer.items():
        if set(per_task) == problems:
            out.append((mixer, preset, sum(per_task.values()) / len(per_task)))
    return sorted(out, key=lambda t: -t[2])


def average_spreads(rows) -> dict:
    """{(mixer, preset): Spread of the average over tasks, seed by seed} for mechanisms
    whose best settings ran the same seeds on every task (two or more); the average of
    seed s is the mean over tasks of seed s's test accuracy."""
    by_mixer = defaultdict(dict)
    for (mixer, preset, problem), (_, runs) in best_runs(rows).items():
        by_mixer[(mixer, preset)][problem] = {r["seed"]: r["test"] for r in runs}
    out = {}
    for key, per_task in by_mixer.items():
        seeds = set.intersection(*(set(v) for v in per_task.values()))
        if len(seeds) >= 2 and all(set(v) == seeds for v in per_task.values()):
            out[key] = spread(sum(v[s] for v in per_task.values()) / len(per_task)
                              for s in sorted(seeds))
    return out


def format_rows(rows, fmt: str) -> str:
    rows = [{k: r[k] for k in COLUMNS} for r in rows]
    if fmt == "json":
        return json.dumps(rows, indent=2)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def setting_groups(rows) -> list[dict]:
    """The rows of one setting (everything but the seed) together, best mean first:
    {"mixer", "settings", "runs", "test": Spread, "best_val": Spread, "metric",
    "higher_is_better"}."""
    by_setting = defaultdict(list)
    for r in rows:
        by_setting[(r["mixer"], r["setting"])].append(r)
    groups = []
    for (mixer, _), runs in by_setting.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        groups.append({"mixer": mixer, "settings": runs[0]["settings"], "runs": runs,
                       "test": spread(r["test"] for r in runs),
                       "best_val": spread(r["best_val"] for r in runs),
                       "metric": runs[0]["metric"],
                       "higher_is_better": runs[0]["higher_is_better"]})
    return sorted(groups, key=lambda g: -g["test"].mean if g["higher_is_better"]
                  else g["test"].mean)


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _test_lengths(rows) -> list[int]:
    """Every length the rows were tested at (length-generalization tasks), in order."""
    return sorted({int(n) for r in rows for n in (r.get("by_length") or {})})


def _length_spread(runs, length: int, metric: str) -> str:
    values = [r["by_length"][str(length)] for r in runs
              if str(length) in (r.get("by_length") or {})]
    return format_spread(spread(values), metric) if values else "-"


def _seeds_table(task, mine) -> list[str]:
    """A task's table when some setting ran several seeds: one row per setting, with the
    mean, spread and n of its seeds, the seeds that solved it, and whether its gap to the
    best setting exceeds their spread."""
    metric, higher = mine[0]["metric"], mine[0]["higher_is_better"]
    swept = [k for k in swept_keys(mine) if k != "seed"]
    groups = setting_groups(mine)
    lines = [f"## {task}", ""]
    common = common_line(mine, swept + ["seed"])
    if common:
        lines += [common, ""]
    accuracy = metric == "accuracy"
    lines += [f"Test {metric}: mean ± standard deviation over each setting's n seeds, and "
              "their range" + (f"; solved: seeds at or above {SOLVED:g}, and the step at "
                               f"which each first reached {SOLVED:g} in validation"
                               if accuracy else "")
              + "; vs best: worse only where the gap to the best mean exceeds the two "
              "standard deviations together" + (" and half a point" if accuracy else "")
              + ", else within spread.", ""]
    lengths = _test_lengths(mine)
    if lengths:
        lines += [f"Length generalization: test {metric} at each length (L=...), mean ± "
                  "standard deviation over the seeds, the model trained at the first.", ""]
    head = (["mixer"] + swept + ["n", f"test {metric}", "min – max"]
            + [f"L={n}" for n in lengths]
            + (["solved", "solved at step"] if accuracy else [])
            + ["vs best", f"best val {metric}", "train tokens/s", "peak MiB", "params"])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    top = groups[0]
    for g in groups:
        runs = g["runs"]
        vs = "best" if g is top else call_difference(g["test"], top["test"], higher,
                                                     min_gap(metric))
        cells = ([g["mixer"]] + [format_value(g["settings"].get(k)) for k in swept]
                 + [str(g["test"].n), format_spread(g["test"], metric),
                    format_range(g["test"], metric)]
                 + [_length_spread(runs, n, metric) for n in lengths]
                 + ([f"{g['test'].reached(SOLVED)} of {g['test'].n}",
                     ", ".join(f"{r['solved_at']:,}" for r in runs
                               if r["solved_at"] is not None and r["test"] >= SOLVED) or "-"]
                    if accuracy else [])
                 + [vs, format_spread(g["best_val"], metric),
                    fmt(_mean(r["tokens_per_s"] for r in runs), ",.0f")
                    + ("*" if any(r.get("resumptions") for r in runs) else ""),
                    fmt(_mean(r["peak_mem_mb"] for r in runs), ",.0f"),
                    fmt(runs[0]["params"], ",")])
        lines.append("| " + " | ".join(cells) + " |")
    conditions = training_conditions(mine)
    if conditions:
        lines += ["", f"Train tokens/s: the mean over seeds, as measured while each run "
                  f"trained ({conditions})."]
    if any(r.get("resumptions") for r in mine):
        lines += ["", "\\* some seeds trained across interruptions (resumed from "
                  "checkpoints): tokens/s over the steps after each restart's first."]
    lines.append("")
    return lines


def _task_table(task, mine) -> list[str]:
    if any(g["test"].n > 1 for g in setting_groups(mine)):
        return _seeds_table(task, mine)
    metric = mine[0]["metric"]
    swept = swept_keys(mine)
    lines = [f"## {task}", ""]
    common = common_line(mine, swept)
    if common:
        lines += [common, ""]
    lengths = _test_lengths(mine)
    if lengths:
        lines += [f"Length generalization: test {metric} at each length (L=...), the model "
                  "trained at the first; the test column is at the training length.", ""]
    head = ["mixer"] + swept + [f"test {metric}"] + [f"L={n}" for n in lengths] + [
        f"best val {metric}", "train tokens/s", "peak MiB", "params"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in mine:
        by_length = r.get("by_length") or {}
        cells = [r["mixer"]] + [format_value(r["settings"].get(k)) for k in swept] + [
            format_metric(r["test"], metric)] + [
            format_metric(by_length[str(n)], metric) if str(n) in by_length else "-"
            for n in lengths] + [
            format_metric(r["best_val"], metric),
            fmt(r["tokens_per_s"], ",.0f") + ("*" if r.get("resumptions") else ""),
            fmt(r["peak_mem_mb"], ",.0f"),
            fmt(r["params"], ",")]
        lines.append("| " + " | ".join(cells) + " |")
    baselines = next((r["baselines"] for r in mine if r["baselines"]), None)
    if baselines:
        if len({json.dumps(r["baselines"], sort_keys=True) for r in mine
                if r["baselines"]}) > 1:
            lines += ["", "Baselines below are those of the first run's test prompts."]
        blanks = [""] * len(swept)
        for key, name in BASELINE_NAMES.items():
            if key in baselines:
                lines.append("| " + " | ".join([f"*baseline: {name}*"] + blanks
                                              + [format_metric(baselines[key], metric)]
                                              + ["-"] * (4 + len(lengths))) + " |")
    conditions = training_conditions(mine)
    if conditions:
        lines += ["", f"Train tokens/s as measured while each run trained ({conditions})."]
    if any(r.get("resumptions") for r in mine):
        lines += ["", "\\* trained across interruptions (resumed from checkpoints): tokens/s "
                  "over the steps after each restart's first."]
    lines.append("")
    return lines


def leaderboard_markdown(store) -> str:
    rows = leaderboard_rows(store)
    lines = ["# attnarena leaderboard", ""]
    unfinished = [r for status in ("diverged", "failed", "interrupted", "running")
                  for r in store.runs(status=status)]
    if not rows:
        lines.append("No finished runs in the store yet.")
    for task in sorted({r["task"] for r in rows}):
        lines += _task_table(task, sorted((r for r in rows if r["task"] == task), key=_order))
    avg = averages(rows)
    problems = {r["problem"] for r in _accuracy_rows(rows)}
    partial = sorted({r["mixer"] for r in _accuracy_rows(rows)} - {m for m, _, _ in avg})
    if len(problems) > 1 and not avg:
        lines += [f"## Average over {len(problems)} tasks", "",
                  f"No mechanism ran all {len(problems)} tasks, so there is no average; "
                  "the tables above compare them task by task.", ""]
    if avg and len(problems) > 1:
        lra = {p.split("(")[0] for p in problems} <= LRA_TASKS
        presets = {p for _, p, _ in avg}
        one = f" All rows: preset {next(iter(presets))}." if len(presets) == 1 else ""
        lines += [f"## Average over {len(problems)} tasks" + (" (LRA average)" if lra else ""),
                  "", "Test accuracy; per task the best setting of a sweep, each averaged "
                  "over its seeds; only mechanisms that ran every task"
                  + (f" (left out, having run only some: {', '.join(partial)})" if partial
                     else "") + "." + one, ""]
        spreads = average_spreads(rows)

        def value(m, p, a):
            return format_metric(a, "accuracy") if (m, p) not in spreads else \
                f"{format_spread(spreads[(m, p)], 'accuracy')} (n={spreads[(m, p)].n})"
        if spreads:
            lines += ["Where every task ran the same seeds: ± the standard deviation over "
                      "seeds of the per-seed average.", ""]
        if one:
            lines += ["| mixer | mean test accuracy |", "|---|---|"]
            lines += [f"| {m} | {value(m, p, a)} |" for m, p, a in avg]
        else:
            lines += ["| mixer | preset | mean test accuracy |", "|---|---|---|"]
            lines += [f"| {m} | {p} | {value(m, p, a)} |" for m, p, a in avg]
        lines.append("")
    lines += speed_markdown(store.speed_rows())
    linearized = store.linearize_rows()
    if linearized:
        from attnarena.arena.report.linearization import linearize_markdown

        lines += [linearize_markdown(linearized)]
    compressed = store.compress_rows()
    if compressed:
        from attnarena.arena.report.compression import compress_markdown

        lines += [compress_markdown(compressed)]
    if unfinished:
        lines += ["## Runs without a result (not ranked)", "",
                  "diverged: a non-finite loss stopped training; failed: an error; "
                  "interrupted: stopped, resumable by running again; running: in progress "
                  "or killed (resumed by the next run).", ""]
        lines += [f"- {r['status']}: {r['id']}"
                  + (f": {r['error'].splitlines()[0]}" if r["error"] else "")
                  for r in unfinished]
        lines.append("")
    return "\n".join(lines)


def plot_quality_vs_speed(rows, path):
    """One panel per task: each mechanism's test accuracy (its best setting, mean over
    seeds) against the training throughput of those same runs, with the Pareto front.
    Throughputs of different tasks differ by orders of magnitude (lengths, batch sizes), so
    they are never averaged across tasks; the axis says how they were measured."""
    plt = pyplot()
    panels = defaultdict(list)
    seeded = False
    for (mixer, _, problem), (value, runs) in best_runs(rows).items():
        speed = sum(r["tokens_per_s"] for r in runs) / len(runs)
        sd = spread(r["test"] for r in runs).sd
        seeded = seeded or len(runs) > 1
        panels[problem].append((speed, value, mixer, sd))
    tasks = sorted(panels)
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.2 * len(tasks) + 2.3, 4.8),
                             squeeze=False)
    handles = {}
    for ax, task in zip(axes[0], tasks):
        points = sorted(panels[task])
        for speed, acc, mixer, sd in points:
            style = mixer_style(mixer)
            handles[mixer] = ax.scatter(speed, acc, s=50, color=style["color"],
                                        marker=style["marker"], label=mixer, zorder=3)
            if sd > 0:  # the spread over seeds
                ax.errorbar(speed, acc, yerr=sd, color=style["color"], capsize=3,
                            linewidth=1, zorder=2)
        front, best = [], -1.0
        for speed, acc, _, _ in sorted(points, key=lambda p: -p[0]):
            if acc > best:
                front.append((speed, acc))
                best = acc
        # the front: mechanisms no other beats on both axes (one point when one beats all)
        handles["Pareto front"] = ax.plot(
            *zip(*sorted(front)), linestyle="--", color="gray", marker="o", markersize=13,
            markerfacecolor="none", label="Pareto front", zorder=2)[0]
        low = min(p[1] - p[3] for p in points)
        high = max(p[1] + p[3] for p in points)
        pad = max(0.0, MIN_ACCURACY_SPAN - (high - low)) / 2 + 0.02
        # past 1.0 too, so a marker at 1.0 is drawn whole; no tick is labelled past 1.0
        ax.set_ylim(low - pad, high + pad)
        keep_ticks_within(ax.yaxis, 0.0, 1.0)
        ax.set_xscale("log")
        label_log_axis(ax.xaxis, [p[0] for p in points])
        ax.set_xlabel("training throughput (tokens/s over each run's training)")
        ax.set_ylabel("test accuracy (best setting, mean over seeds"
                      + (" ± sd)" if seeded else ")"))
        ax.set_title(task)
        ax.grid(True, which="both", alpha=0.3)
    order = sorted(m for m in handles if m != "Pareto front") + ["Pareto front"]
    legend_outside(axes[0][-1], [handles[m] for m in order], order, title="mechanism")
    conditions = training_conditions(rows)
    fig.suptitle(f"Quality against training speed, per task ({plural(len(tasks), 'task')}); "
                 "throughput as measured while each run trained"
                 + (f" ({conditions})" if conditions else "")
                 + ",\non the machine as it was then (see attnarena speed for controlled "
                 "timings)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(rows, store, path):
    """Validation metric against step, one panel per task, one colour per mechanism; the
    legend names each run's seed and whatever setting its sweep varied."""
    plt = pyplot()
    histories = {r["id"]: r["metrics"].get("history", []) for r in store.runs(status="done")}
    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(7.5 * len(tasks), 4.5), squeeze=False)
    styles = ("-", "--", ":", "-.")
    for ax, task in zip(axes[0], tasks):
        mine = sorted((r for r in rows if r["task"] == task), key=lambda r: r["mixer"])
        swept = swept_keys(mine)
        # one line style per swept setting (say, per learning rate), the same for every
        # mechanism; seeds share their setting's style
        shown = [k for k in swept if k != "seed"]
        variants = sorted({repr(tuple(r["settings"].get(k) for k in shown)) for r in mine})
        metric = mine[0]["metric"]
        for r in mine:
            history = histories.get(r["id"], [])
            if not history:
                continue
            style = mixer_style(r["mixer"])
            if shown:
                variant = repr(tuple(r["settings"].get(k) for k in shown))
                style["linestyle"] = styles[variants.index(variant) % len(styles)]
            ax.plot([h["step"] for h in history], [h[f"val_{metric}"] for h in history],
                    markersize=5, label=run_label(r, swept), **style)
        ax.set_title(f"{task}: validation {metric}")
        ax.set_xlabel("training step")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        legend_outside(ax, title="mechanism (setting)" if swept else "mechanism")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
