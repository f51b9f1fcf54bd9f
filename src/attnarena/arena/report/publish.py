"""The report's files: leaderboard.md, the plots (quality against training throughput,
training curves, time and memory against length, linearization and compression), and
leaderboard.html, the same store as an interactive page."""
from __future__ import annotations

import sys
from pathlib import Path

from attnarena.arena.report.choose import store_answer
from attnarena.arena.report.compression import by_source, plot_compression
from attnarena.arena.report.leaderboard import (leaderboard_markdown, leaderboard_rows,
                                                plot_curves, plot_quality_vs_speed)
from attnarena.arena.report.linearization import (plot_decoder_linearization,
                                                  plot_linearization)
from attnarena.arena.report.speed import plot_speed, sweep_groups

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
    decoders = [r for r in store.linearize_rows() if r.get("metric") == "perplexity"]
    if decoders:
        paths.append(plot_decoder_linearization(decoders, out / "linearization_decoder.png"))
    if by_source(store.compress_rows()):
        paths.append(plot_compression(store.compress_rows(), out / "compression.png"))
    from attnarena.arena.report.web import write_page
    from attnarena.extras import MissingExtraError

    try:
        paths.append(write_page(store, out))
    except MissingExtraError as error:  # the page is optional; the files above are written
        print(f"leaderboard.html not written: {error}", file=sys.stderr)
    return paths
