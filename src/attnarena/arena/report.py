"""Reports from the store only: the leaderboard, plots, and machine-readable tables."""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

from attnarena.arena.speed_report import plot_speed

COLUMNS = ["task", "mixer", "preset", "seed", "dim", "lr", "metric", "test", "best_val",
           "tokens_per_s", "peak_mem_mb", "params", "steps", "train_seconds", "id"]


def leaderboard_rows(store) -> list[dict]:
    rows = []
    for run in store.runs(status="done"):
        m = run["metrics"]
        metric = m.get("metric", "accuracy")
        config = run.get("config") or {}
        rows.append({"task": run["task"], "mixer": run["mixer"], "preset": run["preset"],
                     "seed": run["seed"], "dim": config.get("model", {}).get("dim"),
                     "lr": config.get("train", {}).get("lr"),
                     "setting": _setting(config), "problem": _problem(run, config),
                     "metric": metric, "test": m[f"test_{metric}"],
                     "best_val": m[f"best_val_{metric}"],
                     "tokens_per_s": m["tokens_per_s"], "peak_mem_mb": m["peak_mem_mb"],
                     "params": m["params"], "steps": m["steps"],
                     "train_seconds": m["train_seconds"], "id": run["id"]})
    return rows


def _accuracy_rows(rows):
    return [r for r in rows if r["metric"] == "accuracy"]


def _order(row):
    """Best first: highest accuracy, lowest error."""
    return -row["test"] if row["metric"] == "accuracy" else row["test"]


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


def best_settings(rows) -> dict:
    """{(mixer, preset, problem): best mean test accuracy over seeds among the settings
    run}, so that a sweep (say over learning rates) counts by its best setting, as Zoology
    and LRA report."""
    by_setting = defaultdict(list)
    for r in _accuracy_rows(rows):
        by_setting[(r["mixer"], r["preset"], r["problem"], r["setting"])].append(r["test"])
    best = {}
    for (mixer, preset, problem, _), values in by_setting.items():
        mean = sum(values) / len(values)
        best[(mixer, preset, problem)] = max(mean, best.get((mixer, preset, problem), -1.0))
    return best


def averages(rows) -> list[tuple]:
    """LRA-style average test accuracy per (mixer, preset) over the tasks it ran on all of
    (tasks scored by accuracy only; per task the best setting, each averaged over seeds)."""
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


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def leaderboard_markdown(store) -> str:
    rows = leaderboard_rows(store)
    lines = ["# attnarena leaderboard", ""]
    unfinished = [r for status in ("diverged", "failed", "interrupted", "running")
                  for r in store.runs(status=status)]
    if not rows:
        lines.append("No finished runs in the store yet.")
    for task in sorted({r["task"] for r in rows}):
        mine = sorted((r for r in rows if r["task"] == task), key=_order)
        metric = mine[0]["metric"]
        lines += [f"## {task}", "",
                  f"| mixer | preset | seed | dim | lr | test {metric} | best val {metric} | "
                  "train tokens/s | peak MiB | params |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in mine:
            lines.append(f"| {r['mixer']} | {r['preset']} | {r['seed']} | {r['dim']} | "
                         f"{_fmt(r['lr'], 'g')} | "
                         f"{r['test']:.4g} | {r['best_val']:.4g} | "
                         f"{_fmt(r['tokens_per_s'], ',.0f')} | {_fmt(r['peak_mem_mb'], '.0f')} | "
                         f"{r['params']:,} |")
        lines.append("")
    avg = averages(rows)
    if avg and len({r["problem"] for r in _accuracy_rows(rows)}) > 1:
        lines += ["## Average over tasks (LRA-style)", "",
                  "Per task the best setting of a sweep (each averaged over its seeds).", "",
                  "| mixer | preset | mean test acc |", "|---|---|---|"]
        lines += [f"| {m} | {p} | {a:.3f} |" for m, p, a in avg]
        lines.append("")
    speed = store.speed_rows()
    for pass_ in sorted({r["pass"] for r in speed}):
        mine = [r for r in speed if r["pass"] == pass_]
        lengths = sorted({r["length"] for r in mine})
        env = mine[0]["environment"]
        lines += [f"## Speed: {pass_} (median ms; batch {mine[0].get('batch')}, "
                  f"{mine[0].get('heads')} heads x {mine[0].get('head_dim')}, "
                  f"{mine[0].get('dtype')}, {env.get('hardware')}, "
                  f"{env.get('threads')} threads)", "",
                  "| mixer | " + " | ".join(f"L={n}" for n in lengths) + " |",
                  "|---" * (len(lengths) + 1) + "|"]
        for mixer in sorted({r["mixer"] for r in mine}):
            cells = []
            for n in lengths:
                row = next((r for r in mine if r["mixer"] == mixer and r["length"] == n), None)
                cells.append("-" if row is None else (f"{row['median_ms']:.2f}"
                                                      if row["status"] == "ok" else row["status"]))
            lines.append(f"| {mixer} | " + " | ".join(cells) + " |")
        lines.append("")
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


def build_reports(store, out_dir) -> list[Path]:
    """Write leaderboard.md and the PNG plots under out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "leaderboard.md"]
    paths[0].write_text(leaderboard_markdown(store))
    rows = leaderboard_rows(store)
    if _accuracy_rows(rows):
        paths += [_plot_quality_vs_speed(rows, out / "quality_vs_speed.png"),
                  _plot_curves(store, out / "training_curves.png")]
    speed = store.speed_rows()
    for pass_ in sorted({r["pass"] for r in speed}):
        mine = [r for r in speed if r["pass"] == pass_]
        first = mine[0]
        result = {"rows": mine, "meta": {
            "config": {"pass_": pass_, "causal": first.get("causal", True),
                       "batch": first.get("batch"), "heads": first.get("heads"),
                       "head_dim": first.get("head_dim"), "dtype": first.get("dtype")},
            "environment": first["environment"]}}
        path = out / f"speed-{pass_}.png"
        plot_speed(result, path)
        paths.append(path)
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_quality_vs_speed(rows, path):
    """Mean test accuracy over tasks against training throughput, with the Pareto front."""
    plt = _pyplot()
    rows = _accuracy_rows(rows)
    by_mixer = defaultdict(lambda: {"acc": [], "speed": []})
    for r in rows:
        by_mixer[r["mixer"]]["acc"].append(r["test"])
        by_mixer[r["mixer"]]["speed"].append(r["tokens_per_s"])
    points = sorted((sum(v["speed"]) / len(v["speed"]), sum(v["acc"]) / len(v["acc"]), m)
                    for m, v in by_mixer.items())
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for i, (speed, acc, mixer) in enumerate(points):
        ax.scatter(speed, acc, s=40)
        # alternate label offsets so neighbouring points stay readable
        ax.annotate(mixer, (speed, acc), textcoords="offset points",
                    xytext=(5, 4 if i % 2 else -11), fontsize=9)
    front, best = [], -1.0
    for speed, acc, _ in sorted(points, key=lambda p: -p[0]):
        if acc > best:
            front.append((speed, acc))
            best = acc
    if len(front) > 1:
        ax.plot(*zip(*sorted(front)), linestyle="--", color="gray", label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training throughput (tokens/s, mean over tasks)")
    ax.set_ylabel("test accuracy (mean over tasks)")
    ax.set_title(f"Quality against speed ({len({r['task'] for r in rows})} tasks)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_curves(store, path):
    plt = _pyplot()
    runs = store.runs(status="done")
    tasks = sorted({r["task"] for r in runs})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        metric = "accuracy"
        for run in (r for r in runs if r["task"] == task):
            metric = run["metrics"].get("metric", "accuracy")
            history = run["metrics"].get("history", [])
            if history:
                ax.plot([h["step"] for h in history], [h[f"val_{metric}"] for h in history],
                        marker="o", markersize=3, label=f"{run['mixer']} s{run['seed']}")
        ax.set_title(f"{task}: validation {metric}")
        ax.set_xlabel("training step")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
