"""Writing a speed sweep: CSV and JSON rows, and a log-log plot of time and memory."""
from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

from attnarena.arena.measure.conditions import compare
from attnarena.arena.report.style import (coinciding, label_log_axis, legend_outside, mib,
                                          mixer_style, pyplot)

COLUMNS = ["mixer", "length", "pass", "status", "median_ms", "min_ms", "q1_ms", "q3_ms",
           "repeats", "iterations", "others_share", "flags", "matmul_gflops", "tokens_per_s",
           "peak_mem_mb", "state_mb", "rel_error", "batch", "heads", "head_dim", "dtype",
           "causal", "hardware", "threads", "torch"]


def write_speed(result: dict, out_dir, stem: str = "speed") -> dict:
    """Write {stem}.csv, {stem}.json and {stem}.png under out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = result["meta"]["environment"]
    paths = {"csv": out / f"{stem}.csv", "json": out / f"{stem}.json",
             "png": out / f"{stem}.png"}
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in result["rows"]:
            writer.writerow({**env, **row})
    paths["json"].write_text(json.dumps(result, indent=2, default=str))
    plot_speed(result, paths["png"])
    return paths


def plot_speed(result: dict, path) -> None:
    """Time (left) and memory (right) against length, log-log, one colour per mechanism.

    For the decode pass the right panel is what the decoding state holds (a KV cache's
    keys and values of the context or window, not its buffers; a recurrent state), which is
    what grows with context; for the other passes, the peak
    memory of one call. Values of 0 cannot sit on a log axis: the figure names them.
    """
    plt = pyplot()
    rows = [r for r in result["rows"] if r.get("status") == "ok"]
    cfg = result["meta"]["config"]
    env = result["meta"]["environment"]
    decode = cfg["pass_"] == "decode"
    key, what_mem = (("state_mb", "decoding state held (K, V in context or window; "
                                  "recurrent state)") if decode
                     else ("peak_mem_mb", "peak memory of one call"))
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(13, 4.8))
    zero, lengths, times, mems = [], [], [], []
    series = {ax_time: {}, ax_mem: {}}
    for label in dict.fromkeys(r["mixer"] for r in result["rows"]):
        mine = sorted((r for r in rows if r["mixer"] == label), key=lambda r: r["length"])
        if not mine:
            continue
        lengths += [r["length"] for r in mine]
        times += [r["median_ms"] for r in mine]
        series[ax_time][label] = {r["length"]: r["median_ms"] for r in mine}
        mem = {r["length"]: r[key] for r in mine if r.get(key)}
        if len(mem) < len(mine):
            zero.append(label)
        if mem:
            mems += list(mem.values())
            series[ax_mem][label] = mem
    flagged = [r for r in rows if r.get("flags")]
    for r in flagged:  # a time taken on a busy machine or with a wide spread, ringed
        ax_time.plot([r["length"]], [r["median_ms"]], marker="o", markersize=14,
                     markerfacecolor="none", markeredgecolor="red", linestyle="none",
                     zorder=4)
    notes = ["ringed in red: times flagged busy (others used over a quarter of the cores) "
             "or noisy (spread over a quarter of the median): "
             + ", ".join(f"{r['mixer']} L={r['length']} ({', '.join(r['flags'])})"
                         for r in flagged)] if flagged else []
    for ax, panel in series.items():
        # a series drawn over an earlier one is drawn hollow and larger, so both show
        under = {b: a for a, b in coinciding(panel)}
        for label, points in panel.items():
            style = mixer_style(label)
            if label in under:
                style.update(markerfacecolor="none", markersize=10, markeredgewidth=1.5)
            ax.plot(*zip(*sorted(points.items())), label=label, **style)
        if under:
            what = "times" if ax is ax_time else "memory"
            notes.append(f"{what} drawn over each other (within 3%): "
                         + ", ".join(f"{b} over {a}" for b, a in under.items())
                         + " (hollow markers)")
    pass_name = {"fwd": "forward", "fwdbwd": "forward + backward",
                 "decode": "one decode step"}[cfg["pass_"]]
    ax_time.set_title(f"Time of {pass_name}")
    ax_time.set_ylabel("median time (ms)")
    ax_mem.set_title(what_mem[0].upper() + what_mem[1:])
    ax_mem.set_ylabel(f"{'state size' if decode else 'peak memory'} (MiB)")
    if zero:
        ax_mem.text(0.01, 0.01, f"0 MiB (not drawn on a log axis): {', '.join(zero)}",
                    transform=ax_mem.transAxes, fontsize=7, va="bottom")
    for ax, values in ((ax_time, times), (ax_mem, mems)):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length" if decode else "sequence length")
        ax.grid(True, which="both", alpha=0.3)
        label_log_axis(ax.xaxis, lengths, at_values=True)
        label_log_axis(ax.yaxis, values)
    handles, labels = ax_time.get_legend_handles_labels()
    legend_outside(ax_mem, handles, labels, title="mechanism")
    fig.suptitle(f"{'causal' if cfg['causal'] else 'noncausal'}, batch {cfg['batch']}, "
                 f"{cfg['heads']} heads x {cfg['head_dim']}, {cfg['dtype']} on {env['hardware']} "
                 f"({env['threads']} threads, torch {env['torch']})", fontsize=9)
    fig.tight_layout()
    cross = crossovers(result["rows"])
    lines = []
    if cross:  # a footnote under the panels: where each mechanism overtakes the baseline
        memory = "decoding state" if decode else "peak memory"
        text = "; ".join(f"{m} {'never' if n is None else n}" for m, n in cross.items())
        lines = textwrap.wrap(f"Crossover (shortest length from which faster than {BASELINE}, "
                              f"beyond the spread, with less {memory}, at every longer "
                              f"length): {text}", 150)
    for note in notes:
        lines += textwrap.wrap(note, 150)
    if lines:
        fig.subplots_adjust(bottom=0.12 + 0.035 * len(lines))
        fig.text(0.01, 0.01, "\n".join(lines), fontsize=7.5, va="bottom")
    fig.savefig(path, dpi=110)
    plt.close(fig)


BASELINE = "softmax"
SWEEP_KEYS = ("pass", "causal", "batch", "heads", "head_dim", "dtype")


def sweep_groups(rows: list) -> dict:
    """Speed rows grouped by the settings a sweep holds fixed (pass, causality, batch,
    heads, head size, dtype), so a table or plot never mixes two kinds of case; each group
    named by a stem: ``speed-PASS``, with the settings added when a pass has several."""
    groups = {}
    for row in rows:
        key = tuple(row.get(k) for k in SWEEP_KEYS)
        groups.setdefault(key, []).append(row)
    passes = [key[0] for key in groups]
    named = {}
    for key, mine in sorted(groups.items(), key=lambda item: (item[0][0], -len(item[1]))):
        pass_, causal, batch, heads, head_dim, dtype = key
        stem = f"speed-{pass_}"
        if passes.count(pass_) > 1 and any(stem == s for s, _ in named.values()):
            stem += (f"-{'causal' if causal else 'noncausal'}-b{batch}-h{heads}x{head_dim}"
                     f"-{dtype}")
        named[key] = (stem, mine)
    return named


def memory_of(row: dict):
    """The memory a row is judged by: peak memory, or the state held for decoding."""
    return row.get("state_mb") if row.get("pass") == "decode" else row.get("peak_mem_mb")


def crossovers(rows: list, baseline: str = BASELINE) -> dict:
    """Per mechanism (rows of one pass), the shortest measured length from which it is
    faster than ``baseline`` (interquartile ranges apart: a tie is not faster) and uses
    less memory at every longer measured length (CAB's efficiency length); None when it
    never is. Empty without the baseline's rows."""
    ok = [r for r in rows if r.get("status") == "ok"]
    base = {r["length"]: r for r in ok if r["mixer"] == baseline}
    if not base:
        return {}
    found = {}
    for mixer in dict.fromkeys(r["mixer"] for r in rows if r["mixer"] != baseline):
        mine = {r["length"]: r for r in ok if r["mixer"] == mixer}
        shared = sorted(set(mine) & set(base))
        winning = [n for n in shared
                   if None not in (memory_of(mine[n]), memory_of(base[n]))
                   and compare(mine[n], base[n]) == "faster"
                   and memory_of(mine[n]) < memory_of(base[n])]
        crossover = None
        for n in reversed(shared):  # the longest suffix of lengths where it wins
            if n not in winning:
                break
            crossover = n
        found[mixer] = crossover
    return found


def errors_at_longest(rows: list) -> dict:
    """Per mechanism, (length, relative error against exact softmax attention) at the
    longest length where the error was measured."""
    found = {}
    for r in sorted(rows, key=lambda r: r["length"]):
        if r.get("rel_error") is not None:
            found[r["mixer"]] = (r["length"], r["rel_error"])
    return found


def speed_markdown(rows) -> list[str]:
    """The speed sections of the leaderboard: one table per sweep (pass, causality, batch,
    heads, head size, dtype), median ms ± half the interquartile range at each length, the
    memory at the longest, crossovers and errors against softmax."""
    lines = []
    for (pass_, causal, *_), (stem, mine) in sweep_groups(rows).items():
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
    return lines


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
