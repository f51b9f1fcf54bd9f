"""Compression in the report: a table per source model (each recipe's quality, size and
latency as ratios to the uncompressed model), the outlier measures beside the W8A8 drop,
and a plot of quality against size and against latency with the Pareto front."""
from __future__ import annotations

from collections import defaultdict

from attnarena.arena.report.style import keep_ticks_within, legend_outside, pyplot

W8A8 = "int_static"  # the recipe label of 8-bit weights and static 8-bit activations
MIN_SPAN = 0.05  # the least range a quality axis spans (a metric in [0, 1])


def _ms(row, where: str, batch: str, factor: str = "1", key: str = "speed"):
    speed = row.get(key) or {}
    part = speed.get("model", {}) if where == "model" else speed.get("blocks", {}).get(factor, {})
    return (part.get(batch) or {}).get("ms")


def _base_ms(row, where: str, batch: str, factor: str = "1"):
    """The uncompressed model's time from the same call as ``row``'s (None for rows stored
    before each row kept its call's baseline: their ratio is not shown)."""
    return _ms(row, where, batch, factor, key="baseline_speed")


def _peak(row, factor="4", batch="32"):
    if row.get("backend") == "onnxruntime":
        # its own allocator keeps what a first call took: one more call's rise is not its peak
        return None
    return ((row.get("speed") or {}).get("blocks", {}).get(factor, {}).get(batch) or {}).get(
        "peak_mb")


def by_source(rows) -> dict[str, tuple[dict, list[dict]]]:
    """{source: (the uncompressed row, [compressed rows])}, sources with a float row."""
    groups = defaultdict(list)
    for row in rows:
        groups[row["source"]].append(row)
    out = {}
    for source, mine in groups.items():
        base = next((r for r in mine if r["recipe"] == "float"), None)
        if base is not None:
            out[source] = (base, [r for r in mine if r["recipe"] != "float"])
    return out


def _kib(value):
    return "-" if value is None else f"{value / 1024:,.1f}"


def _ratio(a, b, spec=".2f"):
    return "-" if a is None or b is None or not b else f"{a / b:{spec}}x"


def _cell(row, where, batch, factor="1", key="speed"):
    speed = row.get(key) or {}
    part = speed.get("model", {}) if where == "model" else speed.get("blocks", {}).get(factor, {})
    return part.get(batch) or {}


def _speed_up(row, where, batch, factor="1") -> str:
    """The baseline's time over the row's, from one call; "(tie)" when their interquartile
    ranges overlap, so a difference inside the noise is not read as a speed-up."""
    mine, base = _cell(row, where, batch, factor), _cell(row, where, batch, factor,
                                                         "baseline_speed")
    text = _ratio(base.get("ms"), mine.get("ms"))
    if text == "-" or row.get("recipe") == "float":
        return text
    bounds = (mine.get("q1_ms"), mine.get("q3_ms"), base.get("q1_ms"), base.get("q3_ms"))
    if None not in bounds and not (bounds[1] < bounds[2] or bounds[3] < bounds[0]):
        text += " (tie)"
    return text


def _points(row, base):
    if row["metric"] == "accuracy":
        return f"{100 * (row['test'] - base['test']):+.2f} pts"
    return f"{row['test'] - base['test']:+.4f}"


def _value(row):
    return f"{100 * row['test']:.2f}%" if row["metric"] == "accuracy" else f"{row['test']:.4f}"


def backend_label(row) -> str:
    """What runs a row's model: "torch", "torch bfloat16" or "ONNX Runtime"."""
    if row.get("backend") == "onnxruntime":
        return "ONNX Runtime"
    return "torch bfloat16" if "bfloat16" in str(row.get("runtime", "")) else "torch"


BACKEND_MARKERS = {"torch": "o", "torch bfloat16": "s", "ONNX Runtime": "^"}


def compress_markdown(rows) -> str:
    """Tables of the compress rows: per source, every recipe against the float model."""
    lines = ["## Compressed models", "",
             "Each recipe against its uncompressed model, measured side by side: test "
             "metric and its change; weight bytes as saved (safetensors), all of them and "
             "those of the linear layers (what the methods compress; embeddings and norms "
             "are the rest), and how many times smaller; parameters; speed-up of the whole "
             "model at the task's length (batch 1 and 32) and time of its blocks at 4x that "
             "length (batch 32; a pretrained encoder: the whole encoder), with peak memory "
             "there. Each speed-up divides the uncompressed model's time by the recipe's, "
             "both from one call of attnarena compress (a row stored before rows kept their "
             "call's baseline shows -: compress it again to time it); (tie) where the two "
             "times' interquartile ranges overlap. A pretrained encoder's metric is the mean "
             "cosine with the original's sentence embeddings. Backend: what runs the model "
             "(torch, or ONNX Runtime for a recipe ending in ort, ort_int8 or "
             "ort_int8_static; a graph's size is its .onnx file, its blocks are not timed "
             "apart and its peak memory is not shown: ONNX Runtime's allocator keeps what "
             "its first call took).", ""]
    groups = by_source(rows)
    for source, (base, compressed) in groups.items():
        options = base.get("mixer_options") or {}
        mixer = base["mixer"] + (f" ({', '.join(f'{k}={v}' for k, v in sorted(options.items()))})"
                                 if options else "")
        out = base.get("outliers") or {}
        lines += [f"### {source}: {mixer} on {base['task']}", "",
                  f"Float: {_value(base)} {base['metric']}, {base['bytes'] / 1024:,.1f} KiB, "
                  f"{base['params']:,} parameters; outliers: max |block output| "
                  f"{out.get('max_inf_norm', float('nan')):.1f}, kurtosis "
                  f"{out.get('kurtosis', float('nan')):.1f}. {base.get('hardware', '')}.", "",
                  "| recipe | backend | test | change | KiB | smaller | linear KiB | smaller | "
                  "params | speed-up b1 | speed-up b32 | blocks 4L b32 | MiB 4L b32 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in [base] + compressed:
            blocks = _ms(row, "blocks", "32", "4")
            lines.append(" | ".join([
                f"| {row['recipe']}", backend_label(row), _value(row),
                _points(row, base) if row is not base else "-",
                f"{row['bytes'] / 1024:,.1f}", _ratio(base["bytes"], row["bytes"]),
                _kib(row.get("linear_bytes")),
                _ratio(base.get("linear_bytes"), row.get("linear_bytes")),
                f"{row['params']:,}",
                _speed_up(row, "model", "1"), _speed_up(row, "model", "32"),
                "-" if blocks is None else f"{blocks:.1f} ms "
                f"({_speed_up(row, 'blocks', '32', '4')})",
                "-" if _peak(row) is None else f"{_peak(row):.1f}"]) + " |")
        lines.append("")
    lines += outlier_markdown(groups)
    return "\n".join(lines)


def outlier_markdown(groups) -> list[str]:
    """Float models with their outlier measures and the accuracy W8A8 costs them."""
    found = []
    for source, (base, compressed) in groups.items():
        w8a8 = next((r for r in compressed if r["recipe"] == W8A8), None)
        if w8a8 is not None and base.get("outliers"):
            found.append((source, base, w8a8))
    if not found:
        return []
    lines = ["### Activation outliers and 8-bit quantization", "",
             "Bondarenko et al. 2023: the largest block output and the kurtosis of block "
             "outputs of each float model, and its change under W8A8 (8-bit weights, static "
             "per-tensor 8-bit activations).", "",
             "| source | task | mixer | float | max inf norm | kurtosis | W8A8 | change |",
             "|---|---|---|---|---|---|---|---|"]
    for source, base, w8a8 in sorted(found, key=lambda f: (f[1]["task"], f[0])):
        options = base.get("mixer_options") or {}
        mixer = base["mixer"] + "".join(f" {k}={v}" for k, v in sorted(options.items()))
        lines.append(f"| {source} | {base['task']} | {mixer} | {_value(base)} | "
                     f"{base['outliers']['max_inf_norm']:.1f} | "
                     f"{base['outliers']['kurtosis']:.1f} | {_value(w8a8)} | "
                     f"{_points(w8a8, base)} |")
    lines.append("")
    return lines


def pareto(points, higher_is_better=True):
    """Indices of the points (cost, quality) no other point beats on both."""
    sign = 1 if higher_is_better else -1
    front = []
    for i, (cost, quality) in enumerate(points):
        if not any((c <= cost and sign * q >= sign * quality)
                   and (c < cost or sign * q > sign * quality)
                   for j, (c, q) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_compression(rows, path):
    """One row of panels per source: quality against weight bytes and against whole-model
    latency at batch 32 (relative to the float model), Pareto front drawn, each point's
    marker its backend (torch, torch bfloat16, ONNX Runtime)."""
    plt = pyplot()
    groups = by_source(rows)
    fig, axes = plt.subplots(len(groups), 2, figsize=(13, 4.2 * len(groups)), squeeze=False)
    for (source, (base, compressed)), (size_ax, time_ax) in zip(groups.items(), axes):
        mine = [base] + compressed
        better = base.get("higher_is_better", True)
        for ax, cost, label in ((size_ax, lambda r: r["bytes"] / base["bytes"],
                                 "weight bytes / float"),
                                (time_ax, lambda r: _ms(r, "model", "32")
                                 / _base_ms(r, "model", "32"),
                                 "latency (whole model, batch 32) / float, same call")):
            shown = [r for r in mine if ax is size_ax or (_ms(r, "model", "32")
                                                          and _base_ms(r, "model", "32"))]
            points = [(cost(r), r["test"]) for r in shown]
            for (x, y), row in zip(points, shown):
                ax.scatter([x], [y], color="black" if row is base else "#3182bd", s=26,
                           marker=BACKEND_MARKERS[backend_label(row)], zorder=3)
                ax.annotate(row["recipe"], (x, y), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")
            front = pareto(points, better)
            ax.plot([points[i][0] for i in front], [points[i][1] for i in front],
                    color="#e6550d", lw=1.2, label="Pareto front", zorder=2)
            if ax is time_ax:
                for name in sorted({backend_label(r) for r in shown}):
                    ax.scatter([], [], color="#3182bd", marker=BACKEND_MARKERS[name], s=26,
                               label=name)
            ax.set_xscale("log", base=2)
            ax.set_xlabel(label)
            ax.set_ylabel(f"test {base['metric']}")
            # a span of at least MIN_SPAN, so noise in the third decimal is not a trend
            values = [y for _, y in points] or [base["test"]]
            middle, span = (min(values) + max(values)) / 2, max(values) - min(values)
            half = max(span * 0.6, MIN_SPAN / 2)
            ax.set_ylim(middle - half, middle + half)
            if base["metric"] == "accuracy":
                keep_ticks_within(ax.yaxis, 0.0, 1.0)
            ax.margins(x=0.15)
            ax.grid(alpha=0.3)
        legend_outside(time_ax)
        options = "".join(f" {k}={v}" for k, v in sorted((base.get("mixer_options") or {}).items()))
        size_ax.set_title(f"{source}: {base['mixer']}{options} on {base['task']}", fontsize=10)
        time_ax.set_title(base.get("hardware", ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
