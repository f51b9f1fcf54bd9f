"""Timings a user can trust: spreads kept, conditions recorded, a busy machine flagged, a
difference called only when spreads part."""
import subprocess
import sys
import time

import pytest

from attnarena.arena.measure.conditions import OthersLoad, compare, flags, spread
from attnarena.arena.measure.speed import SpeedConfig, measure_case
from attnarena.arena.report.leaderboard import leaderboard_markdown
from attnarena.arena.report.publish import build_reports
from attnarena.arena.report.speed import crossovers, plot_speed
from attnarena.arena.store import Store
from attnarena.cli import main


def _row(mixer, length, median, half, memory, **extra):
    return {"mixer": mixer, "length": length, "pass": "fwd", "status": "ok",
            "median_ms": median, "min_ms": median - half, "q1_ms": median - half,
            "q3_ms": median + half, "repeats": 5, "iterations": 1, "peak_mem_mb": memory,
            "matmul_gflops": 150.0, "batch": 1, "heads": 4, "head_dim": 64,
            "dtype": "float32", "causal": True, **extra}


def test_spread_and_flags():
    assert spread([3.0, 1.0, 2.0, 5.0, 4.0]) == {"median_ms": 3.0, "min_ms": 1.0,
                                                 "q1_ms": 2.0, "q3_ms": 4.0, "repeats": 5}
    assert flags(_row("a", 1, 10.0, 0.5, 1.0)) == []
    assert flags(_row("a", 1, 10.0, 2.0, 1.0)) == ["noisy"]  # IQR 4 > 10 / 4
    assert flags(_row("a", 1, 10.0, 0.5, 1.0, others_share=0.6)) == ["busy"]


def test_a_difference_inside_the_spread_is_a_tie():
    assert compare(_row("a", 1, 10.0, 1.0, 1), _row("b", 1, 10.5, 1.0, 1)) == "tie"
    assert compare(_row("a", 1, 10.0, 1.0, 1), _row("b", 1, 13.0, 1.0, 1)) == "faster"
    assert compare(_row("a", 1, 13.0, 1.0, 1), _row("b", 1, 10.0, 1.0, 1)) == "slower"


def test_a_crossover_needs_a_win_beyond_the_spread_at_every_longer_length():
    rows = [_row("softmax", 1024, 10.0, 0.5, 8.0), _row("softmax", 4096, 100.0, 2.0, 30.0),
            # faster by medians at 1024 but inside the spread: a tie there
            _row("gla", 1024, 9.8, 0.5, 4.0), _row("gla", 4096, 40.0, 2.0, 10.0),
            # faster everywhere, beyond the spread
            _row("linear", 1024, 5.0, 0.2, 4.0), _row("linear", 4096, 20.0, 1.0, 10.0),
            # faster but not lighter
            _row("mamba2", 1024, 5.0, 0.2, 9.0), _row("mamba2", 4096, 20.0, 1.0, 40.0)]
    assert crossovers(rows) == {"gla": 4096, "linear": 1024, "mamba2": None}


def test_the_report_shows_spreads_flags_and_memory(tmp_path):
    store = Store(tmp_path / "a.sqlite")
    env = {"hardware": "cpu-x", "threads": 2}
    for row in [_row("softmax", 1024, 10.0, 0.5, 8.0, flags=[]),
                _row("gla", 1024, 4.0, 0.2, 4.0, flags=["busy"], others_share=0.7)]:
        store.add_speed(row["mixer"], row, None, env)
    board = leaderboard_markdown(store)
    assert "| gla | 4.00 ±0.2 (busy) | 4 | L=1024 |" in board
    assert "| softmax | 10.00 ±0.5 | 8 | baseline |" in board
    assert "interquartile ranges do not overlap" in board and "1 of 2 times flagged" in board


def test_a_case_records_its_spread_and_conditions():
    cfg = SpeedConfig(mixers=["softmax"], lengths=[16], heads=1, head_dim=4, repeats=3)
    row = measure_case(cfg.mixers[0], 16, cfg)
    assert row["status"] == "ok" and row["repeats"] == 3
    assert row["q1_ms"] <= row["median_ms"] <= row["q3_ms"]
    assert row["iterations"] >= 1 and isinstance(row["flags"], list)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/stat")
def test_others_load_sees_other_processes():
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(2)]
    try:
        time.sleep(0.5)
        with OthersLoad() as busy:
            time.sleep(1.0)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    with OthersLoad() as quiet:
        time.sleep(0.5)
    assert busy.share > 0.4 and busy.share > quiet.share


def test_the_average_table_says_what_it_leaves_out_and_never_vanishes(tmp_path):
    from test_choose import _finish

    store = Store(tmp_path / "a.sqlite")
    _finish(store, "softmax", "copy", 1.0)
    _finish(store, "gla", "mqar", 0.5)
    board = leaderboard_markdown(store)
    assert "No mechanism ran all 2 tasks, so there is no average" in board
    _finish(store, "softmax", "mqar", 0.9)
    board = leaderboard_markdown(store)
    assert "left out, having run only some: gla" in board


def test_speed_rows_of_different_settings_are_never_mixed(tmp_path):
    from attnarena.arena.report.speed import sweep_groups

    rows = [_row("softmax", n, 10.0, 0.5, 8.0, causal=True) for n in (256, 1024)]
    rows += [_row("softmax", 16384, 900.0, 9.0, 90.0, causal=False)]
    groups = sweep_groups(rows)
    assert sorted(stem for stem, _ in groups.values()) == [
        "speed-fwd", "speed-fwd-noncausal-b1-h4x64-float32"]
    store = Store(tmp_path / "a.sqlite")
    for i, row in enumerate(rows):
        store.add_speed(str(i), row, None, {"hardware": "cpu-x", "threads": 2,
                                            "torch": "2.13.0"})
    paths = build_reports(store, tmp_path / "r")
    assert {p.name for p in paths} >= {"speed-fwd.png",
                                       "speed-fwd-noncausal-b1-h4x64-float32.png"}
    board = (tmp_path / "r" / "leaderboard.md").read_text()
    assert "## Speed: fwd (causal," in board and "## Speed: fwd (noncausal," in board


def test_a_sweep_stores_the_machines_pace_before_and_after_with_each_row():
    from attnarena.arena.measure.speed import run_speed

    stored = []
    cfg = SpeedConfig(mixers=["softmax"], lengths=[8, 16], heads=1, head_dim=4, repeats=2)
    result = run_speed(cfg, progress=False, on_row=lambda s, n, row: stored.append(dict(row)))
    final = {(r["length"]): r for r in stored}  # the last write of each case
    assert len(stored) == 4 and set(final) == {8, 16}
    for row in final.values():
        assert row["matmul_gflops"] > 0 and row["matmul_gflops_after"] > 0
    assert result["meta"]["matmul_gflops_after"] == final[8]["matmul_gflops_after"]


def test_a_flagged_time_is_ringed_and_named_on_the_plot(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt


    kept, real = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    rows = [_row("softmax", 256, 10.0, 0.5, 8.0), _row("gla", 256, 4.0, 0.2, 4.0,
                                                     flags=["busy"])]
    plot_speed({"rows": rows, "meta": {
        "config": {"pass_": "fwd", "causal": True, "batch": 1, "heads": 4, "head_dim": 64,
                   "dtype": "float32"},
        "environment": {"hardware": "cpu-x", "threads": 2, "torch": "2.13.0"}}},
        tmp_path / "s.png")
    notes = " ".join(t.get_text() for t in kept[0].texts)
    assert "ringed in red" in notes and "gla L=256 (busy)" in notes
    real("all")


def test_speed_gives_its_reasons_and_its_own_folder(tmp_path, capsys):
    code = main(["speed", "--mixers", "local:window=-1", "--lengths", "8", "--repeats", "1",
                 "--quiet", "--out", str(tmp_path / "speed")])
    out = capsys.readouterr()
    assert code == 1 and "no case ran" in out.err
    assert "error (1): local:window=-1 at L=8: ValueError: window" in out.out
    assert main(["speed", "--mixers", "softmax:bogus=1", "--lengths", "8"]) == 2
    assert "unknown option(s) 'bogus'" in capsys.readouterr().err
    from attnarena.cli import build_parser

    assert build_parser().parse_args(["speed"]).out == "results/speed"


def test_a_restarted_peak_counts_what_the_first_phase_left_not_its_passing_peak():
    import torch

    from attnarena.arena.measure.memory import PeakMemory

    with PeakMemory("cpu") as memory:
        passing = torch.ones(64 * 2**20 // 4)  # 64 MiB, freed before the second phase
        kept = torch.ones(16 * 2**20 // 4)  # 16 MiB, held through the second phase
        del passing
        first = memory.restart()
        more = torch.ones(8 * 2**20 // 4)  # 8 MiB more in the second phase
    if first is None:
        pytest.skip("peak resident memory cannot be read on this system")
    assert first >= 70 * 2**20
    assert 20 * 2**20 <= memory.peak_bytes <= 40 * 2**20
    del kept, more
