"""Checkpoints and saved runs are checked against the run before they are trusted:
planted or stale steps, missing optimizer state, wrong tensors, NaN weights, bad configs;
throughput of a run resumed from checkpoints is timed like one that was not."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from attnarena.arena.run.artifacts import load_run
from attnarena.arena.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from attnarena.arena.run.config import RunConfig
from attnarena.arena.run.train import train
from attnarena.arena.store import Store
from attnarena.cli import main

TINY = {"steps": 4, "eval_every": 2, "eval_examples": 16, "batch": 4}


def _resolved(**train_settings):
    return RunConfig(task="copy", mixer="gla", model={"dim": 16, "depth": 1, "heads": 2},
                     train={**TINY, **train_settings}).resolve()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real checkpoint at step 2 of a 4-step run (written by a 2-step run of the same
    model, whose only checkpoint is at step 2)."""
    folder = tmp_path_factory.mktemp("ck")
    train(_resolved(steps=2), folder, progress=False)
    [step] = folder.glob("step-*")
    return step


def _planted(tmp_path, checkpoint, change_state=None, change_weights=None):
    import shutil

    folder = tmp_path / "ck"
    shutil.copytree(checkpoint, folder / checkpoint.name)
    target = folder / checkpoint.name
    if change_state:
        state = torch.load(target / "state.pt", weights_only=True)
        change_state(state)
        torch.save(state, target / "state.pt")
    if change_weights:
        weights = load_file(str(target / "model.safetensors"))
        change_weights(weights)
        save_file(weights, str(target / "model.safetensors"))
    return folder


def test_a_real_checkpoint_resumes_and_the_resumption_is_recorded(tmp_path, checkpoint):
    metrics = train(_resolved(), _planted(tmp_path, checkpoint), progress=False)
    assert metrics["steps"] == 4 and metrics["resumptions"] == 1
    fresh = train(_resolved(), tmp_path / "fresh", progress=False)
    assert fresh["resumptions"] == 0
    assert metrics["test_accuracy"] == fresh["test_accuracy"]  # resumed exactly


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(step=10**9), "step is 1000000000, outside the run's 1..4"),
    (lambda s: s.update(step=-50), "step is -50, outside"),
    (lambda s: s.update(step=3), "not one at which the run writes checkpoints"),
    (lambda s: s.update(step=4), "history does not match step 4"),
    (lambda s: s.pop("optimizer"), "state lacks optimizer"),
    (lambda s: s.update(train_seconds=float("nan")), "train_seconds is nan"),
])
def test_a_checkpoint_that_does_not_fit_the_run_is_refused(tmp_path, checkpoint, change,
                                                           message):
    folder = _planted(tmp_path, checkpoint, change_state=change)
    with pytest.raises(CheckpointError, match=message) as caught:
        train(_resolved(), folder, progress=False)
    assert f"delete {folder / checkpoint.name}" in str(caught.value)


def _first_matrix(weights):
    return next(k for k, v in weights.items() if v.dim() == 2)


@pytest.mark.parametrize("change, message", [
    (lambda w: w.update({_first_matrix(w): w[_first_matrix(w)].double()}),
     "stored as torch.float64, the model expects torch.float32"),
    (lambda w: w.update({_first_matrix(w): w[_first_matrix(w)][:1]}), "has shape"),
    (lambda w: w.update({_first_matrix(w): torch.full_like(w[_first_matrix(w)], float("nan"))}),
     "NaN or infinite"),
    (lambda w: w.pop(_first_matrix(w)), "weights lacks"),
    (lambda w: w.update(extra=torch.zeros(1)), "tensors the model does not"),
])
def test_checkpoint_weights_must_fit_the_model(tmp_path, checkpoint, change, message):
    folder = _planted(tmp_path, checkpoint, change_weights=change)
    with pytest.raises(CheckpointError, match=message):
        train(_resolved(), folder, progress=False)


def test_a_planted_checkpoint_fails_the_cli_run_in_one_line(tmp_path, checkpoint, capsys):
    args = ["train", "--task", "copy", "--mixer", "gla", "--steps", "4", "--model", "dim=16",
            "--model", "depth=1", "--model", "heads=2", "--out", str(tmp_path / "out"),
            "--store", str(tmp_path / "a.sqlite"), "--quiet"]
    resolved = RunConfig(task="copy", mixer="gla", model={"dim": 16, "depth": 1, "heads": 2},
                         train={"steps": 4}).resolve()
    run_id = RunConfig(task="copy", mixer="gla", model={"dim": 16, "depth": 1, "heads": 2},
                       train={"steps": 4}).resolve().id
    folder = tmp_path / "out" / "checkpoints" / run_id
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    from attnarena.arena.run.artifacts import build_run_model
    from attnarena.arena.run.checkpoint import save_checkpoint

    model = build_run_model(resolved)
    save_checkpoint(folder, model, None, {"step": 10**9, "history": [], "best_score": 0.0,
                                          "train_seconds": 0.0, "tokens": 0,
                                          "optimizer": {}, "rng": torch.get_rng_state()})
    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert any(f"delete {folder}" in line and "outside the run's" in line for line in err)

    assert Store(tmp_path / "a.sqlite").run(run_id)["status"] == "failed"  # never ranked


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    train(_resolved(steps=2), None, progress=False, save_dir=folder)
    return folder


def _copy(tmp_path, saved_run):
    import shutil

    return shutil.copytree(saved_run, tmp_path / "run")


@pytest.mark.parametrize("change, message", [
    (lambda w: {k: v.double() for k, v in w.items()}, "stored as torch.float64"),
    (lambda w: {k: v.to(torch.int32) for k, v in w.items()}, "stored as torch.int32"),
    (lambda w: {k: torch.full_like(v, float("nan")) for k, v in w.items()}, "NaN"),
])
def test_load_run_refuses_weights_it_would_cast_or_that_are_not_finite(tmp_path, saved_run,
                                                                       change, message):
    folder = _copy(tmp_path, saved_run)
    weights = load_file(str(folder / "model.safetensors"))
    save_file(change(weights), str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=message):
        load_run(folder)


@pytest.mark.parametrize("change, message", [
    (lambda c: c["model"].update(dim="64"), "model.dim must be a positive int"),
    (lambda c: c.pop("task"), "lacks task"),
    (lambda c: c.update(model=None), "model must be a table"),
])
def test_load_run_refuses_a_config_it_cannot_build(tmp_path, saved_run, change, message):
    folder = _copy(tmp_path, saved_run)
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message) as caught:
        load_run(folder)
    assert "config.json" in str(caught.value)
    assert load_run(saved_run) is not None  # the untouched run still loads


class _Plant:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_checkpoint_does_not_run_code(tmp_path):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "ck", model, None, {"step": 1, "history": []})
    [folder] = (tmp_path / "ck").glob("step-*")
    marker = tmp_path / "marker"
    torch.save({"step": 1, "evil": _Plant(marker)}, folder / "state.pt")
    with pytest.raises(CheckpointError, match=f"delete that folder.*|{folder}"):
        load_checkpoint(tmp_path / "ck")
    assert not marker.exists()
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=str(folder)):
        load_checkpoint(tmp_path / "ck")
