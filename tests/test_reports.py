"""Figures a person can read: a distinct look for every mechanism, markers inside the axes,
lines that coincide still visible, quality axes that do not turn noise into a trend."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import attnarena as aa  # noqa: E402
from attnarena.arena.plotstyle import COLOURS, coinciding, mixer_style  # noqa: E402


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
    from attnarena.arena.publish import plot_quality_vs_speed

    rows = [{"mixer": m, "preset": "cpu", "problem": "mqar", "setting": "", "metric":
             "accuracy", "test": acc, "tokens_per_s": speed}
            for m, acc, speed in (("softmax", 1.0, 80000.0), ("gla", 0.52, 54000.0),
                                  ("deltanet", 1.0, 30000.0), ("linear", 0.27, 68000.0))]
    plot_quality_vs_speed(rows, tmp_path / "q.png")
    [fig] = figures
    _inside(fig)
    assert max(t for t in fig.axes[0].get_yticks()) <= 1.0  # no tick labelled past 1.0


def test_the_speed_plot_shows_coinciding_lines_and_says_so(tmp_path, figures):
    from attnarena.arena.speed_report import plot_speed

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
    from attnarena.arena.compress_report import MIN_SPAN, plot_compression

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
