"""Reports from the store only: the leaderboard, plots, and machine-readable tables."""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict

from attnarena.arena.plotstyle import plural
from attnarena.arena.speed_report import (BASELINE, crossovers, errors_at_longest,
                                          memory_of, sweep_groups)


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
                     "resumptions": m.get("resumptions", 0)})
    return rows


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


def format_metric(value, metric: str) -> str:
    """One format per metric everywhere: accuracies to 4 decimals, errors to 4 digits."""
    if value is None:
        return "-"
    return f"{value:.4f}" if metric == "accuracy" else f"{value:.4g}"


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


def format_rows(rows, fmt: str) -> str:
    rows = [{k: r[k] for k in COLUMNS} for r in rows]
    if fmt == "json":
        return json.dumps(rows, indent=2)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def mib(value) -> str:
    """MiB with three significant digits (a 30 KiB state is 0.0293, not 0.0)."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _task_table(task, mine) -> list[str]:
    metric = mine[0]["metric"]
    swept = swept_keys(mine)
    lines = [f"## {task}", ""]
    common = common_line(mine, swept)
    if common:
        lines += [common, ""]
    lengths = sorted({int(n) for r in mine for n in (r.get("by_length") or {})})
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
            _fmt(r["tokens_per_s"], ",.0f") + ("*" if r.get("resumptions") else ""),
            _fmt(r["peak_mem_mb"], ",.0f"),
            _fmt(r["params"], ",")]
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
        if one:
            lines += ["| mixer | mean test accuracy |", "|---|---|"]
            lines += [f"| {m} | {format_metric(a, 'accuracy')} |" for m, _, a in avg]
        else:
            lines += ["| mixer | preset | mean test accuracy |", "|---|---|---|"]
            lines += [f"| {m} | {p} | {format_metric(a, 'accuracy')} |" for m, p, a in avg]
        lines.append("")
    for (pass_, causal, *_), (stem, mine) in sweep_groups(store.speed_rows()).items():
        lengths = sorted({r["length"] for r in mine})
        env = mine[0]["environment"]
        cross, errors = crossovers(mine), errors_at_longest(mine)
        extra = (["crossover"] if cross else []) + (["error vs softmax"] if errors else [])
        memory = "decoding state held" if pass_ == "decode" else "peak memory"
        kind = "" if causal is None else ("causal, " if causal else "noncausal, ")
        lines += [f"## Speed: {pass_} ({kind}median ms; batch {mine[0].get('batch')}, "
                  f"{mine[0].get('heads')} heads x {mine[0].get('head_dim')}, "
                  f"{mine[0].get('dtype')}, {env.get('hardware')}, "
                  f"{env.get('threads')} threads)", "", _speed_conditions(mine), ""]
        if cross:
            lines += [f"crossover: the shortest measured length from which the mechanism is "
                      f"faster than softmax and needs less {memory}, at every longer length "
                      "measured (never: not by the longest)."]
        if errors:
            lines += ["error vs softmax: ||y - y*|| / ||y*|| of the mixer's output against "
                      "exact softmax attention through its own projections, at its "
                      "initialization on random inputs, at the longest length measured."]
        if cross or errors:
            lines.append("")
        unit = "state MiB" if pass_ == "decode" else "MiB"
        extra = [f"{unit} L={lengths[-1]}"] + extra
        lines += ["| mixer | " + " | ".join([f"L={n}" for n in lengths] + extra) + " |",
                  "|---" * (len(lengths) + len(extra) + 1) + "|"]
        for mixer in sorted({r["mixer"] for r in mine}):
            cells = []
            for n in lengths:
                row = next((r for r in mine if r["mixer"] == mixer and r["length"] == n), None)
                cells.append("-" if row is None else _time_cell(row))
            longest = next((r for r in mine if r["mixer"] == mixer
                            and r["length"] == lengths[-1] and r["status"] == "ok"), None)
            cells.append(mib(None if longest is None else memory_of(longest)))
            if cross:
                cells.append("baseline" if mixer == BASELINE else
                             "never" if cross.get(mixer) is None else f"L={cross[mixer]}")
            if errors:
                cells.append(f"{errors[mixer][1]:.3g} (L={errors[mixer][0]})"
                             if mixer in errors else "-")
            lines.append(f"| {mixer} | " + " | ".join(cells) + " |")
        lines.append("")
    linearized = store.linearize_rows()
    if linearized:
        lines += [linearize_markdown(linearized)]
    compressed = store.compress_rows()
    if compressed:
        from attnarena.arena.compress_report import compress_markdown

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


def _time_cell(row) -> str:
    """Median ms with half its interquartile range, and the flags of its conditions."""
    if row["status"] != "ok":
        return row["status"]
    text = f"{row['median_ms']:.2f}"
    if row.get("q1_ms") is not None and row.get("q3_ms") is not None:
        text += f" ±{(row['q3_ms'] - row['q1_ms']) / 2:.2g}"
    marks = row.get("flags") or []
    return text + (f" ({', '.join(marks)})" if marks else "")


def _span(values) -> str:
    return str(values[0]) if values[0] == values[-1] else f"{values[0]}-{values[-1]}"


def _speed_conditions(rows) -> str:
    """How the sweep's rows were timed: repeats, calls per sample, the machine's pace, the
    rule for a difference, and the flags."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("repeats")]
    if not ok:
        return ("Timed before spreads were kept: medians only, and a difference is a "
                "difference of medians.")
    repeats = sorted({r["repeats"] for r in ok})
    calls = sorted({r.get("iterations") or 1 for r in ok})
    pace = sorted({round(r["matmul_gflops"]) for r in ok if r.get("matmul_gflops")})
    after = sorted({round(r["matmul_gflops_after"]) for r in ok
                    if r.get("matmul_gflops_after")})
    flagged = sum(bool(r.get("flags")) for r in ok)
    return (f"Each time is the median of {_span(repeats)} samples, each the mean of "
            f"{_span(calls)} calls, ± half the "
            "interquartile range; a mechanism is faster than softmax only where the two "
            "interquartile ranges do not overlap (otherwise a tie, never a crossover). "
            + (f"Matmul pace when the sweeps began: {', '.join(map(str, pace))} GFLOP/s"
               + (f", when they ended: {', '.join(map(str, after))}" if after else "")
               + ". " if pace else "")
            + f"busy: other processes used over a quarter of the cores while it was timed; "
            f"noisy: the interquartile range exceeds a quarter of the median ({flagged} of "
            f"{len(ok)} times flagged).")


def _speed_cells(row, lengths):
    """ms at each length, with the speed-up over the original timed in the same call
    where the row kept it; then peak MiB at each length."""
    speed, baseline = row.get("speed") or {}, row.get("baseline_speed") or {}
    times = []
    for n in lengths:
        ms = (speed.get(str(n)) or {}).get("ms")
        base = (baseline.get(str(n)) or {}).get("ms")
        times.append(_fmt(ms, ".1f") + (f" ({base / ms:.2f}x)" if ms and base else ""))
    memory = [_fmt((speed.get(str(n)) or {}).get("peak_mb"), ".0f") for n in lengths]
    return times + memory


def linearize_markdown(rows) -> str:
    """Tables of linearization rows: pretrained encoders (agreement with the teacher, speed)
    and arena runs (test metric against training the mechanism from scratch)."""
    lines = []
    encoders = [r for r in rows if "mean_cosine" in r]
    if encoders:
        lengths = sorted({int(n) for r in encoders for n in (r.get("speed") or {})})
        first = encoders[0]
        lines += ["## Linearized pretrained encoders", "",
                  f"Agreement with the original on {first.get('test_sentences')} held-out "
                  "sentences: mean cosine of sentence embeddings, overlap of the 10 nearest "
                  "neighbours, Spearman correlation of all pairwise similarities. Stages: "
                  "transfer = attention transfer only; finetune = transfer, then LoRA "
                  f"fine-tuning. Encoder forward of batch {first.get('batch')} "
                  f"on {first.get('hardware')}: median ms (in brackets, the original's time "
                  "over the row's, both from the call that measured the row) and peak MiB.",
                  "",
                  "| model | mixer | softmax layers | stage | steps | cosine | top-10 | "
                  "Spearman | " + " | ".join([f"ms L={n}" for n in lengths]
                                              + [f"MiB L={n}" for n in lengths])
                  + " | params added |",
                  "|---" * (9 + 2 * len(lengths)) + "|"]
        for r in encoders:
            # rows written before the steps taken were recorded: the recipe's steps
            recipe = r["transfer_steps"] + (r["finetune_steps"] if r["stage"] == "finetune"
                                            else 0)
            steps = str(r.get("steps", recipe))
            lines.append(" | ".join([
                f"| {r['source']}", r["mixer"] + _options_text(r.get("options")),
                ",".join(map(str, r.get("keep_softmax") or [])) or "-", r["stage"],
                steps if r["stage"] != "original" else "-", _fmt(r["mean_cosine"], ".4f"),
                _fmt(r["top10_overlap"], ".3f"), _fmt(r["spearman"], ".4f"),
                *_speed_cells(r, lengths), f"{r.get('params_added', 0):,}"]) + " |")
        lines.append("")
    runs = [r for r in rows if "mean_cosine" not in r]
    if runs:
        lines += ["## Linearized arena models", "",
                  "A trained softmax run linearized (transfer: attention transfer only; "
                  "finetune: transfer, then LoRA fine-tuning on the task) against the same "
                  "mechanism trained from scratch for as many steps.", "",
                  "| run | task | mixer | stage | steps | test | params added |",
                  "|---|---|---|---|---|---|---|"]
        for r in runs:
            added = r.get("params_added")
            lines.append(f"| {r['source']} | {r['task']} | {r['mixer']}"
                         f"{_options_text(r.get('options'))} | {r['stage']} | {r['steps']} | "
                         f"{format_metric(r['test'], r['metric'])} | "
                         f"{'-' if added is None else f'{added:,}'} |")
        lines.append("")
    return "\n".join(lines)


def _options_text(options) -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in sorted(options.items()))})" if options else ""
