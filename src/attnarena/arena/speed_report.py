"""Writing a speed sweep: CSV and JSON rows, and a log-log plot of time and memory."""
from __future__ import annotations

import csv
import json
from pathlib import Path

COLUMNS = ["mixer", "length", "pass", "status", "median_ms", "min_ms", "tokens_per_s",
           "peak_mem_mb", "state_mb", "batch", "heads", "head_dim", "dtype", "causal",
           "hardware", "threads", "torch"]


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("status") == "ok"]
    cfg = result["meta"]["config"]
    env = result["meta"]["environment"]
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.8))
    for label in dict.fromkeys(r["mixer"] for r in result["rows"]):
        mine = sorted((r for r in rows if r["mixer"] == label), key=lambda r: r["length"])
        if not mine:
            continue
        lengths = [r["length"] for r in mine]
        ax_time.plot(lengths, [r["median_ms"] for r in mine], marker="o", label=label)
        mem = [(r["length"], r["peak_mem_mb"]) for r in mine if r.get("peak_mem_mb")]
        if mem:
            ax_mem.plot(*zip(*mem), marker="o", label=label)
    what = {"fwd": "forward", "fwdbwd": "forward + backward", "decode": "one decode step"}
    ax_time.set_title(f"Time of {what[cfg['pass_']]}")
    ax_time.set_ylabel("median time (ms)")
    ax_mem.set_title("Peak memory of one call")
    ax_mem.set_ylabel("peak memory (MiB)")
    for ax in (ax_time, ax_mem):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length" if cfg["pass_"] == "decode" else "sequence length")
        ax.grid(True, which="both", alpha=0.3)
    if ax_time.lines:
        ax_time.legend(fontsize=8)
    fig.suptitle(f"{'causal' if cfg['causal'] else 'noncausal'}, batch {cfg['batch']}, "
                 f"{cfg['heads']} heads x {cfg['head_dim']}, {cfg['dtype']} on {env['hardware']} "
                 f"({env['threads']} threads, torch {env['torch']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
