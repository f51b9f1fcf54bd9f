"""Figures a person can read: a distinct look for every mechanism, markers inside the axes,
lines that coincide still visible, quality axes that do not turn noise into a trend."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex

import attnarena as aa  # noqa: E402
from attnarena.arena.report.leaderboard import leaderboard_markdown
from attnarena.arena.report.publish import build_reports
from attnarena.arena.report.speed import plot_speed
from attnarena.arena.report.style import COLOURS, coinciding, mixer_style  # noqa: E402
from attnarena.arena.run.config import RunConfig
from attnarena.arena.run.train import train
from attnarena.arena.store import Store
from attnarena.cli import main
from conftest import run_tiny_suite


def test_every_mechanism_has_its_own_colour_and_marker_pair():
    looks = [(mixer_style(n)["color"], mixer_style(n)["marker"]) for n in aa.list_mixers()]
    assert len(set(looks)) == len(looks)
    assert len(set(COLOURS)) == len(COLOURS)


def test_coinciding_series_are_found():
    series = {"linear": {256: 0.0625, 1024: 0.0625}, "retention": {256: 0.0626, 1024: 0.0624},
              "gla": {256: 0.03, 1024: 0.03}}
    assert coinciding(series) == [("linear", "retention")]


@pytest.fixture
def figures(monkeypatch):
    kept, real = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig)
                        if isinstance(fig, matplotlib.figure.Figure) else None)
    yield kept
    real("all")


def _inside(fig):
    """Every drawn marker of every axes lies inside that axes (1 pixel of slack)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        box = ax.get_window_extent(renderer)
        for artist in list(ax.collections) + list(ax.lines):
            if artist.get_label() == "Pareto front":
                continue
            extent = artist.get_window_extent(renderer)
            if extent.width == 0 and extent.height == 0:
                continue
            assert box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1, artist.get_label()
            assert box.y0 - 1 <= extent.y0 and extent.y1 <= box.y1 + 1, artist.get_label()


def test_quality_markers_at_one_are_drawn_whole(tmp_path, figures):
    from attnarena.arena.report.leaderboard import plot_quality_vs_speed

    rows = [{"mixer": m, "preset": "cpu", "problem": "mqar", "setting": "", "metric":
             "accuracy", "test": acc, "tokens_per_s": speed}
            for m, acc, speed in (("softmax", 1.0, 80000.0), ("gla", 0.52, 54000.0),
                                  ("deltanet", 1.0, 30000.0), ("linear", 0.27, 68000.0))]
    plot_quality_vs_speed(rows, tmp_path / "q.png")
    [fig] = figures
    _inside(fig)
    assert max(t for t in fig.axes[0].get_yticks()) <= 1.0  # no tick labelled past 1.0


def test_the_speed_plot_shows_coinciding_lines_and_says_so(tmp_path, figures):
    from attnarena.arena.report.speed import plot_speed

    rows = []
    for mixer, state in (("softmax", [0.5, 2.0]), ("linear", [0.0625, 0.0625]),
                         ("retention", [0.0625, 0.0625])):
        for length, mib in zip((256, 1024), state):
            rows.append({"mixer": mixer, "length": length, "pass": "decode", "status": "ok",
                         "median_ms": 0.3 + 0.01 * len(rows), "state_mb": mib})
    result = {"rows": rows, "meta": {
        "config": {"pass_": "decode", "causal": True, "batch": 1, "heads": 4, "head_dim": 64,
                   "dtype": "float32"},
        "environment": {"hardware": "test cpu", "threads": 2, "torch": "2.13.0"}}}
    plot_speed(result, tmp_path / "s.png")
    [fig] = figures
    notes = " ".join(t.get_text() for t in fig.texts)
    assert "retention over linear (hollow markers)" in notes
    hollow = [line for line in fig.axes[1].lines if line.get_label() == "retention"]
    assert hollow and hollow[0].get_markerfacecolor() == "none"
    _inside(fig)


def test_compression_quality_axis_spans_at_least_five_points(tmp_path, figures):
    from attnarena.arena.report.compression import MIN_SPAN, plot_compression

    def speed(ms):
        return {"model": {"32": {"ms": ms}}}

    base = {"source": "r", "recipe": "float", "test": 0.803, "bytes": 1000, "metric":
            "accuracy", "mixer": "softmax", "task": "mqar", "speed": speed(10.0),
            "baseline_speed": speed(10.0)}
    rows = [base, {**base, "recipe": "int8", "test": 0.805, "bytes": 300,
                   "speed": speed(4.0)}]
    plot_compression(rows, tmp_path / "c.png")
    [fig] = figures
    for ax in fig.axes:
        low, high = ax.get_ylim()
        assert high - low >= MIN_SPAN - 1e-9
    assert not any(ax.get_legend() for ax in fig.axes[:1])  # the legend is outside the data


def _keep_figures(monkeypatch) -> list:
    """Collect every figure the report code saves (and still write the files)."""
    import matplotlib.pyplot as plt

    figures, original = [], plt.Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", keep)
    return figures


def _lines_by_label(fig):
    out = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                out.setdefault(line.get_label(), set()).add(to_hex(line.get_color()))
    return out


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


def test_report_writes_csv_to_a_file(tmp_path, capsys):
    store = tmp_path / "a.sqlite"
    Store(store).close()
    assert main(["report", "--store", str(store), "--format", "csv", "--output",
                 str(tmp_path / "board.csv")]) == 0
    assert (tmp_path / "board.csv").read_text().startswith("task,mixer,preset")


def test_quality_against_speed_never_averages_throughput_across_tasks(tmp_path, monkeypatch):
    from attnarena.arena.report.leaderboard import plot_quality_vs_speed

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


def test_training_conditions_say_how_throughput_was_measured():
    from attnarena.arena.report.leaderboard import training_conditions

    assert training_conditions([{"threads": 1, "jobs": 2}] * 2) == \
        "1 thread per run, 2 runs at once"
    assert training_conditions([{"threads": 2, "jobs": 1}, {"threads": 1, "jobs": 2}]) == \
        "1 thread per run, 2 runs at once; 2 threads per run"
    assert training_conditions([{"threads": None, "jobs": 1}]) == ""


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
