"""A long file's windows as a picture: class probabilities over time, with the summary.

The classes' probabilities are stacked (they sum to 1) at each window's centre (speech
segments, ``segments="vad"``: over each segment's span), so the height of a band is its
class's probability there; rows flagged ``silence`` are hatched (their labels mean nothing).
The title gives the file, its length and the summary's label; the legend each class's summary
probability and the share of the windows (by duration; of the speech segments) it labels.
A model trained with attributes gets a second panel below, on the same time axis: each
attribute's value (on the corpus's scale) at the window centres (over each speech segment's
span), its summary value dashed; a model of attributes only has that panel alone.

:func:`windows_figure` draws the rows (those of
:func:`~s3prl_ser.inference.long_audio.predict_windows`, or read back from a JSON lines output)
and returns the figure, to which more can be drawn on the same time axis before saving;
:func:`plot_windows` saves it as PNG.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from s3prl_ser.fileio import atomic_write
from s3prl_ser.inference.rows import FINAL_SEGMENTS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_windows", "windows_figure"]


def _clock(seconds: float, _position: Any = None) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on.

    Example:
        >>> _clock(75.0), _clock(3725.0)
        ('1:15', '1:02:05')
    """
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _tick_step(duration: float) -> int:
    """Seconds between time ticks: a clock-friendly step giving at most 10 ticks.

    Example:
        >>> _tick_step(180.0), _tick_step(600.0), _tick_step(4200.0)
        (30, 60, 600)
    """
    steps = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)
    return next((step for step in steps if duration / step <= 10), 86400)


def _split(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None]:
    """One file's rows: those with a prediction (windows or speech segments, by start), every
    timed row (silence between speech segments too), and the summary."""
    files = {row["file"] for row in rows}
    if len(files) != 1:
        raise ValueError(f"the rows of one file are drawn, got {len(files)} files")
    timed = sorted(
        (row for row in rows if row["status"] == "ok" and row["segment"] not in FINAL_SEGMENTS),
        key=lambda row: row["start"],
    )
    predicted = [row for row in timed if row["probabilities"] or row.get("attributes")]
    if not predicted:
        raise ValueError(f"{files.pop()}: no window rows to draw (a file not longer than long_audio is read whole)")
    summaries = [row for row in rows if row["segment"] == "summary"]
    return predicted, timed, summaries[0] if summaries else None


def windows_figure(rows: Sequence[dict[str, Any]], title: str | None = None) -> Figure:
    """The figure of one file's window rows (and its summary row, if among them).

    Args:
        rows: the file's rows: ``window`` rows (``start``, ``end``, ``silence``, ``probabilities``
            ``{class: p}``) or ``speech`` and ``silence`` rows (``segments="vad"``), and its
            ``summary``; error rows are left out.
        title: instead of the file's name.

    Returns:
        A matplotlib figure (Agg backend) whose first axes has time in seconds on x: overlapping
        windows stacked at their centres, speech segments as stacked bars over their span; rows
        with ``attributes`` add a second axes (the only one without classes) of their values.

    Raises:
        ValueError: the rows are of several files, or hold no window.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    predicted, timed, summary = _split(rows)
    classes = list(predicted[0]["probabilities"])
    attributes = list(predicted[0].get("attributes") or {})
    starts = np.array([row["start"] for row in predicted], dtype=float)
    ends = np.array([row["end"] for row in predicted], dtype=float)
    duration = float(summary["end"]) if summary else max(row["end"] for row in timed)
    windows = bool(np.any(starts[1:] < ends[:-1]))  # overlapping: fixed windows; else speech segments
    panels = [draw for draw, names in ((_draw_classes, classes), (_draw_attributes, attributes)) if names]
    fig, axes = plt.subplots(
        len(panels), 1, sharex=True, squeeze=False, figsize=(11, 4.2 + 3.0 * (len(panels) - 1)), dpi=120
    )
    silent = _merge([(row["start"], row["end"]) for row in timed if row.get("silence")])
    for ax, draw in zip(axes[:, 0], panels):
        handles, names = draw(ax, predicted, summary, starts, ends, duration, windows)
        for start, end in silent:
            ax.axvspan(start, end, facecolor="white", alpha=0.55, hatch="//", edgecolor="0.35", linewidth=0)
        if silent:
            handles.append(Patch(facecolor="white", hatch="//", edgecolor="0.35"))
            meaningless = "label" if draw is _draw_classes else "values"
            names.append(f"silence ({meaningless} meaningless)" if windows else "silence (not classified)")
        ax.legend(
            handles,
            names,
            title="summary (whole file)",
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=9,
            title_fontsize=9,
            frameon=False,
        )
    ax = axes[-1, 0]
    ax.set_xlim(0, duration)
    ax.xaxis.set_major_locator(MultipleLocator(_tick_step(duration)))
    ax.xaxis.set_major_formatter(FuncFormatter(_clock))
    ax.set_xlabel("time (m:ss)" if duration < 3600 else "time (h:mm:ss)")
    name = title or Path(str(predicted[0]["file"])).name
    if summary is None:
        verdict = "no summary (rows cut short)"
    elif classes:
        verdict = f"summary label {summary['label'] or '-'}"
    else:
        verdict = "summary " + ", ".join(f"{a} {v:.2f}" for a, v in (summary.get("attributes") or {}).items())
    weights = ends - starts
    hop = f", {np.diff(starts).min():g} s hop" if len(predicted) > 1 else ""
    step = f"{len(predicted)} windows of {weights.max():g} s{hop}" if windows else f"{len(predicted)} speech segments"
    axes[0, 0].set_title(f"{name} ({_clock(duration)}): {verdict}; {step}", fontsize=10)
    fig.tight_layout()
    return fig


def _draw_classes(
    ax: Axes,
    predicted: list[dict[str, Any]],
    summary: dict[str, Any] | None,
    starts: np.ndarray,
    ends: np.ndarray,
    duration: float,
    windows: bool,
) -> tuple[list[Any], list[str]]:
    """The class probabilities stacked over time on ``ax``; the legend's handles and names."""
    import matplotlib

    classes = list(predicted[0]["probabilities"])
    probabilities = np.array([[row["probabilities"][c] for c in classes] for row in predicted], dtype=float)
    weights = ends - starts
    top_share = np.bincount(probabilities.argmax(axis=1), weights=weights, minlength=len(classes)) / weights.sum()
    colours = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"].colors[: len(classes)]
    mean = summary["probabilities"] if summary and summary["probabilities"] else {}
    mean = mean or dict(zip(classes, probabilities.T @ weights / weights.sum()))
    of = "the time" if windows else "the speech"
    labels = [f"{c}: p {mean[c]:.2f}, label {share:.0%} of {of}" for c, share in zip(classes, top_share)]
    if windows:  # each window's probabilities at its centre; the first and last held out to the file's ends
        times = np.concatenate([[0.0], (starts + ends) / 2, [duration]])
        stacked = np.concatenate([probabilities[:1], probabilities, probabilities[-1:]]).T
        ax.stackplot(times, stacked, colors=colours, labels=labels, linewidth=0)
    else:  # each segment over its own span; the gaps between them are silence rows
        bottom = np.zeros(len(predicted))
        for column, colour, label in zip(probabilities.T, colours, labels):
            ax.bar(starts, column, width=weights, bottom=bottom, align="edge", color=colour, label=label, linewidth=0)
            bottom = bottom + column
    handles, names = ax.get_legend_handles_labels()
    ax.set_ylim(0, 1)
    ax.set_ylabel("class probability (stacked)")
    return handles[::-1], names[::-1]  # the legend's order is the bands', top down


def _draw_attributes(
    ax: Axes,
    predicted: list[dict[str, Any]],
    summary: dict[str, Any] | None,
    starts: np.ndarray,
    ends: np.ndarray,
    duration: float,
    windows: bool,
) -> tuple[list[Any], list[str]]:
    """Each attribute's value over time on ``ax`` (lines through the window centres, held to the
    file's ends; or a level over each speech segment), its summary value dashed; the legend's
    handles and names."""
    import matplotlib

    names = list(predicted[0]["attributes"])
    values = np.array([[row["attributes"][a] for a in names] for row in predicted], dtype=float)
    weights = ends - starts
    mean = (summary or {}).get("attributes") or dict(zip(names, values.T @ weights / weights.sum()))
    colours = matplotlib.colormaps["Dark2"].colors
    for index, (name, column) in enumerate(zip(names, values.T)):
        colour = colours[index % len(colours)]
        label = f"{name}: {mean[name]:.2f}"
        if windows:
            times = np.concatenate([[0.0], (starts + ends) / 2, [duration]])
            ax.plot(times, np.concatenate([column[:1], column, column[-1:]]), color=colour, label=label, linewidth=1.6)
        else:
            ax.hlines(column, starts, ends, colors=[colour], label=label, linewidth=2.4)
        ax.axhline(mean[name], color=colour, linestyle="--", linewidth=0.9)
    ax.set_ylabel("attribute value (corpus scale)")
    return ax.get_legend_handles_labels()


def plot_windows(rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str | None = None) -> Path:
    """Save :func:`windows_figure` of ``rows`` as a PNG at ``path`` (atomically); return ``path``.

    Raises:
        ValueError: ``path`` does not end in ``.png``; see :func:`windows_figure`.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: the plot must end in .png")
    fig = windows_figure(rows, title)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda handle: fig.savefig(handle, format="png"))
    finally:
        plt.close(fig)
    return path


def _merge(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping or touching ``(start, end)`` spans as one.

    Example:
        >>> _merge([(0.0, 8.0), (4.0, 12.0), (20.0, 28.0)])
        [(0.0, 12.0), (20.0, 28.0)]
    """
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
