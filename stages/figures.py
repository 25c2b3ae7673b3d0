"""The report's figures, drawn with matplotlib and returned as SVG text.

Every data series carries an SVG id ``series-<n>`` (matplotlib writes an
artist's gid as its group's id), so a page can be checked for what it plots.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np


@functools.cache
def _pyplot():
    """matplotlib's pyplot, set up for SVG output; imported at the first figure (its import costs most of a
    second at every start of the CLI otherwise)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: figures are only ever written to SVG
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


@dataclass
class Point:
    """One estimate: ``label`` on the axis, ``value`` ± ``error``."""

    label: str
    value: float
    error: float


class _Series:
    """Numbers the series of one figure ``series-0``, ``series-1``, ..."""

    def __init__(self) -> None:
        self.count = 0

    def tag(self, artist) -> None:
        """Give every artist of one series (a line, or a container of bars,
        caps and error lines) the series' id."""
        for a in _flatten(artist):
            a.set_gid(f"series-{self.count}")
        self.count += 1


def _flatten(x):
    if isinstance(x, (list, tuple)):  # lists of lines; Errorbar/Bar containers are tuples
        for item in x:
            yield from _flatten(item)
        if getattr(x, "errorbar", None) is not None:  # a bar container's error bars
            yield from _flatten(x.errorbar)
    elif x is not None and hasattr(x, "set_gid"):
        yield x


def _svg(fig) -> str:
    plt = _pyplot()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # inline: without the XML prolog and doctype


def _plain_log_ticks(axis) -> None:
    """Tick labels of a log axis as plain numbers (200, 0.05), not mathtext powers (2x10^2)."""
    from matplotlib.ticker import LogFormatter

    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))


def tick_labels(svg: str) -> list[str]:
    """The tick and text labels of an SVG figure, as drawn (mathtext tspans joined)."""
    import re

    labels = []
    for block in re.findall(r"<text\b[^>]*>(.*?)</text>", svg, flags=re.S):
        labels.append("".join(re.findall(r">([^<]*)<", f">{block}<")).strip())
    return labels


def loss_curves(history: np.ndarray, with_domain: bool, title: str) -> str:
    """Class (and domain) loss per iteration, log scale."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 2.6))
    series = _Series()
    it = np.arange(1, len(history) + 1)
    series.tag(ax.plot(it, np.maximum(history[:, 0], 1e-12), lw=0.9, label="L_cls"))
    if with_domain:
        series.tag(ax.plot(it, np.maximum(history[:, 1], 1e-12), lw=0.9, label="L_dom"))
    ax.set(xlabel="iteration", ylabel="loss", yscale="log", title=title)
    _plain_log_ticks(ax.yaxis)
    ax.legend(frameon=False)
    return _svg(fig)


def point_chart(
    points: list[Point],
    title: str,
    xlabel: str,
    reference: float | None = None,
    extra: dict[str, list[Point]] | None = None,
) -> str:
    """Horizontal estimates with error bars, one row per point (a forest plot
    when ``reference`` draws the zero line); ``extra`` adds other series
    (e.g. the paper's figures) on the same rows, matched by label."""
    plt = _pyplot()
    labels = [p.label for p in points]
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.32 * len(points)))
    series = _Series()
    y = np.arange(len(points))[::-1]
    series.tag(
        ax.errorbar(
            [p.value for p in points], y, xerr=[p.error for p in points], fmt="o", ms=4, capsize=2, label="ours"
        )
    )
    for i, (name, more) in enumerate((extra or {}).items()):
        rows = [(y[labels.index(p.label)], p) for p in more if p.label in labels]
        if rows:
            series.tag(
                ax.errorbar(
                    [p.value for _, p in rows],
                    [r - 0.25 for r, _ in rows],
                    xerr=[p.error for _, p in rows],
                    fmt="sd"[i % 2],
                    ms=4,
                    capsize=2,
                    label=name,
                )
            )
    if reference is not None:
        ax.axvline(reference, color="0.4", lw=0.8, ls="--")
        lo, hi = ax.get_xlim()
        pad = 0.05 * (max(hi, reference) - min(lo, reference))
        ax.set_xlim(min(lo, reference - pad), max(hi, reference + pad))
    ax.set_yticks(y, labels)
    ax.set(xlabel=xlabel, title=title)
    if extra:
        ax.legend(frameon=False, loc="best")
    return _svg(fig)


def grouped_bars(groups: list[str], bars: dict[str, list[tuple[float, float]]], title: str, ylabel: str) -> str:
    """One group of bars per entry of ``groups`` (e.g. true domains), one
    series per key of ``bars`` (e.g. condensed sets), with error bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    series = _Series()
    width = 0.8 / max(1, len(bars))
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(bars.items()):
        series.tag(
            ax.bar(
                x + (i - (len(bars) - 1) / 2) * width,
                [v for v, _ in values],
                width,
                yerr=[e for _, e in values],
                capsize=2,
                label=name,
            )
        )
    ax.set_xticks(x, groups)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig)


def sweep_lines(name: str, lines: dict[str, list[tuple[float, float, float]]], title: str) -> str:
    """Accuracy against one setting: a line with error bars per family."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    series = _Series()
    for label, pts in lines.items():
        pts = sorted(pts)
        series.tag(
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                marker="o",
                ms=3,
                capsize=2,
                label=label,
            )
        )
    values = sorted({p[0] for pts in lines.values() for p in pts})
    if len(values) > 2 and values[0] > 0 and values[-1] / values[0] >= 100:
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
    ax.set(xlabel=name, ylabel="top-1 %", title=title)
    ax.legend(frameon=False, fontsize=7)
    return _svg(fig)


def labelled_grid(
    image: np.ndarray,
    rows: list[str],
    cols: list[str],
    title: str,
    legend: list[tuple[str, tuple[float, float, float]]] | None = None,
) -> str:
    """An image grid (H, W, 3 uint8, equal cells) with a label per row and per column, and an optional
    ``legend`` of (name, RGB in [0, 1]) swatches (e.g. which colour is which domain in a winner map)."""
    plt = _pyplot()
    height, width = image.shape[:2]
    fig, ax = plt.subplots(figsize=(min(10, 1.2 + width / 60), min(12, 0.4 + height / 60)))
    ax.imshow(image, interpolation="nearest")
    ax.set_yticks((np.arange(len(rows)) + 0.5) * height / len(rows), rows)
    if cols:
        ax.set_xticks((np.arange(len(cols)) + 0.5) * width / len(cols), cols, rotation=45, ha="left")
        ax.xaxis.tick_top()
    else:
        ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title, fontsize=9, pad=4 if not cols else 30)
    if legend:
        from matplotlib.patches import Patch

        ax.legend(
            handles=[Patch(facecolor=rgb, edgecolor="0.5", label=name) for name, rgb in legend],
            title="winner colours",
            frameon=False,
            fontsize=7,
            title_fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )
    return _svg(fig)
