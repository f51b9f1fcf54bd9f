"""The linearization section: tables of linearized models (pretrained encoders: agreement
with the original and speed beside it; arena runs: the task metric against the same
mechanism trained from scratch) and the plot of the encoders."""
from __future__ import annotations

from attnarena.arena.report.style import (fmt, format_metric, keep_ticks_within, label_log_axis,
                                          legend_outside, mixer_style, pyplot)

def _speed_cells(row, lengths):
    """ms at each length, with the speed-up over the original timed in the same call
    where the row kept it; then peak MiB at each length."""
    speed, baseline = row.get("speed") or {}, row.get("baseline_speed") or {}
    times = []
    for n in lengths:
        ms = (speed.get(str(n)) or {}).get("ms")
        base = (baseline.get(str(n)) or {}).get("ms")
        times.append(fmt(ms, ".1f") + (f" ({base / ms:.2f}x)" if ms and base else ""))
    memory = [fmt((speed.get(str(n)) or {}).get("peak_mb"), ".0f") for n in lengths]
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
                steps if r["stage"] != "original" else "-", fmt(r["mean_cosine"], ".4f"),
                fmt(r["top10_overlap"], ".3f"), fmt(r["spearman"], ".4f"),
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
