"""What a new user meets: devices, plots, tables, data round trips, nothing skipped in
silence, interrupted runs, trained models to take away."""
import json
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch
from matplotlib.colors import to_hex

import attnarena as aa
from conftest import run_tiny_suite
from attnarena.arena.config import RunConfig
from attnarena.arena.plotstyle import mixer_style
from attnarena.arena.publish import build_reports
from attnarena.arena.report import leaderboard_markdown
from attnarena.arena.speed_report import plot_speed
from attnarena.arena.store import Store
from attnarena.arena.suite import load_suite
from attnarena.arena.train import evaluate, train
from attnarena.cli import main
from attnarena.seeds import eval_seed
from attnarena.tasks import create_task, list_tasks, task_presets
from attnarena.tasks.registry import task_class
from attnarena.tasks.data import SYNTHETIC

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("device", ["cuda", "gpu", "cuda:3", "tpu"])
def test_devices_are_one_line(device, capsys):
    code = main(["train", "--task", "copy", "--mixer", "gla", "--device", device])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"device {device!r}" in err and "this machine has: auto, cpu" in err


def test_auto_is_the_default_device():
    from attnarena.arena.environment import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert RunConfig(task="copy", mixer="gla").device == "auto"


def _lines_by_label(fig):
    out = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                out.setdefault(line.get_label(), set()).add(to_hex(line.get_color()))
    return out


def _keep_figures(monkeypatch) -> list:
    """Collect every figure the report code saves (and still write the files)."""
    import matplotlib.pyplot as plt

    figures, original = [], plt.Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", keep)
    return figures


def test_a_mechanism_keeps_its_colour_across_figures(tmp_path, monkeypatch):
    figures = _keep_figures(monkeypatch)
    env = {"hardware": "cpu", "threads": 2, "torch": "x"}
    config = {"pass_": "decode", "causal": True, "batch": 1, "heads": 4, "head_dim": 64,
              "dtype": "float32"}

    def result(mixers, zero=()):
        rows = [{"mixer": m, "length": n, "status": "ok", "median_ms": n * (i + 1),
                 "peak_mem_mb": 0.0, "state_mb": 0.0 if m in zero else n * (i + 1) / 100}
                for i, m in enumerate(mixers) for n in (256, 1024)]
        return {"rows": rows, "meta": {"config": config, "environment": env}}

    # local's state of 0 MiB cannot be drawn on a log axis; nobody else's colour moves
    plot_speed(result(["gla", "local", "softmax", "retention"], zero=("local",)),
               tmp_path / "a.png")
    plot_speed(result(["softmax", "retention"]), tmp_path / "b.png")
    first, second = (_lines_by_label(f) for f in figures)
    for name in ("softmax", "retention"):
        assert first[name] == second[name] == {to_hex(mixer_style(name)["color"])}
    assert len({c for name, cs in first.items() for c in cs}) == 4  # four mechanisms
    text = " ".join(t.get_text() for ax in figures[0].axes for t in ax.texts)
    assert "local" in text  # named, not silently dropped
    assert figures[0].axes[1].get_ylabel() == "state size (MiB)"
    assert all(ax.get_legend() is not None for ax in figures[0].axes[1:])
    styles = {(mixer_style(n)["color"], mixer_style(n)["marker"]) for n in aa.list_mixers()}
    assert len(styles) == len(aa.list_mixers())  # every mechanism its own look


def test_reports_label_sweeps_and_keep_legends_off_the_data(tmp_path, monkeypatch):
    store, _ = run_tiny_suite(tmp_path, ["softmax", "gla"],
                              "steps = 4, eval_every = 2, eval_examples = 16, batch = 4, "
                              "lr = [1e-3, 1e-2]", report=False)
    board = leaderboard_markdown(Store(store))
    assert ("All rows: preset cpu, seed 0, dim 16, depth 1, heads 2, steps 4, batch 4, "
            "task copy(") in board
    assert "| mixer | lr | test accuracy |" in board
    assert "| gla | 0.01 |" in board and "| gla | 0.001 |" in board
    saved = _keep_figures(monkeypatch)
    build_reports(Store(store), tmp_path)
    quality, curves = saved[:2]
    legend = curves.axes[0].get_legend()
    assert sorted(t.get_text() for t in legend.get_texts()) == [
        "gla (lr 0.001)", "gla (lr 0.01)", "softmax (lr 0.001)", "softmax (lr 0.01)"]
    for fig in (quality, curves):  # the legend lies right of the axes, not on the data
        fig.canvas.draw()
        ax = fig.axes[0]
        box = ax.get_legend().get_window_extent()
        assert box.x0 >= ax.get_window_extent().x1
    low, high = quality.axes[0].get_ylim()
    # one panel per task, titled by the task; the figure says how throughput was measured
    assert high - low >= 0.1 and quality.axes[0].get_title().startswith("copy(")
    assert "(1 task)" in quality._suptitle.get_text()
    assert "as measured while each run trained" in quality._suptitle.get_text()


def test_regression_baselines_stand_beside_the_model(tmp_path):
    resolved = RunConfig(task="icl_regression", mixer="linear",
                         train={"steps": 4, "eval_every": 2, "batch": 8,
                                "eval_examples": 32}).resolve()
    metrics = train(resolved, progress=False)
    store = Store(tmp_path / "a.sqlite")
    store.claim_run("r", resolved, None, {}, "me")
    store.finish_run("r", metrics, "me")
    board = leaderboard_markdown(store)
    for name in ("least squares", "ridge", "one GD step", "predict zero"):
        assert f"| *baseline: {name}" in board
    assert "dim 64" in board and "task icl_regression(dim=" in board  # model's, task's
    value = f"{metrics['baselines']['least_squares']:.4g}"
    assert value in board


GENERATING = [t for t in list_tasks() if t not in SYNTHETIC]


@pytest.mark.parametrize("task", GENERATING)
def test_data_then_train_round_trips_at_the_default_preset(task, tmp_path, capsys):
    small = {"listops": {"train_examples": 40, "val_examples": 8, "test_examples": 8},
             "pathfinder": {"train_examples": 16, "val_examples": 2, "test_examples": 2}}
    options = [f"{k}={v}" for k, v in small.get(task, {}).items()]
    args = ["data", task, "--out", str(tmp_path / task), "--examples", "8"]
    for option in options:
        args += ["--option", option]
    assert main(args) == 0
    if not task_class(task).reads_data:
        return  # drawn fresh each batch: its files are for use outside the arena
    train_args = ["train", "--task", task, "--mixer", "gla", "--data", str(tmp_path / task),
                  "--steps", "1", "--quiet", "--out", str(tmp_path / "out")]
    assert main(train_args) == 0, capsys.readouterr().err


def test_task_options_are_listed_and_checked(capsys):
    with pytest.raises(ValueError, match="unknown option.*'bogus'.*valid options: data_seed, "
                                         "length, pairs"):
        create_task("mqar", bogus=1)
    assert main(["train", "--task", "mqar", "--mixer", "gla", "--task-option", "lenght=8"]) == 2
    assert "did you mean 'length'?" in capsys.readouterr().err
    assert main(["tasks", "mqar"]) == 0
    out = capsys.readouterr().out
    assert "length = 64" in out and "preset cpu:" in out
    assert set(task_presets("mqar")) == {"cpu", "paper"}


def test_nothing_is_left_out_in_silence(tmp_path, capsys):
    suite = load_suite("lra", data_root=tmp_path, device="cpu")
    notes = " ".join(suite.notes)
    assert "left out text, retrieval, image" in notes and str(tmp_path / "text") in notes
    assert "meant for a GPU" in notes and "billion tokens" in notes
    assert main(["run", "--tasks", "cpy"]) == 2
    assert "did you mean 'copy'?" in capsys.readouterr().err
    assert main(["list", "nonexist*"]) == 2
    assert "no mechanism matches 'nonexist*'" in capsys.readouterr().err


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


def test_report_writes_csv_to_a_file(tmp_path, capsys):
    store = tmp_path / "a.sqlite"
    Store(store).close()
    assert main(["report", "--store", str(store), "--format", "csv", "--output",
                 str(tmp_path / "board.csv")]) == 0
    assert (tmp_path / "board.csv").read_text().startswith("task,mixer,preset")


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
    assert model.arena_config["mixer"] == "gla" and not model.training
    config = model.arena_config
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


def test_version_and_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "attnarena", "--version"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"attnarena {aa.__version__}"


def test_the_contributing_recipe_makes_a_working_mechanism():
    import torch.nn.functional as F

    from attnarena import registry
    from attnarena.mixers.linear import LinearAttentionBase

    try:
        @registry.register_mixer("my_linear", family="linear attention",
                                 paper="Author et al. 2026, The Paper's Title",
                                 complexity="O(L D^2)", patterns=("self", "causal"),
                                 forms=("parallel", "chunk", "recurrent"))
        class MyLinear(LinearAttentionBase):
            """My linear attention (Author et al. 2026): relu features."""

            def __init__(self, dim, heads=1, causal=False, *, form="chunk", chunk_size=64):
                super().__init__(dim, heads, causal, form=form, chunk_size=chunk_size)

            def map_features(self, x, positions, is_query):
                return F.relu(x) + 1e-6

        assert "my_linear" in aa.list_mixers()
        x = torch.randn(2, 9, 16)
        outputs = {}
        for form in ("parallel", "chunk", "recurrent"):
            torch.manual_seed(0)
            mixer = aa.create_mixer("my_linear", dim=16, heads=2, causal=True, form=form,
                                    chunk_size=4)
            outputs[form] = mixer(x)
        torch.testing.assert_close(outputs["chunk"], outputs["parallel"])
        torch.testing.assert_close(outputs["recurrent"], outputs["parallel"])
        state, steps = None, []
        for t in range(9):
            y_t, state = mixer.step(x[:, t], state)
            steps.append(y_t)
        torch.testing.assert_close(torch.stack(steps, 1), outputs["recurrent"])
    finally:
        registry._MIXERS.pop("my_linear", None)


def test_readme_mechanism_table_is_the_registry():
    from attnarena.registry import mechanism_table

    readme = (ROOT / "README.md").read_text()
    begin = readme.index("<!-- mechanisms:")
    begin = readme.index("\n", begin) + 1
    end = readme.index("<!-- end of mechanisms -->")
    assert readme[begin:end].strip() == mechanism_table(), (
        "README's mechanism table differs from the registry: paste the output of "
        "`attnarena list --markdown` between its markers (CONTRIBUTING.md, step 4)")


def test_quality_against_speed_never_averages_throughput_across_tasks(tmp_path, monkeypatch):
    from attnarena.arena.publish import plot_quality_vs_speed

    def row(mixer, problem, test, speed):
        return {"mixer": mixer, "preset": "cpu", "problem": problem, "setting": "", "test": test,
                "tokens_per_s": speed, "metric": "accuracy", "higher_is_better": True}

    rows = [row("softmax", "copy", 1.0, 2_000.0), row("gla", "copy", 0.9, 4_000.0),
            row("softmax", "mqar", 1.0, 160_000.0), row("gla", "mqar", 0.5, 90_000.0)]
    saved = _keep_figures(monkeypatch)
    plot_quality_vs_speed(rows, tmp_path / "q.png")
    fig = saved[0]
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert set(panels) == {"copy", "mqar"}
    for task, expected in (("copy", {2_000.0, 4_000.0}), ("mqar", {160_000.0, 90_000.0})):
        xs = {float(x) for c in panels[task].collections for x, _ in c.get_offsets()}
        assert xs == expected  # each task's own throughputs, none averaged with another's
