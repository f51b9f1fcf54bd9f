"""Training one run: configs resolved once and checked, schedules, evaluation sets,
determinism, resuming, divergence, torchrun, and trained runs taken away."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import attnarena as aa
from attnarena.arena.report.leaderboard import leaderboard_markdown, leaderboard_rows
from attnarena.arena.run.checkpoint import save_checkpoint
from attnarena.arena.run.config import RunConfig
from attnarena.arena.run.train import evaluate, lr_at, train
from attnarena.arena.store import Store
from attnarena.cli import main
from attnarena.seeds import eval_seed
from attnarena.tasks import create_task
from conftest import run_tiny_suite


def _cli(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_train_is_marked_interrupted(tmp_path, signum):
    store, out = tmp_path / "a.sqlite", tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "attnarena", "train", "--task", "copy", "--mixer", "gla",
         "--steps", "100000", "--store", str(store), "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C as in a terminal, even when this test runs in a background job (which
        # starts its children with SIGINT ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.2)
            if store.exists() and Store(store).runs(status="running"):
                break
        time.sleep(3.0)  # past start-up (imports, building the model): into the training loop
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # never leave a 100,000-step run behind
            process.kill()
            process.wait()
    assert process.returncode == 130 and "interrupted" in err, (process.returncode, err)
    [run] = Store(store).runs()
    assert run["status"] == "interrupted"
    assert "resume" in run["error"]


def test_a_trained_run_can_be_taken_away(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["train", "--task", "copy", "--mixer", "gla", "--steps", "6", "--quiet",
                 "--out", str(out), "--json", str(tmp_path / "m.json")]) == 0
    [folder] = (out / "runs").iterdir()
    model = aa.load_run(folder.name, results_dir=out)
    config = aa.run_config(folder.name, results_dir=out)
    assert config["mixer"] == "gla" and not model.training
    assert not hasattr(model, "arena_config")  # nothing is patched onto the model
    task = create_task("copy", **config["task_options"])
    # the kept weights are the ones the run's test metric was measured with
    trained = json.loads((tmp_path / "m.json").read_text())["metrics"]
    again = evaluate(model, task, config["train"]["eval_examples"],
                     eval_seed(config["seed"], "test"), "cpu", "test")
    assert again["metric"] == trained["test_accuracy"]
    batch = task.batch(4, torch.Generator().manual_seed(0), "test")
    # the same weights through export and back give the same outputs
    assert main(["export", folder.name, "--results", str(out), "--out",
                 str(tmp_path / "exported")]) == 0
    exported = aa.load_run(tmp_path / "exported")
    tokens = batch["inputs"]
    torch.testing.assert_close(exported(tokens), model(tokens), rtol=0, atol=0)
    assert model.generate(tokens[:, :3], 4).shape == (4, 7)
    with pytest.raises(ValueError, match="no trained run at 'nope'"):
        aa.load_run("nope", results_dir=out)


def test_a_diverging_run_is_recorded_and_never_ranked(tmp_path, capsys):
    store, counts = run_tiny_suite(tmp_path, ["softmax"],
                                   "steps = 6, eval_every = 3, eval_examples = 16, batch = 4, "
                                   "lr = [1e3, 1e-3], warmup = 0")
    assert counts["diverged"] == 1 and counts["trained"] == 1
    db = Store(store)
    assert sorted(r["status"] for r in db.runs()) == ["diverged", "done"]
    assert [r["lr"] for r in leaderboard_rows(db)] == [1e-3]
    board = leaderboard_markdown(db)
    assert "- diverged: copy-softmax" in board and "training diverged at step" in board


def test_train_with_a_store_records_its_failure(tmp_path, capsys):
    store = tmp_path / "a.sqlite"
    code, err = _cli(capsys, "train", "--task", "copy", "--mixer", "softmax", "--steps", "4",
                     "--lr", "1e9", "--store", str(store), "--quiet", "--out", str(tmp_path))
    assert code == 2 and "diverged" in err
    [run] = Store(store).runs()
    assert run["status"] == "diverged"


def test_lr_schedules():
    train_cfg = {"lr": 1.0, "warmup": 10, "steps": 110, "schedule": "cosine"}
    assert lr_at(0, train_cfg) == pytest.approx(0.1)
    assert lr_at(9, train_cfg) == pytest.approx(1.0)
    assert lr_at(60, train_cfg) == pytest.approx(0.5)
    assert lr_at(109, train_cfg) == pytest.approx(0.0, abs=1e-3)
    rsqrt = {**train_cfg, "schedule": "rsqrt"}
    assert lr_at(39, rsqrt) == pytest.approx((10 / 40) ** 0.5)


def test_evaluation_sets_are_not_training_batches():
    from attnarena.arena.run.train import batch_seed, eval_seed
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
    a = RunConfig(task="copy", mixer="gla").resolve().id
    assert a == RunConfig(task="copy", mixer="gla", device="cuda").resolve().id
    assert a != RunConfig(task="copy", mixer="gla", seed=1).resolve().id


def test_training_is_deterministic_and_learns_copy():
    config = RunConfig(task="copy", mixer="softmax", train={"eval_every": 200})
    first = train(config.resolve(), progress=False)
    second = train(config.resolve(), progress=False)
    assert first["history"] == second["history"]
    assert first["test_accuracy"] == second["test_accuracy"]
    assert first["test_accuracy"] > 0.5  # chance is 1/16
    assert first["params"] > 0 and first["tokens_per_s"] > 0


def test_resumed_training_equals_uninterrupted(tmp_path, monkeypatch):
    import attnarena.arena.run.train as loop

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


def test_model_settings_a_task_cannot_use_are_refused():
    with pytest.raises(ValueError, match="takes no \\['pooling'\\] setting"):
        RunConfig(task="mqar", mixer="gla", model={"pooling": "cls"}).resolve()
    assert RunConfig(task="listops", mixer="gla", model={"pooling": "mean", "norm": False},
                     train={"steps": 1}).resolve()["model"]["norm"] is False


def test_run_settings_are_typed_and_checked_when_made():
    from attnarena.arena.run.config import ModelSettings, ResolvedRun, TrainSettings

    config = RunConfig(task="mqar", mixer="gla", model={"dim": 32}, train={"steps": 3})
    assert isinstance(config.model, ModelSettings) and isinstance(config.train, TrainSettings)
    assert config.model.dim == 32 and dict(config.model) == {"dim": 32}
    assert repr(config.train) == "TrainSettings(steps=3)"
    # the same run whether the overrides come as a dict or as settings
    run = config.resolve()
    assert run.id == RunConfig(task="mqar", mixer="gla", model=ModelSettings(dim=32),
                               train=TrainSettings(steps=3)).resolve().id
    # resolved once into a frozen, typed run that keeps its id with it
    assert isinstance(run, ResolvedRun) and run.train["steps"] == 3 and run.model["dim"] == 32
    with pytest.raises(AttributeError):
        run.mixer = "softmax"
    assert ResolvedRun.of(run.as_dict()) == run and ResolvedRun.of(run) is run
    for bad, message in (({"train": {"lr": -1}}, "train.lr"),
                         ({"train": {"schedule": "linear"}}, "unknown schedule"),
                         ({"model": {"dimm": 3}}, "did you mean|unknown model setting"),
                         ({"model": {"dropout": 1.0}}, "model.dropout"),
                         ({"model": 3}, "table"),
                         ({"dtype": "float8"}, "unknown dtype"),
                         ({"seed": True}, "seed")):
        with pytest.raises((ValueError, TypeError), match=message):
            RunConfig(task="mqar", mixer="gla", **bad)  # fails here, before resolve()
