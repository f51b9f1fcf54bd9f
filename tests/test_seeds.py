"""Results over seeds: spreads and counts computed from a store of known per-seed results,
and a difference inside the spread never called."""
import statistics

from hypothesis import given
from hypothesis import strategies as st

from attnarena.arena.report.leaderboard import (average_spreads, leaderboard_markdown,
                                                leaderboard_rows)
from attnarena.arena.report.seeds import call_difference, format_spread, spread
from attnarena.arena.run.config import RunConfig
from attnarena.arena.store import Store


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
def test_a_spread_is_the_mean_deviation_and_range_of_its_values(values):
    s = spread(values)
    assert s.n == len(values)
    assert abs(s.mean - statistics.fmean(values)) < 1e-12
    assert abs(s.sd - (statistics.stdev(values) if len(values) > 1 else 0.0)) < 1e-9
    assert (s.low, s.high) == (min(values), max(values))
    assert s.reached(0.5) == sum(v >= 0.5 for v in values)
    assert s.reached(0.5, higher_is_better=False) == sum(v <= 0.5 for v in values)


def test_a_difference_is_called_only_beyond_the_spread():
    bimodal = spread([0.25, 1.0, 0.27, 1.0, 0.3])       # mean 0.564, sd 0.40
    stuck = spread([0.30, 0.28, 0.26, 0.27, 0.25])       # mean 0.272, sd 0.019
    solved = spread([1.0, 1.0, 0.998, 0.999, 1.0])
    assert call_difference(bimodal, stuck) == "within spread"  # means apart, seeds overlap
    assert call_difference(solved, stuck) == "better"
    assert call_difference(stuck, solved) == "worse"
    assert call_difference(stuck, solved, higher_is_better=False) == "better"  # errors
    assert call_difference(spread([1.0]), stuck) == "one seed"
    # no spread at all, yet a gap of 0.0003 in accuracy is not called
    exact, near = spread([1.0, 1.0, 1.0]), spread([0.9997, 0.9997, 0.9997])
    assert call_difference(near, exact) == "worse"
    assert call_difference(near, exact, min_gap=0.005) == "within spread"
    assert format_spread(stuck, "accuracy") == "0.2720 ± 0.0192"
    assert format_spread(spread([0.5]), "accuracy") == "0.5000"


RESULTS = {  # test accuracy of seeds 0..4
    "softmax": [1.0, 1.0, 1.0, 0.999, 1.0],
    "3*linear+softmax": [0.227, 1.0, 0.997, 1.0, 0.3],
    "linear": [0.249, 0.297, 0.25, 0.26, 0.27],
}


def _store(tmp_path, results=RESULTS, task_options=None, by_length=None):
    """Runs of MQAR (depth 4) with the given test accuracy per seed (and, with
    ``by_length``, {length: factor}, accuracy x factor at each test length)."""
    store = Store(tmp_path / "seeds.sqlite")
    for mixer, accuracies in results.items():
        for seed, accuracy in enumerate(accuracies):
            run = RunConfig(task="mqar", mixer=mixer, seed=seed, model={"depth": 4},
                            task_options=task_options or {}).resolve()
            store.claim_run(run.id, run, None, {"threads": 1}, "t")
            # validation reaches the test accuracy at step 100 * (seed + 1)
            history = [{"step": 100 * k, "val_accuracy": accuracy if k > seed else 0.1}
                       for k in range(1, 6)]
            store.finish_run(run.id, {"metric": "accuracy", "test_accuracy": accuracy,
                                      "best_val_accuracy": accuracy, "history": history,
                                      "params": 100, "tokens_per_s": 1000.0 + seed,
                                      **({"test_by_length": {
                                          str(n): accuracy * f for n, f in by_length.items()}}
                                         if by_length else {}),
                                      "peak_mem_mb": 5.0, "steps": 10,
                                      "train_seconds": 1.0}, "t")
    return store


def _row(board, mixer):
    return next(line for line in board.splitlines() if line.startswith(f"| {mixer} |"))


def test_the_leaderboard_shows_mean_spread_n_and_solved_seeds(tmp_path):
    board = leaderboard_markdown(_store(tmp_path))
    cells = [c.strip() for c in _row(board, "3*linear+softmax").split("|")[1:-1]]
    hybrid = spread(RESULTS["3*linear+softmax"])
    # seeds 1, 2 and 3 solved it, first reaching 0.99 in validation at their steps
    assert cells[:7] == ["3*linear+softmax", "5", format_spread(hybrid, "accuracy"),
                         "0.2270 – 1.0000", "3 of 5", "200, 300, 400", "within spread"]
    assert _row(board, "softmax").split("|")[5:8] == [" 5 of 5 ", " 100, 200, 300, 400, 500 ",
                                                      " best "]
    linear = [c.strip() for c in _row(board, "linear").split("|")[1:-1]]
    assert linear[4:7] == ["0 of 5", "-", "worse"]  # beyond the spread: called
    assert linear[8] == "1,002"  # tokens/s: the mean over seeds
    # the best row first, the rest in order of their means
    order = [line.split("|")[1].strip() for line in board.splitlines()
             if line.startswith("| ") and "|---" not in line and "mixer" not in line]
    assert order[:3] == ["softmax", "3*linear+softmax", "linear"]


def test_the_seeds_table_shows_each_test_length_with_its_spread(tmp_path):
    board = leaderboard_markdown(_store(tmp_path, by_length={16: 1.0, 64: 0.5}))
    head = next(line for line in board.splitlines() if line.startswith("| mixer |"))
    assert [c.strip() for c in head.split("|")[4:7]] == ["min – max", "L=16", "L=64"]
    cells = [c.strip() for c in _row(board, "3*linear+softmax").split("|")[1:-1]]
    hybrid = RESULTS["3*linear+softmax"]
    assert cells[4:6] == [format_spread(spread(hybrid), "accuracy"),
                          format_spread(spread([a * 0.5 for a in hybrid]), "accuracy")]
    assert "Length generalization" in board


def test_one_seed_per_setting_keeps_the_table_of_runs(tmp_path):
    board = leaderboard_markdown(_store(tmp_path, {"softmax": [1.0], "linear": [0.25]}))
    assert "± " not in board and "within spread" not in board
    assert "| softmax | 1.0000 |" in board


def test_the_average_over_tasks_carries_the_spread_of_per_seed_averages(tmp_path):
    store = _store(tmp_path, {"softmax": [1.0, 0.9], "linear": [0.2, 0.4]})
    for mixer, accuracies in {"softmax": [0.8, 1.0], "linear": [0.6, 0.2]}.items():
        for seed, accuracy in enumerate(accuracies):
            run = RunConfig(task="copy", mixer=mixer, seed=seed, model={"depth": 4}).resolve()
            store.claim_run(run.id, run, None, {}, "t")
            store.finish_run(run.id, {"metric": "accuracy", "test_accuracy": accuracy,
                                      "best_val_accuracy": accuracy, "history": [],
                                      "params": 1, "tokens_per_s": 1.0, "peak_mem_mb": 1.0,
                                      "steps": 1, "train_seconds": 1.0}, "t")
    spreads = average_spreads(leaderboard_rows(store))
    # softmax: seed 0 (1.0 + 0.8) / 2 = 0.9, seed 1 (0.9 + 1.0) / 2 = 0.95
    assert spreads[("softmax", "cpu")].values == (0.9, 0.95)
    assert spreads[("linear", "cpu")].values == (0.4, 0.30000000000000004)
    board = leaderboard_markdown(store)
    assert f"| softmax | {format_spread(spreads[('softmax', 'cpu')], 'accuracy')} (n=2) |" \
        in board


def _linearized(seed, mixer, stage, steps, test, setting="cpu"):
    row = {"task": "mqar", "metric": "accuracy", "higher_is_better": True,
           "source": f"{setting}{seed}", "teacher_seed": seed,
           "teacher_setting": {"task": "mqar", "preset": setting}, "stage": stage,
           "steps": steps, "test": test, "params_added": 0 if stage != "scratch" else None}
    if stage == "original":
        return {**row, "mixer": "softmax (original)", "options": {}, "recipe": {}}
    return {**row, "mixer": mixer, "options": {},
            "recipe": {"mixer": mixer, "transfer_steps": 150, "seed": seed}}


def test_linearized_runs_are_summarized_over_teacher_seeds():
    from attnarena.arena.report.linearization import linearize_markdown

    tables = {  # stage -> steps, five seeds' test accuracies
        "original": (300, [1.0, 1.0, 1.0, 1.0, 1.0]),
        "transfer": (150, [0.30, 0.50, 0.40, 0.20, 0.60]),
        "finetune": (300, [1.0, 1.0, 0.998, 1.0, 0.999]),
        "scratch": (300, [0.25, 0.55, 0.45, 0.30, 0.50])}
    rows = [_linearized(seed, "hedgehog", stage, steps, values[seed])
            for stage, (steps, values) in tables.items() for seed in range(5)]
    lines = linearize_markdown(rows).splitlines()
    cells = {line.split(" | ")[2]: line.split(" | ") for line in lines
             if line.startswith("| mqar |")}
    assert set(cells) == {"original", "transfer", "finetune", "scratch"}
    finetune = cells["finetune"]
    assert finetune[4:8] == ["5", "0,1,2,3,4", format_spread(spread(tables["finetune"][1]),
                                                               "accuracy"),
                             "0.9980 – 1.0000"]
    assert finetune[8] == "5 of 5" and finetune[9] == "better"
    assert cells["transfer"][9] == "within spread"  # 0.40 ± 0.16 against 0.41 ± 0.13
    assert cells["scratch"][9] == "-" and cells["original"][9] == "-"
    # another teacher setting is its own group, named by its first teacher
    other = [_linearized(seed, "hedgehog", "finetune", 300, 0.5, setting="paper")
             for seed in range(2)]
    lines = linearize_markdown(rows + other).splitlines()
    assert sum("| mqar (teacher cpu0) |" in line for line in lines) == 4
    assert sum("| mqar (teacher paper0) |" in line for line in lines) == 1
    assert any(line.endswith("| 2 | 0,1 | 0.5000 ± 0.0000 | 0.5000 – 0.5000 | 0 of 2 | - | 0 |")
               for line in lines)
