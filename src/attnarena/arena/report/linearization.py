"""The linearization section: tables of linearized models (pretrained encoders: agreement
with the original and speed beside it; arena runs: the task metric against the same
mechanism trained from scratch) and the plot of the encoders."""
from __future__ import annotations

import json

from attnarena.arena.report.seeds import (SOLVED, call_difference, format_range, format_spread,
                                          min_gap, spread)
from attnarena.arena.report.style import (fmt, keep_ticks_within, label_log_axis,
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
    decoders = [r for r in rows if r.get("metric") == "perplexity"]
    if decoders:
        lines += decoder_markdown(decoders)
    runs = [r for r in rows if "mean_cosine" not in r and r.get("metric") != "perplexity"]
    if runs:
        lines += arena_runs_markdown(runs)
    return "\n".join(lines)


STAGES = ("original", "transfer", "finetune", "scratch")


def _teacher(row) -> str:
    """What the row's teacher computed apart from its seed (its run id for rows stored
    before teachers' settings were recorded)."""
    setting = row.get("teacher_setting")
    return row["source"] if setting is None else json.dumps(setting, sort_keys=True)


def _group_key(row) -> tuple:
    """Rows that differ only by the teacher's seed (and the recipe's seed, set from it)."""
    if row["stage"] == "original":
        return (_teacher(row), "original")
    recipe = {k: v for k, v in (row.get("recipe") or {}).items() if k != "seed"}
    return (_teacher(row), row["mixer"], json.dumps(row.get("options") or {}, sort_keys=True),
            json.dumps(recipe, sort_keys=True), row["stage"], row["steps"])


def arena_runs_markdown(runs) -> list[str]:
    """The tables of linearized arena runs (one per metric): per task, mechanism and stage,
    the test metric over the teachers' seeds (mean ± sd, range, n, seeds that solved it)
    and how transfer compares with training the mechanism from scratch for as many
    steps."""
    lines = ["## Linearized arena models", ""]
    for metric in sorted({r["metric"] for r in runs}):
        lines += _arena_runs_table([r for r in runs if r["metric"] == metric], metric)
    return lines


def _arena_runs_table(runs, metric) -> list[str]:
    groups: dict = {}
    for r in runs:
        groups.setdefault(_group_key(r), []).append(r)
    accuracy = metric == "accuracy"
    settings_per_task: dict = {}
    for r in runs:
        settings_per_task.setdefault(r["task"], set()).add(_teacher(r))
    scratch = {key[:4]: rows for key, rows in groups.items()
               if len(key) > 2 and key[4] == "scratch"}

    def order(item):
        key, rows = item
        first = rows[0]
        stage = first["stage"]
        mechanism = "" if stage == "original" else first["mixer"] + key[2]
        return (first["task"], key[0], mechanism, key[3] if len(key) > 2 else "",
                STAGES.index(stage) if stage in STAGES else len(STAGES))

    lines = ["A trained softmax run linearized (transfer: attention transfer only; finetune: "
             "transfer, then LoRA fine-tuning on the task) against the same mechanism trained "
             "from scratch for as many steps. Test "
             f"{metric}: mean ± standard deviation over the teachers' seeds (each "
             "linearization and scratch run at its teacher's seed), and their range"
             + (f"; solved: seeds at or above {SOLVED:g}" if accuracy else "")
             + "; vs scratch: better or worse only where the gap between the means exceeds "
             "the two standard deviations together" + (" and half a point" if accuracy else "")
             + ", else within spread (one seed: not called).", "",
             "| task | mixer | stage | steps | n | seeds | test | min – max | "
             + ("solved | " if accuracy else "") + "vs scratch | params added |",
             "|---" * (10 + accuracy) + "|"]
    for key, rows in sorted(groups.items(), key=order):
        first = rows[0]
        rows = sorted(rows, key=lambda r: r.get("teacher_seed", 0))
        values = spread(r["test"] for r in rows)
        task = first["task"]
        if len(settings_per_task[task]) > 1:  # several teachers of one task: name the first
            task += f" (teacher {first['source']})"
        seeds = [r.get("teacher_seed") for r in rows]
        versus = "-"
        if first["stage"] in ("transfer", "finetune") and key[:4] in scratch:
            versus = call_difference(values, spread(r["test"] for r in scratch[key[:4]]),
                                     first["higher_is_better"], min_gap(metric))
        added = first.get("params_added")
        mixer = first["mixer"] + _options_text(first.get("options"))
        cells = [task, mixer, first["stage"], str(first["steps"]), str(values.n),
                 ",".join("?" if s is None else str(s) for s in seeds),
                 format_spread(values, metric), format_range(values, metric)]
        if accuracy:
            cells.append(f"{values.reached(SOLVED)} of {values.n}")
        cells += [versus, "-" if added is None else f"{added:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def trained_tokens(row) -> int:
    """Tokens a decoder's linearization trained on: steps x windows x window length."""
    recipe = row.get("recipe") or {}
    steps = row["transfer_steps"] + (row["finetune_steps"] if row["stage"] == "finetune" else 0)
    if row["stage"] == "original":
        return 0
    return steps * recipe.get("batch_size", 0) * recipe.get("max_length", 0)


def decoder_markdown(rows) -> list[str]:
    """The table of linearized causal LMs: perplexity at each context and top-1 agreement
    with the original, tokens trained on, prefill time beside the original."""
    contexts = sorted({int(k.rsplit("_", 1)[1]) for r in rows for k in r
                       if k.startswith("perplexity_")})
    lengths = sorted({int(n) for r in rows for n in (r.get("speed") or {})})
    first = rows[0]
    lines = ["## Linearized causal language models", "",
             f"Perplexity on the first {first.get('eval_tokens')} held-out tokens of Python's "
             "documentation at each context, and the share of positions whose most likely "
             "next token is the original's (top-1). Stages: transfer = attention transfer "
             "only; finetune = transfer, then LoRA fine-tuning on next-token loss, merged. "
             f"Tokens: those trained on. Prefill (one forward) of batch {first.get('batch')} on "
             f"{first.get('hardware')}: median ms (in brackets, the original's time over the "
             "row's, from the same call). Decoding speed: `benchmarks/decode_smollm2.py`.", "",
             *_named_models(rows),
             "| model | mixer | softmax layers | stage | tokens | "
             + " | ".join([f"ppl {n}" for n in contexts] + [f"top-1 {n}" for n in contexts]
                          + [f"prefill ms L={n}" for n in lengths]) + " | params added |",
             "|---" * (6 + 2 * len(contexts) + len(lengths)) + "|"]
    for r in rows:
        times = _speed_cells(r, lengths)[:len(lengths)]
        lines.append(" | ".join([
            f"| {r['source']}", r["mixer"] + _options_text(r.get("options")),
            ",".join(map(str, r.get("keep_softmax") or [])) or "-", r["stage"],
            f"{trained_tokens(r):,}" if r["stage"] != "original" else "-",
            *[fmt(r.get(f"perplexity_{n}"), ".2f") for n in contexts],
            *[fmt(r.get(f"top1_agreement_{n}"), ".3f") for n in contexts], *times,
            f"{r.get('params_added', 0):,}"]) + " |")
    lines.append("")
    return lines


def _named_models(rows) -> list[str]:
    """A line naming each model known by name (what its weights are), then a blank."""
    from attnarena.pretrained.encoder import PRETRAINED_MODELS

    named = sorted({r["source"] for r in rows} & set(PRETRAINED_MODELS))
    return [f"{name}: {PRETRAINED_MODELS[name][0]}.\n" for name in named]


def plot_decoder_linearization(rows, path):
    """Linearized causal LMs: perplexity at each context after each stage, beside the
    original's."""
    plt = pyplot()
    contexts = sorted({int(k.rsplit("_", 1)[1]) for r in rows for k in r
                       if k.startswith("perplexity_")})
    labels = sorted({_variant(r) for r in rows if r["stage"] != "original"})
    fig, axes = plt.subplots(1, len(contexts), figsize=(6.5 * len(contexts), 0.6 * len(labels)
                                                         + 2.4), squeeze=False)
    original = next((r for r in rows if r["stage"] == "original"), None)
    for ax, context in zip(axes[0], contexts):
        key = f"perplexity_{context}"
        for offset, stage, colour in ((-0.2, "transfer", "#9ecae1"),
                                      (0.2, "finetune", "#3182bd")):
            values = [next((r[key] for r in rows if r["stage"] == stage
                            and _variant(r) == label and key in r), None) for label in labels]
            places = [i + offset for i, v in enumerate(values) if v is not None]
            shown = [v for v in values if v is not None]
            ax.barh(places, shown, height=0.4, color=colour,
                    label="attention transfer" if stage == "transfer"
                    else "transfer + fine-tuning")
            for y, value in zip(places, shown):
                ax.text(value, y, f" {value:.1f}", va="center", fontsize=7)
        if original is not None and key in original:
            ax.axvline(original[key], color="black", linestyle="--", linewidth=1,
                       label=f"original: {original[key]:.2f}")
        values = [r[key] for r in rows if key in r]
        ax.set_xscale("log")  # a few points of perplexity and a thousand on one axis
        ax.set_xlim(min(values) / 1.5, max(values) * 2)
        label_log_axis(ax.xaxis, values)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel(f"perplexity at context {context} (log scale; lower is better)")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3,
                  frameon=False)
        ax.set_title(f"held-out text, context {context}")
    fig.suptitle(f"linearized {rows[0]['source']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


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
