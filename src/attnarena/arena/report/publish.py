"""The report's files: leaderboard.md, and the plots (quality against training throughput,
training curves, time and memory against length, linearization and compression)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from attnarena.arena.compress_report import by_source, plot_compression
from attnarena.arena.plotstyle import (keep_ticks_within, label_log_axis, legend_outside,
                                        mixer_style, plural,
                                       pyplot)
from attnarena.arena.choose import store_answer
from attnarena.arena.report import (best_runs, leaderboard_markdown, leaderboard_rows,
                                    run_label, swept_keys, training_conditions)
from attnarena.arena.speed_report import plot_speed, sweep_groups

MIN_ACCURACY_SPAN = 0.1  # a y axis spanning less than this would magnify noise


def build_reports(store, out_dir) -> list[Path]:
    """Write leaderboard.md and the PNG plots under out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "leaderboard.md"]
    board = leaderboard_markdown(store)
    answer = store_answer(store)
    if answer:  # the arena's answer first: quality joined with time and memory
        title, _, rest = board.partition("\n")
        board = (f"{title}\n\n## Which mechanism: quality, time and memory together\n\n"
                 "Quality from the tasks below; time and peak memory of the mechanism alone "
                 "at the longest length the speed sweep measured (`attnarena choose --length "
                 "L` answers for another length, measuring what is missing).\n\n"
                 f"{answer}\n{rest}")
    paths[0].write_text(board)
    rows = leaderboard_rows(store)
    if any(r["metric"] == "accuracy" for r in rows):
        paths += [plot_quality_vs_speed(rows, out / "quality_vs_speed.png"),
                  plot_curves(rows, store, out / "training_curves.png")]
    for (pass_, causal, batch, heads, head_dim, dtype), (stem, mine) in \
            sweep_groups(store.speed_rows()).items():
        result = {"rows": mine, "meta": {
            "config": {"pass_": pass_, "causal": True if causal is None else causal,
                       "batch": batch, "heads": heads, "head_dim": head_dim, "dtype": dtype},
            "environment": mine[0]["environment"]}}
        path = out / f"{stem}.png"
        plot_speed(result, path)
        paths.append(path)
    encoders = [r for r in store.linearize_rows() if "mean_cosine" in r]
    if encoders:
        paths.append(plot_linearization(encoders, out / "linearization.png"))
    if by_source(store.compress_rows()):
        paths.append(plot_compression(store.compress_rows(), out / "compression.png"))
    return paths


def _variant(row) -> str:
    """A linearized model's label: mechanism, options and the layers kept softmax."""
    label = row["mixer"]
    if row.get("options"):
        label += " (" + ", ".join(f"{k}={v}" for k, v in sorted(row["options"].items())) + ")"
    if row.get("keep_softmax"):
        label += " + softmax in " + ",".join(map(str, row["keep_softmax"]))
    if row.get("loss", "mse") != "mse" and row["stage"] != "original":
        label += f" [{row['loss']} loss]"
    return label


def plot_linearization(rows, path):
    """Linearized pretrained encoders: agreement with the original after each stage, and
    encoder time and peak memory against length beside the original's."""
    plt = pyplot()
    fig, (quality, timing, memory) = plt.subplots(1, 3, figsize=(17, 4.8))
    finals = [r for r in rows if r["stage"] in ("original", "finetune")]
    labels = sorted({_variant(r) for r in rows if r["stage"] != "original"})
    for offset, stage, colour in ((-0.2, "transfer", "#9ecae1"), (0.2, "finetune", "#3182bd")):
        values = [next((r["mean_cosine"] for r in rows
                        if r["stage"] == stage and _variant(r) == label), 0.0)
                  for label in labels]
        quality.barh([i + offset for i in range(len(labels))], values, height=0.4,
                     color=colour, label="attention transfer" if stage == "transfer"
                     else "transfer + fine-tuning")
        for i, value in enumerate(values):  # bars start at 0: the value is written on each
            quality.text(value, i + offset, f" {value:.3f}", va="center", fontsize=7)
    quality.set_yticks(range(len(labels)), labels, fontsize=8)
    quality.set_xlim(0.0, 1.12)
    keep_ticks_within(quality.xaxis, 0.0, 1.0)
    quality.set_xlabel("mean cosine with the original's sentence embeddings")
    quality.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2,
                   frameon=False)
    quality.set_title(f"agreement on {rows[0].get('test_sentences')} held-out sentences")
    plotted = {timing: [], memory: []}
    for row in finals:
        speed = row.get("speed") or {}
        lengths = sorted(int(n) for n in speed)
        label = "original (softmax)" if row["stage"] == "original" else _variant(row)
        style = mixer_style("softmax" if row["stage"] == "original" else row["mixer"])
        times = [speed[str(n)]["ms"] for n in lengths]
        timing.plot(lengths, times, label=label, **style)
        plotted[timing] += times
        peaks = [speed[str(n)]["peak_mb"] for n in lengths]
        if all(p is not None for p in peaks):
            memory.plot(lengths, peaks, label=label, **style)
            plotted[memory] += peaks
    for ax, what in ((timing, "forward time (ms)"), (memory, "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(what)
        label_log_axis(ax.xaxis, sorted({int(n) for r in finals for n in (r.get("speed") or {})}),
                       at_values=True)
        label_log_axis(ax.yaxis, plotted[ax])
    legend_outside(memory)
    first = rows[0]
    timing.set_title(f"encoder forward, batch {first.get('batch')}, {first.get('hardware')}")
    memory.set_title("peak memory of that forward")
    fig.suptitle(f"linearized {first['source']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path



def plot_quality_vs_speed(rows, path):
    """One panel per task: each mechanism's test accuracy (its best setting, mean over
    seeds) against the training throughput of those same runs, with the Pareto front.
    Throughputs of different tasks differ by orders of magnitude (lengths, batch sizes), so
    they are never averaged across tasks; the axis says how they were measured."""
    plt = pyplot()
    panels = defaultdict(list)
    for (mixer, _, problem), (value, runs) in best_runs(rows).items():
        speed = sum(r["tokens_per_s"] for r in runs) / len(runs)
        panels[problem].append((speed, value, mixer))
    tasks = sorted(panels)
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.2 * len(tasks) + 2.3, 4.8),
                             squeeze=False)
    handles = {}
    for ax, task in zip(axes[0], tasks):
        points = sorted(panels[task])
        for speed, acc, mixer in points:
            style = mixer_style(mixer)
            handles[mixer] = ax.scatter(speed, acc, s=50, color=style["color"],
                                        marker=style["marker"], label=mixer, zorder=3)
        front, best = [], -1.0
        for speed, acc, _ in sorted(points, key=lambda p: -p[0]):
            if acc > best:
                front.append((speed, acc))
                best = acc
        # the front: mechanisms no other beats on both axes (one point when one beats all)
        handles["Pareto front"] = ax.plot(
            *zip(*sorted(front)), linestyle="--", color="gray", marker="o", markersize=13,
            markerfacecolor="none", label="Pareto front", zorder=2)[0]
        accs = [p[1] for p in points]
        low, high = min(accs), max(accs)
        pad = max(0.0, MIN_ACCURACY_SPAN - (high - low)) / 2 + 0.02
        # past 1.0 too, so a marker at 1.0 is drawn whole; no tick is labelled past 1.0
        ax.set_ylim(low - pad, high + pad)
        keep_ticks_within(ax.yaxis, 0.0, 1.0)
        ax.set_xscale("log")
        label_log_axis(ax.xaxis, [p[0] for p in points])
        ax.set_xlabel("training throughput (tokens/s over each run's training)")
        ax.set_ylabel("test accuracy (best setting, mean over seeds)")
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
