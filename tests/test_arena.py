"""The arena: run configs, the training loop, the store, suites, reports, resumption."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch

from attnarena.arena.config import RunConfig
from attnarena.arena.report import format_rows, leaderboard_markdown, leaderboard_rows
from attnarena.arena.runner import run_suite
from attnarena.arena.store import Store, StoreError
from attnarena.arena.suite import SuiteError, builtin_suites, load_suite
from attnarena.arena.train import lr_at, train
from attnarena.cli import main
from attnarena.tasks import list_tasks

TINY = """
name = "tiny"
[[runs]]
tasks = ["copy"]
mixers = ["softmax", "linear"]
train = { steps = %(steps)d, eval_every = %(every)d, eval_examples = 64, batch = 8 }
model = { dim = 16, depth = 1, heads = 2 }
[speed]
mixers = ["linear"]
lengths = [32, 64]
passes = ["fwd"]
repeats = 1
"""


def tiny_suite(tmp_path, steps=12, every=4):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY % {"steps": steps, "every": every})
    return str(path)


def test_lr_schedules():
    train_cfg = {"lr": 1.0, "warmup": 10, "steps": 110, "schedule": "cosine"}
    assert lr_at(0, train_cfg) == pytest.approx(0.1)
    assert lr_at(9, train_cfg) == pytest.approx(1.0)
    assert lr_at(60, train_cfg) == pytest.approx(0.5)
    assert lr_at(109, train_cfg) == pytest.approx(0.0, abs=1e-3)
    rsqrt = {**train_cfg, "schedule": "rsqrt"}
    assert lr_at(39, rsqrt) == pytest.approx((10 / 40) ** 0.5)


def test_evaluation_sets_are_not_training_batches():
    from attnarena.arena.train import batch_seed, eval_seed
    from attnarena.tasks import create_task

    task = create_task("copy")

    def draw(seed):
        return task.batch(64, torch.Generator().manual_seed(seed))["inputs"]

    val, test = draw(eval_seed(0, "val")), draw(eval_seed(0, "test"))
    assert not torch.equal(val, test)
    for step in range(3):
        assert not torch.equal(draw(batch_seed(0, step))[:8], val[:8])
    with pytest.raises(ValueError, match="seed"):
        RunConfig(task="copy", mixer="gla", seed=-1).resolve()


def test_config_resolution_and_errors():
    resolved = RunConfig(task="mqar", mixer="gla", train={"steps": 7}).resolve()
    assert resolved["train"]["steps"] == 7 and resolved["model"]["heads"] == 1
    assert resolved["task_options"] == {"vocab": 64, "length": 32, "pairs": 4}
    with pytest.raises(ValueError, match="valid tasks"):
        RunConfig(task="lsitops", mixer="gla").resolve()
    with pytest.raises(ValueError, match="presets: cpu, paper"):
        RunConfig(task="mqar", mixer="gla", preset="gpu").resolve()
    with pytest.raises(ValueError, match="unknown train setting"):
        RunConfig(task="mqar", mixer="gla", train={"epochs": 3}).resolve()
    with pytest.raises(ValueError, match="valid options"):
        RunConfig(task="mqar", mixer="gla", mixer_options={"window": 3}).resolve()
    a = RunConfig(task="copy", mixer="gla").run_id()
    assert a == RunConfig(task="copy", mixer="gla", device="cuda").run_id()
    assert a != RunConfig(task="copy", mixer="gla", seed=1).run_id()


def test_training_is_deterministic_and_learns_copy():
    config = RunConfig(task="copy", mixer="softmax", train={"eval_every": 200})
    first = train(config.resolve(), progress=False)
    second = train(config.resolve(), progress=False)
    assert first["history"] == second["history"]
    assert first["test_accuracy"] == second["test_accuracy"]
    assert first["test_accuracy"] > 0.5  # chance is 1/16
    assert first["params"] > 0 and first["tokens_per_s"] > 0


def test_resumed_training_equals_uninterrupted(tmp_path, monkeypatch):
    import attnarena.arena.train as loop
    from attnarena.arena.checkpoint import save_checkpoint

    resolved = RunConfig(task="copy", mixer="linear", model={"dim": 16, "depth": 1},
                         train={"steps": 20, "eval_every": 5, "batch": 8}).resolve()
    whole = train(resolved, progress=False)

    saves = []

    def crash_after_second_save(*args, **kwargs):
        save_checkpoint(*args, **kwargs)
        saves.append(args[3]["step"])
        if len(saves) == 2:
            raise KeyboardInterrupt  # the process dies right after its step-10 checkpoint

    monkeypatch.setattr(loop, "save_checkpoint", crash_after_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(resolved, checkpoint_dir=tmp_path, progress=False)
    assert saves == [5, 10]
    monkeypatch.setattr(loop, "save_checkpoint", save_checkpoint)
    resumed = train(resolved, checkpoint_dir=tmp_path, progress=False)
    assert resumed["history"] == whole["history"]
    assert resumed["test_accuracy"] == whole["test_accuracy"]


def test_store_is_transactional_and_keeps_runs(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    resolved = RunConfig(task="copy", mixer="gla").resolve()
    store.claim_run("a", resolved, "x", {"torch": "t"}, "t")
    assert store.run("a")["status"] == "running"
    store.finish_run("a", {"test_accuracy": 0.5, "params": 3}, "t")
    store.claim_run("b", resolved, "x", {}, "t")
    store.fail_run("b", "boom", "t")
    assert sorted(r["status"] for r in store.runs()) == ["done", "failed"]
    store.close()
    again = Store(tmp_path / "s.sqlite")
    assert again.run("a")["metrics"]["test_accuracy"] == 0.5


def test_unwritable_store_is_one_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open the results store"):
        Store(blocker / "arena.sqlite")
    assert main(["run", "--suite", tiny_suite(tmp_path), "--store",
                 str(blocker / "arena.sqlite"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot open the results store" in err[0]


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


BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
BENCHMARK_SUITES = sorted(path for path in BENCHMARKS.glob("*.toml")  # not recipe lists
                          if "runs" in tomllib.loads(path.read_text()))


@pytest.mark.parametrize("path", BENCHMARK_SUITES, ids=lambda p: p.name)
def test_benchmark_suites_load_and_resolve(path):
    """The suites under benchmarks/ are read and every run's config resolves (stacks
    against their depth, options against their mechanisms) before anyone trains them."""
    suite = load_suite(str(path))
    assert suite.runs
    for config in suite.runs:
        config.resolve()


def test_suite_runs_once_then_reuses_and_reports(tmp_path, capsys):
    suite, store = tiny_suite(tmp_path), tmp_path / "arena.sqlite"
    first = run_suite(suite, store_path=store, out_dir=tmp_path, progress=False)
    assert first["trained"] == 2 and first["speed_measured"] == 2
    second = run_suite(suite, store_path=store, out_dir=tmp_path, progress=False)
    assert second["trained"] == 0 and second["reused"] == 2 and second["speed_reused"] == 2
    third = run_suite(suite, store_path=store, out_dir=tmp_path, progress=False, rerun=True)
    assert third["trained"] == 2
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
    for name in ("leaderboard.md", "quality_vs_speed.png", "training_curves.png",
                 "speed-fwd.png"):
        assert (tmp_path / name).exists()
    board = (tmp_path / "leaderboard.md").read_text()
    assert "All rows: preset cpu, seed 0, dim 16" in board and "\n| softmax | 0." in board
    rows = leaderboard_rows(Store(store))
    assert json.loads(format_rows(rows, "json"))[0]["task"] == "copy"
    assert format_rows(rows, "csv").splitlines()[0].startswith("task,mixer,preset")
    assert main(["report", "--store", str(store), "--out", str(tmp_path), "--format",
                 "csv"]) == 0
    assert "copy,linear,cpu,0," in capsys.readouterr().out


def test_jobs_train_a_suite_together_each_run_once(tmp_path):
    """--jobs 2: a worker process trains beside this one on half the threads; every run is
    trained once, counted once, and its environment says how it was trained."""
    suite, store = tiny_suite(tmp_path, steps=60, every=20), tmp_path / "arena.sqlite"
    lines = []
    counts = run_suite(suite, store_path=store, out_dir=tmp_path, progress=False, jobs=2,
                       log=lines.append)
    assert counts["trained"] == 2 and counts["by_others"] == 0 and counts["failed"] == 0
    assert counts["speed_measured"] == 2
    assert any("2 jobs at once" in line for line in lines)
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT status, environment FROM runs").fetchall()
    assert [status for status, _ in rows] == ["done", "done"]
    threads = max(1, torch.get_num_threads() // 2)
    for _, env in rows:
        assert json.loads(env)["jobs"] == 2 and json.loads(env)["threads"] == threads
    assert not list(tmp_path.glob(".job-*"))  # the workers' reports are read and removed
    board = (tmp_path / "leaderboard.md").read_text()
    per_run = f"{threads} thread{'s' if threads > 1 else ''} per run"
    assert f"trained ({per_run}, 2 runs at once)." in board
    again = []  # a finished suite starts no workers
    assert run_suite(suite, store_path=store, out_dir=tmp_path, progress=False, jobs=2,
                     log=again.append)["reused"] == 2
    assert not any("jobs at once" in line for line in again)
    single = run_suite(suite, store_path=tmp_path / "single.sqlite", out_dir=tmp_path / "s",
                       progress=False)
    assert single["trained"] == 2
    with sqlite3.connect(store) as db, sqlite3.connect(tmp_path / "single.sqlite") as ref:
        got = dict(db.execute("SELECT id, metrics FROM runs").fetchall())
        want = dict(ref.execute("SELECT id, metrics FROM runs").fetchall())
    assert set(got) == set(want)
    for run_id in got:
        assert json.loads(got[run_id])["test_loss"] == pytest.approx(
            json.loads(want[run_id])["test_loss"], rel=1e-4)


def test_training_conditions_say_how_throughput_was_measured():
    from attnarena.arena.report import training_conditions

    assert training_conditions([{"threads": 1, "jobs": 2}] * 2) == \
        "1 thread per run, 2 runs at once"
    assert training_conditions([{"threads": 2, "jobs": 1}, {"threads": 1, "jobs": 2}]) == \
        "1 thread per run, 2 runs at once; 2 threads per run"
    assert training_conditions([{"threads": None, "jobs": 1}]) == ""


def test_job_worker_trains_what_is_left_and_reports_it(tmp_path):
    from attnarena.arena.runner import _job_main

    suite, store = tiny_suite(tmp_path), tmp_path / "arena.sqlite"
    report = tmp_path / "job.json"
    spec = {"suite": suite, "mixers": ["linear"], "tasks": None, "device": "cpu",
            "data_root": None, "store_path": str(store), "out_dir": str(tmp_path),
            "rerun": False, "began": time.time(), "jobs": 2, "threads": 1, "job": 2,
            "outcome_path": str(report), "max_runs": 10, "parent": os.getppid()}
    threads, handler = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    try:
        assert _job_main(json.dumps(spec)) == 0
    finally:
        torch.set_num_threads(threads)
        signal.signal(signal.SIGTERM, handler)
    outcome = json.loads(report.read_text())
    assert list(outcome.values()) == ["trained"]
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT mixer, status FROM runs").fetchall() == [("linear", "done")]
    counts = run_suite(suite, store_path=store, out_dir=tmp_path, progress=False,
                       report=False)
    assert counts["trained"] == 1 and counts["reused"] == 1


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="jobs must be a positive integer, got 0"):
        run_suite(tiny_suite(tmp_path), store_path=tmp_path / "a.sqlite", out_dir=tmp_path,
                  jobs=0)
    with pytest.raises(SystemExit):
        main(["run", "--jobs", "0"])


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "attnarena.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def test_killed_suite_resumes_with_same_results(tmp_path):
    suite = tiny_suite(tmp_path, steps=400, every=10)
    reference = tmp_path / "reference.sqlite"
    run_suite(suite, store_path=reference, out_dir=tmp_path / "ref", progress=False)

    store, out = tmp_path / "arena.sqlite", tmp_path / "out"
    args = ["run", "--suite", suite, "--store", str(store), "--out", str(out), "--quiet"]
    process = _run_cli(args)
    deadline = time.time() + 120
    while not list(out.glob("checkpoints/*/step-*/state.pt")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with sqlite3.connect(store) as db:
        statuses = [r[0] for r in db.execute("SELECT status FROM runs")]
    assert "running" in statuses  # killed mid-run
    assert _run_cli(args).wait() == 0
    with sqlite3.connect(store) as db, sqlite3.connect(reference) as ref:
        got = {r[0]: (r[1], json.loads(r[2])) for r in
               db.execute("SELECT id, status, metrics FROM runs")}
        want = {r[0]: json.loads(r[1]) for r in ref.execute("SELECT id, metrics FROM runs")}
        assert db.execute("SELECT COUNT(*) FROM speed").fetchone()[0] == 2
    assert set(got) == set(want)
    for run_id, (status, metrics) in got.items():
        assert status == "done"
        assert metrics["test_accuracy"] == want[run_id]["test_accuracy"]
        assert metrics["history"] == want[run_id]["history"]


def test_torchrun_two_processes_equal_one(tmp_path):
    common = ["--task", "copy", "--mixer", "linear", "--steps", "12", "--batch", "8",
              "--quiet", "--out", str(tmp_path)]
    single = tmp_path / "single.json"
    assert main(["train", *common, "--json", str(single)]) == 0
    double = tmp_path / "double.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "attnarena.cli", "train", *common, "--json", str(double)],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = (json.loads(Path(p).read_text())["metrics"] for p in (single, double))
    assert two["world_size"] == 2 and one["world_size"] == 1
    for a, b in zip(one["history"], two["history"]):
        assert a["step"] == b["step"]
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert one["test_loss"] == pytest.approx(two["test_loss"], rel=1e-4)


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


def test_model_settings_a_task_cannot_use_are_refused():
    with pytest.raises(ValueError, match="takes no \\['pooling'\\] setting"):
        RunConfig(task="mqar", mixer="gla", model={"pooling": "cls"}).resolve()
    assert RunConfig(task="listops", mixer="gla", model={"pooling": "mean", "norm": False},
                     train={"steps": 1}).resolve()["model"]["norm"] is False


def test_regression_runs_keep_the_lowest_error_and_report_it(tmp_path):
    resolved = RunConfig(task="icl_regression", mixer="linear",
                         model={"dim": 16, "depth": 1, "heads": 2},
                         train={"steps": 30, "eval_every": 10, "batch": 16,
                                "eval_examples": 64}).resolve()
    metrics = train(resolved, progress=False)
    vals = [h["val_mse"] for h in metrics["history"]]
    assert metrics["best_val_mse"] == min(vals)
    assert metrics["metric"] == "mse" and "test_accuracy" not in metrics
    assert metrics["baselines"]["zero"] > metrics["baselines"]["least_squares"]
    store = Store(tmp_path / "a.sqlite")
    config = RunConfig(task="icl_regression", mixer="linear")
    store.claim_run("r", config.resolve(), None, {}, "t")
    store.finish_run("r", metrics, "t")
    board = leaderboard_markdown(store)
    assert "test mse" in board and "Average over tasks" not in board


def test_suite_sweeps_expand_and_the_average_takes_the_best_setting(tmp_path):
    from attnarena.arena.report import averages

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
            store.claim_run(config.run_id(), config.resolve(), None, {}, "t")
            store.finish_run(config.run_id(), {"test_accuracy": acc, "best_val_accuracy": acc,
                                               "tokens_per_s": 1.0, "peak_mem_mb": 1.0,
                                               "params": 1, "steps": 1, "train_seconds": 1.0},
                               "t")
    mqar = RunConfig(task="mqar", mixer="gla", task_options={"length": 64, "pairs": 4})
    store.claim_run(mqar.run_id(), mqar.resolve(), None, {}, "t")
    store.finish_run(mqar.run_id(), {"test_accuracy": 0.3, "best_val_accuracy": 0.3,
                                     "tokens_per_s": 1.0, "peak_mem_mb": 1.0, "params": 1,
                                     "steps": 1, "train_seconds": 1.0}, "t")
    # copy: best setting (16, 1e-2) with mean 0.85 over its seeds, not the 1.0 of one seed
    [(mixer, preset, value)] = averages(leaderboard_rows(store))
    assert (mixer, preset) == ("gla", "cpu") and value == pytest.approx((0.85 + 0.3) / 2)
    board = leaderboard_markdown(store)
    # the swept settings are columns; what every row shares is said once above the table
    assert "All rows: preset cpu, depth 2, heads 4, steps 600, batch 32, task copy(" in board
    assert "| mixer | dim | lr | seed | test accuracy |" in board
    assert "| gla | 16 | 0.01 | 1 | 0.8000 |" in board
    assert "## Average over 2 tasks\n" in board  # copy and mqar are not LRA tasks


def test_run_settings_are_typed_and_checked_when_made():
    from attnarena.arena.config import ModelSettings, TrainSettings, to_dict

    config = RunConfig(task="mqar", mixer="gla", model={"dim": 32}, train={"steps": 3})
    assert isinstance(config.model, ModelSettings) and isinstance(config.train, TrainSettings)
    assert config.model.dim == 32 and dict(config.model) == {"dim": 32}
    assert repr(config.train) == "TrainSettings(steps=3)"
    assert to_dict(config)["train"] == {"steps": 3}
    # the same run whether the overrides come as a dict or as settings
    assert config.run_id() == RunConfig(task="mqar", mixer="gla", model=ModelSettings(dim=32),
                                        train=TrainSettings(steps=3)).run_id()
    for bad, message in (({"train": {"lr": -1}}, "train.lr"),
                         ({"train": {"schedule": "linear"}}, "unknown schedule"),
                         ({"model": {"dimm": 3}}, "did you mean|unknown model setting"),
                         ({"model": {"dropout": 1.0}}, "model.dropout"),
                         ({"model": 3}, "table"),
                         ({"dtype": "float8"}, "unknown dtype"),
                         ({"seed": True}, "seed")):
        with pytest.raises((ValueError, TypeError), match=message):
            RunConfig(task="mqar", mixer="gla", **bad)  # fails here, before resolve()
