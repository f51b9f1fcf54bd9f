"""`attnarena choose`: quality from the store joined with time and memory at a length, and
the Pareto set of the three, on a store whose figures are known."""
import pytest

from attnarena.arena.report.choose import Question, choice_markdown, choose, store_answer
from attnarena.arena.run.config import RunConfig
from attnarena.arena.store import Store
from attnarena.cli import main


def _finish(store, mixer, task, accuracy, seed=0):
    config = RunConfig(task=task, mixer=mixer, seed=seed)
    resolved = config.resolve()
    owner = "me:1:x"
    store.claim_run(config.resolve().id, resolved, None, {}, owner)
    store.finish_run(config.resolve().id, {
        "metric": "accuracy", "test_accuracy": accuracy, "best_val_accuracy": accuracy,
        "history": [], "params": 1, "tokens_per_s": 1.0, "peak_mem_mb": 1.0, "steps": 1,
        "train_seconds": 1.0}, owner)


def _speed(store, mixer, length, median, half, memory, pass_="fwd", state=None):
    row = {"mixer": mixer, "length": length, "pass": pass_, "status": "ok", "batch": 1,
           "heads": 4, "head_dim": 64, "dtype": "float32", "causal": pass_ == "decode",
           "median_ms": median, "min_ms": median - half, "q1_ms": median - half,
           "q3_ms": median + half, "repeats": 5, "peak_mem_mb": memory, "state_mb": state,
           "flags": []}
    store.add_speed(f"{mixer}-{length}-{pass_}", row, None,
                    {"hardware": "test cpu", "threads": 2, "torch": "2.13.0"})


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "a.sqlite")
    quality = {"softmax": (1.0, 0.9), "gla": (0.8, 0.7), "linear": (0.6, 0.5),
               "performer": (0.5, 0.4)}
    for mixer, (copy, mqar) in quality.items():
        _finish(store, mixer, "copy", copy)
        _finish(store, mixer, "mqar", mqar)
    _finish(store, "retention", "copy", 0.9)  # ran only one of the two tasks
    #                      median, ±, peak MiB
    _speed(store, "softmax", 4096, 100.0, 2.0, 24.0)
    _speed(store, "gla", 4096, 30.0, 1.0, 64.0)
    _speed(store, "linear", 4096, 20.0, 1.0, 57.0)
    _speed(store, "performer", 4096, 21.0, 1.5, 190.0)  # a tie with linear, heavier, worse
    _speed(store, "retention", 4096, 25.0, 1.0, 50.0)
    return store


def test_the_pareto_set_is_the_one_computed_by_hand(store):
    result = choose(store, Question(length=4096), measure=False)
    # softmax: best quality and least memory; gla: better than linear, slower; linear:
    # fastest among the complete; performer ties linear on time but loses on the rest
    assert sorted(result["pareto"]) == ["gla", "linear", "softmax"]
    by_name = {c.mixer: c for c in result["choices"]}
    assert by_name["softmax"].quality == pytest.approx(0.95)
    assert by_name["retention"].quality is None and not by_name["retention"].pareto
    text = choice_markdown(result)
    assert "ran 1 of the 2 tasks" in text
    assert "the Pareto set of quality, time and memory is" in result["conclusion"]
    assert "the fastest is linear (20.00 ms)" in result["conclusion"]
    assert "the lightest softmax (24 MiB)" in result["conclusion"]


def test_quality_within_the_seeds_spread_is_not_a_difference(tmp_path):
    """Over seeds, gla's mean is higher than linear's but inside their spread: linear,
    faster and lighter, then dominates gla; with the gap beyond the spread, both stay."""
    store = Store(tmp_path / "s.sqlite")
    #            seed:  0     1     2     3
    seeds = {"gla": [0.80, 0.60, 0.70, 0.90], "linear": [0.70, 0.65, 0.60, 0.80],
             "softmax": [1.00, 1.00, 0.99, 1.00]}
    for mixer, values in seeds.items():
        for seed, value in enumerate(values):
            _finish(store, mixer, "mqar", value, seed=seed)
    _speed(store, "softmax", 4096, 100.0, 2.0, 24.0)
    _speed(store, "gla", 4096, 30.0, 1.0, 64.0)
    _speed(store, "linear", 4096, 20.0, 1.0, 57.0)
    result = choose(store, Question(length=4096), measure=False)
    by_name = {c.mixer: c for c in result["choices"]}
    assert by_name["gla"].quality > by_name["linear"].quality  # by the means alone
    assert by_name["gla"].spread.n == 4
    assert sorted(result["pareto"]) == ["linear", "softmax"]
    assert "75.0% ± 12.9 (n = 4)" in choice_markdown(result)
    # one seed each (the same means): no spread to judge by, so the means decide
    single = Store(tmp_path / "one.sqlite")
    for mixer, values in seeds.items():
        _finish(single, mixer, "mqar", sum(values) / 4)
    for row in store.speed_rows():
        single.add_speed(f"{row['mixer']}-4096-fwd", row, None, row["environment"])
    result = choose(single, Question(length=4096), measure=False)
    assert sorted(result["pareto"]) == ["gla", "linear", "softmax"]


def test_a_memory_budget_leaves_out_what_does_not_fit(store):
    result = choose(store, Question(length=4096, memory=60.0), measure=False)
    by_name = {c.mixer: c for c in result["choices"]}
    assert by_name["gla"].over_budget and not by_name["gla"].pareto
    assert sorted(result["pareto"]) == ["linear", "softmax"]


def test_quality_from_one_task(store):
    result = choose(store, Question(length=4096, task="copy"), measure=False)
    by_name = {c.mixer: c for c in result["choices"]}
    assert by_name["retention"].quality == pytest.approx(0.9)  # complete for this task
    assert [p.split("(")[0] for p in result["problems"]] == ["copy"]


def test_missing_timings_are_measured_and_recorded(store, capsys):
    result = choose(store, Question(length=64, mixers=("linear",)), progress=False)
    assert {c.mixer for c in result["choices"]} == {"linear", "softmax"}
    assert all(c.time is not None and c.time["length"] == 64 for c in result["choices"])
    assert {r["mixer"] for r in store.speed_rows() if r["length"] == 64} == {"linear",
                                                                           "softmax"}
    assert "measuring 2 mechanisms at L=64" in capsys.readouterr().out


def test_decoding_is_judged_by_the_step_and_the_state(store):
    for mixer, ms, state in (("softmax", 0.5, 4.0), ("gla", 0.3, 0.06), ("linear", 0.31, 0.06)):
        _speed(store, mixer, 4096, ms, 0.01, 1.0, pass_="decode", state=state)
    result = choose(store, Question(length=4096, decode=True,
                                    mixers=("softmax", "gla", "linear")), measure=False)
    # forward rows are noncausal here, so only the decode rows count
    assert sorted(result["pareto"]) == ["gla", "softmax"]
    assert "a decoding step" in result["conclusion"]


def test_the_leaderboard_opens_with_the_answer(store, tmp_path):
    from attnarena.arena.report.publish import build_reports

    assert "the Pareto set" in store_answer(store)
    build_reports(store, tmp_path / "r")
    board = (tmp_path / "r" / "leaderboard.md").read_text()
    assert board.index("## Which mechanism") < board.index("## copy")


def test_the_cli_answers_from_the_store_and_refuses_an_empty_one(store, tmp_path, capsys):
    assert main(["choose", "--length", "4096", "--store", str(store.path), "--no-measure"]) == 0
    out = capsys.readouterr().out
    assert "| softmax | 95.0% |" in out and "Pareto" in out
    empty = tmp_path / "empty.sqlite"
    Store(empty).close()
    assert main(["choose", "--length", "4096", "--store", str(empty), "--no-measure"]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_nothing_timed_says_which_settings_and_how_to_measure(store):
    result = choose(store, Question(length=4096, causal=True), measure=False)
    assert "No mechanism was timed at L=4096 (causal, batch 1)" in result["conclusion"]
    assert "without --no-measure" in result["conclusion"]
