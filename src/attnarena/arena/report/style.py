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


# Kelly's colours of maximum contrast (less white and black): twenty strong colours, none a
# light shade of another
COLOURS = ("#BE0032", "#0067A5", "#F38400", "#008856", "#875692", "#F3C300", "#882D17",
           "#A1CAF1", "#E68FAC", "#8DB600", "#604E97", "#C2B280", "#F99379", "#654522",
           "#E25822", "#2B3D26", "#848482", "#B3446C", "#DCD300", "#00A3A3")


def mixer_style(label: str) -> dict:
    """matplotlib keyword arguments for a mechanism, fixed by its name: the colour and
    marker depend only on the mechanism (its place among the registered names), so two
    plots, or two reports, never give one mechanism two colours. Twenty colours and ten
    markers: mechanisms twenty places apart share a colour, never a marker. A label with
    options (``linear:form=recurrent``) keeps its mechanism's colour, dashed."""
    name = label.split(":")[0]
    names = list_mixers()
    index = names.index(name) if name in names else len(names) + sum(map(ord, name))
    return {"color": COLOURS[index % len(COLOURS)],
            "marker": MARKERS[(index + index // len(COLOURS)) % len(MARKERS)],
            "linestyle": "--" if ":" in label else "-"}


def coinciding(series: dict, tolerance: float = 0.03) -> list[tuple[str, str]]:
    """Pairs of series ({label: {x: y}}) whose points lie within ``tolerance`` (relative)
    of each other at every shared x: drawn over each other, one would hide the other."""
    labels, pairs = list(series), []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            shared = set(series[a]) & set(series[b])
            if shared and all(abs(series[a][x] - series[b][x])
                              <= tolerance * max(abs(series[a][x]), abs(series[b][x]), 1e-12)
                              for x in shared):
                pairs.append((a, b))
    return pairs


def keep_ticks_within(axis, low, high) -> None:
    """Show only ticks inside [low, high] (an accuracy axis padded past 1.0 for its
    markers labels no 1.02)."""
    from matplotlib.ticker import FixedLocator

    ticks = [t for t in axis.get_majorticklocs() if low - 1e-9 <= t <= high + 1e-9]
    axis.set_major_locator(FixedLocator(ticks))


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


def mib(value) -> str:
    """MiB with three significant digits (a 30 KiB state is 0.0293, not 0.0)."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def format_metric(value, metric: str) -> str:
    """One format per metric everywhere: accuracies to 4 decimals, errors to 4 digits."""
    if value is None:
        return "-"
    return f"{value:.4f}" if metric == "accuracy" else f"{value:.4g}"


def fmt(value, spec):
    return "-" if value is None else format(value, spec)
