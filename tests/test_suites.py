"""Suites: their size counted before anything is built, bad files refused in one line."""
import time
import tomllib
from pathlib import Path

import pytest

from attnarena.arena.report.leaderboard import leaderboard_markdown, leaderboard_rows
from attnarena.arena.run.config import RunConfig
from attnarena.arena.run.runner import run_suite
from attnarena.arena.run.suite import SuiteError, builtin_suites, count_runs, load_suite
from attnarena.arena.store import Store
from attnarena.cli import main
from attnarena.tasks import list_tasks


def test_a_billion_run_suite_is_refused_within_a_second(tmp_path):
    suite = tmp_path / "huge.toml"
    values = ", ".join(str(i) for i in range(1000))
    suite.write_text(f"""[[runs]]
tasks = ["copy"]
mixers = ["softmax"]
seeds = [{values}]
train = {{ lr = [{", ".join(f"{1e-4 * (i + 1):g}" for i in range(1000))}] }}
model = {{ dim = [{", ".join(str(16 + i) for i in range(1000))}] }}
""")
    start = time.perf_counter()
    with pytest.raises(SuiteError, match="1,000,000,000 runs, more than the limit of 5,000"):
        load_suite(str(suite))
    assert time.perf_counter() - start < 1.0


def test_the_run_limit_can_be_raised_and_the_count_is_the_sweeps_shape(tmp_path):
    groups = [{"tasks": ["copy"], "mixers": ["softmax", "gla"], "seeds": [0, 1, 2],
               "train": {"lr": [1e-3, 1e-4]}, "model": {"dim": 16}}]
    assert count_runs(groups) == 2 * 3 * 2
    suite = tmp_path / "s.toml"
    suite.write_text('[[runs]]\ntasks = ["copy"]\nmixers = ["softmax", "gla"]\n'
                     'seeds = [0, 1, 2]\ntrain = { lr = [1e-3, 1e-4] }\n')
    with pytest.raises(SuiteError, match="12 runs"):
        load_suite(str(suite), max_runs=11)
    assert len(load_suite(str(suite), max_runs=12).runs) == 12


def test_many_unknown_keys_are_named_by_the_first_few_and_counted(tmp_path):
    suite = tmp_path / "s.toml"
    keys = "\n".join(f"k{i} = 1" for i in range(300))
    suite.write_text(f'[[runs]]\ntasks = ["copy"]\nmixers = ["softmax"]\n{keys}\n')
    with pytest.raises(SuiteError) as caught:
        load_suite(str(suite))
    message = str(caught.value)
    assert "and 295 more (300 in all)" in message and len(message) < 400


def test_a_deeply_nested_suite_names_its_file(tmp_path):
    suite = tmp_path / "deep.toml"
    suite.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(SuiteError, match=str(suite)):
        load_suite(str(suite))


@pytest.mark.parametrize("argv", [["run", "--mixers", ""], ["run", "--tasks", " , "],
                                  ["speed", "--mixers", ""]])
def test_an_empty_filter_is_an_error_not_everything(tmp_path, capsys, argv):
    assert main([*argv, "--store", str(tmp_path / "a.sqlite")]
                if argv[0] == "run" else argv) == 2
    assert "was given no names" in capsys.readouterr().err
    assert not (tmp_path / "a.sqlite").exists()


def test_a_negative_time_budget_is_refused(capsys):
    assert main(["speed", "--mixers", "softmax", "--time-budget", "-1"]) == 2
    assert "time_budget must be a finite number" in capsys.readouterr().err


BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
BENCHMARK_SUITES = sorted(path for path in BENCHMARKS.glob("*.toml")  # not recipe lists
                          if "runs" in tomllib.loads(path.read_text()))




def test_nothing_is_left_out_in_silence(tmp_path, capsys):
    suite = load_suite("lra", data_root=tmp_path, device="cpu")
    notes = " ".join(suite.notes)
    assert "left out text, retrieval, image" in notes and str(tmp_path / "text") in notes
    assert "meant for a GPU" in notes and "billion tokens" in notes
    assert main(["run", "--tasks", "cpy"]) == 2
    assert "did you mean 'copy'?" in capsys.readouterr().err
    assert main(["list", "nonexist*"]) == 2
    assert "no mechanism matches 'nonexist*'" in capsys.readouterr().err


@pytest.mark.parametrize("group, name", [
    ('train = { lr = inf }', "train.lr"), ('train = { clip = -1.0 }', "train.clip"),
    ('train = { warmup = -5 }', "train.warmup"), ('train = { lr = "fast" }', "train.lr"),
    ('model = { dim = 0 }', "model.dim"), ('task_options = { length = -3 }', "length"),
    ('train = { weight_decay = -0.1 }', "train.weight_decay"),
    ('model = { dropout = 1.5 }', "model.dropout")])
def test_bad_settings_are_refused_when_the_suite_loads(tmp_path, group, name):
    path = tmp_path / "s.toml"
    path.write_text(f'[[runs]]\ntasks = ["copy"]\nmixers = ["gla"]\n{group}\n')
    with pytest.raises(SuiteError, match=name.replace(".", r"\.")):
        load_suite(str(path))


@pytest.mark.parametrize("text, match", [
    ("name = [", "not valid TOML"),
    ("colour = 1", "unknown top-level key"),
    ("[[runs]]\ntasks = ['copy']\nmixers = ['softmx']", "unknown mixer 'softmx'"),
    ("[[runs]]\ntasks = ['cpy']\nmixers = ['softmax']", "unknown task 'cpy'"),
    ("[[runs]]\ntasks = ['copy']\nmixers = ['softmax']\nepochs = 3", "unknown run key"),
    ("[[runs]]\ntasks = ['copy']\nmixers = ['softmax']\npreset = 'gpu'", "no preset 'gpu'"),
    ("[speed]\nmixers = ['linear']\npasses = ['bwd']", "unknown pass"),
    ("name = 'empty'", "selects no runs"),
])
def test_bad_suites_change_nothing(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    store_path = tmp_path / "arena.sqlite"
    with pytest.raises(SuiteError, match=match):
        run_suite(str(path), store_path=store_path, out_dir=tmp_path, progress=False)
    assert not store_path.exists()


def test_unknown_suite_and_filters():
    assert {"quick", "cpu"} <= set(builtin_suites())
    with pytest.raises(SuiteError, match="built-in suites"):
        load_suite("quik")
    quick = load_suite("quick")
    assert len(quick.runs) == 14 and {c.task for c in quick.runs} == {"copy", "mqar"}
    only = load_suite("quick", mixers=["gla"], tasks=["copy"])
    assert [(c.task, c.mixer) for c in only.runs] == [("copy", "gla")]
    with pytest.raises(SuiteError, match="unknown task"):
        load_suite("quick", tasks=["imdb"])


@pytest.mark.parametrize("path", BENCHMARK_SUITES, ids=lambda p: p.name)
def test_benchmark_suites_load_and_resolve(path):
    """The suites under benchmarks/ are read and every run's config resolves (stacks
    against their depth, options against their mechanisms) before anyone trains them."""
    suite = load_suite(str(path))
    assert suite.runs
    for run in suite.runs:  # resolved once, when the suite was read
        assert run.id.startswith(f"{run.task}-") and run.as_dict()["mixer"] == run.mixer


def test_suites_take_a_data_root_and_skip_tasks_without_data(tmp_path):
    (tmp_path / "listops").mkdir()
    for split in ("train", "val", "test"):
        (tmp_path / "listops" / f"basic_{split}.tsv").write_text("Source\tTarget\n")
    (tmp_path / "text" / "aclImdb").mkdir(parents=True)
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            (tmp_path / "text" / "aclImdb" / split / label).mkdir(parents=True)
    bare = load_suite("lra", mixers=["softmax"])
    assert sorted(c.task for c in bare.runs) == ["listops", "pathfinder"]
    assert all(c.preset == "paper" for c in bare.runs)
    with_data = load_suite("lra", mixers=["softmax"], data_root=tmp_path)
    tasks = {c.task: c for c in with_data.runs}
    assert sorted(tasks) == ["listops", "pathfinder", "text"]
    assert tasks["text"].task_options["data_dir"] == str((tmp_path / "text").resolve())
    assert tasks["listops"].task_options["data_dir"] == str((tmp_path / "listops").resolve())
    assert "data_dir" not in tasks["pathfinder"].task_options  # no folder: generated
    cpu = load_suite("cpu", mixers=["softmax", "fnet"])
    assert {c.task for c in cpu.runs} == {t for t in list_tasks()
                                          if t not in ("text", "retrieval", "image")}
    # fnet has no causal form: only the classification tasks take it from "all"
    assert {c.task for c in cpu.runs if c.mixer == "fnet"} == {"listops", "pathfinder"}
    suite = tmp_path / "s.toml"
    suite.write_text("[[runs]]\ntasks = ['text']\nmixers = ['softmax']\n")
    with pytest.raises(SuiteError, match="--data DIR"):
        load_suite(str(suite))


def test_suite_sweeps_expand_and_the_average_takes_the_best_setting(tmp_path):
    from attnarena.arena.report.leaderboard import averages

    path = tmp_path / "sweep.toml"
    path.write_text("[[runs]]\ntasks = ['copy']\nmixers = ['gla']\nseeds = [0, 1]\n"
                    "model = {dim = [16, 32]}\ntrain = {lr = [1e-3, 1e-2], steps = 5}\n")
    suite = load_suite(str(path))
    assert len(suite.runs) == 8
    assert {(c.model["dim"], c.train["lr"], c.seed) for c in suite.runs} == {
        (d, lr, s) for d in (16, 32) for lr in (1e-3, 1e-2) for s in (0, 1)}
    assert all(c.train["steps"] == 5 for c in suite.runs)
    with pytest.raises(SuiteError, match="lists no values"):
        path.write_text("[[runs]]\ntasks = ['copy']\nmixers = ['gla']\ntrain = {lr = []}\n")
        load_suite(str(path))
    store = Store(tmp_path / "a.sqlite")
    scores = {(16, 1e-3): (0.5, 0.7), (16, 1e-2): (0.9, 0.8), (32, 1e-3): (1.0, 0.2)}
    for (dim, lr), pair in scores.items():
        for seed, acc in enumerate(pair):
            config = RunConfig(task="copy", mixer="gla", seed=seed, model={"dim": dim},
                               train={"lr": lr})
            store.claim_run(config.resolve().id, config.resolve(), None, {}, "t")
            store.finish_run(config.resolve().id, {"test_accuracy": acc, "best_val_accuracy": acc,
                                               "tokens_per_s": 1.0, "peak_mem_mb": 1.0,
                                               "params": 1, "steps": 1, "train_seconds": 1.0},
                               "t")
    mqar = RunConfig(task="mqar", mixer="gla", task_options={"length": 64, "pairs": 4})
    store.claim_run(mqar.resolve().id, mqar.resolve(), None, {}, "t")
    store.finish_run(mqar.resolve().id, {"test_accuracy": 0.3, "best_val_accuracy": 0.3,
                                     "tokens_per_s": 1.0, "peak_mem_mb": 1.0, "params": 1,
                                     "steps": 1, "train_seconds": 1.0}, "t")
    # copy: best setting (16, 1e-2) with mean 0.85 over its seeds, not the 1.0 of one seed
    [(mixer, preset, value)] = averages(leaderboard_rows(store))
    assert (mixer, preset) == ("gla", "cpu") and value == pytest.approx((0.85 + 0.3) / 2)
    board = leaderboard_markdown(store)
    # the swept settings are columns; what every row shares is said once above the table
    assert "All rows: preset cpu, depth 2, heads 4, steps 600, batch 32, task copy(" in board
    # several seeds per setting: one row per setting, its mean, spread and n
    assert ("| mixer | dim | lr | n | test accuracy | min – max | solved | solved at step | "
            "vs best |") in board
    assert "| gla | 16 | 0.01 | 2 | 0.8500 ± 0.0707 | 0.8000 – 0.9000 | 0 of 2 | - | best |" \
        in board
    assert "| gla | 32 | 0.001 | 2 | 0.6000 ± 0.5657 | 0.2000 – 1.0000 | 1 of 2 | - | within " \
        "spread |" in board
    assert "## Average over 2 tasks\n" in board  # copy and mqar are not LRA tasks
