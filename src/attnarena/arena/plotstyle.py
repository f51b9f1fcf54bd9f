"""One look for every plot of a report: a mechanism keeps its colour and marker in every
figure, legends sit outside the data, and log axes label the values that were measured."""
from __future__ import annotations

from attnarena.registry import list_mixers

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mixer_style(label: str) -> dict:
    """matplotlib keyword arguments for a mechanism, fixed by its name: the colour and
    marker depend only on the mechanism (its place among the registered names), so two
    plots, or two reports, never give one mechanism two colours. A label with options
    (``linear:form=recurrent``) keeps its mechanism's colour, dashed."""
    from matplotlib import colormaps

    name = label.split(":")[0]
    names = list_mixers()
    index = names.index(name) if name in names else len(names) + sum(map(ord, name))
    colours = colormaps["tab20"].colors
    # tab20 pairs a strong colour with a light one: strong colours first, then light ones
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {"color": colours[order[index % 20]], "marker": MARKERS[(index // 20 + index)
                                                                   % len(MARKERS)],
            "linestyle": "--" if ":" in label else "-"}


def legend_outside(ax, handles=None, labels=None, title=None) -> None:
    """A legend to the right of the axes, so it never covers data."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  fontsize=8, title=title, title_fontsize=8, frameon=False)


def label_log_axis(axis, values, at_values: bool = False) -> None:
    """Label a log axis in plain numbers, never with a single tick: at the measured values
    themselves (``at_values``, for lengths), or at 1-2-5 steps when the values span less
    than two decades."""
    from matplotlib.ticker import (FixedLocator, FuncFormatter, LogLocator, NullFormatter,
                                   NullLocator)

    values = sorted({v for v in values if v and v > 0})
    if not values:
        return
    if at_values:
        axis.set_major_locator(FixedLocator(_spread(values)))
        axis.set_minor_locator(NullLocator())
    elif values[-1] / values[0] < 100:
        subs = (1.0, 2.0, 3.0, 5.0) if values[-1] / values[0] < 10 else (1.0, 2.0, 5.0)
        axis.set_major_locator(LogLocator(base=10, subs=subs))
        axis.set_minor_formatter(NullFormatter())
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _spread(values, most=8):
    """At most ``most`` of the sorted values, evenly chosen, first and last kept."""
    if len(values) <= most:
        return values
    step = (len(values) - 1) / (most - 1)
    return [values[round(i * step)] for i in range(most)]


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")
