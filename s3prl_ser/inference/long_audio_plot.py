"""A long file's windows as a picture: class probabilities over time, with the summary.

The classes' probabilities are stacked (they sum to 1) at each window's centre (speech
segments, ``segments="vad"``: over each segment's span), so the height of a band is its
class's probability there; rows flagged ``silence`` are hatched (their labels mean nothing).
The title gives the file, its length and the summary's label; the legend each class's summary
probability and the share of the windows (by duration; of the speech segments) it labels.

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
    predicted = [row for row in timed if row["probabilities"]]
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
        windows stacked at their centres, speech segments as stacked bars over their span.

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
    starts = np.array([row["start"] for row in predicted], dtype=float)
    ends = np.array([row["end"] for row in predicted], dtype=float)
    probabilities = np.array([[row["probabilities"][c] for c in classes] for row in predicted], dtype=float)
    duration = float(summary["end"]) if summary else max(row["end"] for row in timed)
    windows = bool(np.any(starts[1:] < ends[:-1]))  # overlapping: fixed windows; else speech segments
    weights = ends - starts
    top_share = np.bincount(probabilities.argmax(axis=1), weights=weights, minlength=len(classes)) / weights.sum()
    colours = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"].colors[: len(classes)]
    mean = summary["probabilities"] if summary and summary["probabilities"] else {}
    mean = mean or dict(zip(classes, probabilities.T @ weights / weights.sum()))
    of = "the time" if windows else "the speech"
    labels = [f"{c}: p {mean[c]:.2f}, label {share:.0%} of {of}" for c, share in zip(classes, top_share)]
    fig, ax = plt.subplots(figsize=(11, 4.2), dpi=120)
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
    handles, names = handles[::-1], names[::-1]  # the legend's order is the bands', top down
    silent = _merge([(row["start"], row["end"]) for row in timed if row.get("silence")])
    for start, end in silent:
        ax.axvspan(start, end, facecolor="white", alpha=0.55, hatch="//", edgecolor="0.35", linewidth=0)
    if silent:
        handles.append(Patch(facecolor="white", hatch="//", edgecolor="0.35"))
        names.append("silence (label meaningless)" if windows else "silence (not classified)")
    ax.set_xlim(0, duration)
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_locator(MultipleLocator(_tick_step(duration)))
    ax.xaxis.set_major_formatter(FuncFormatter(_clock))
    ax.set_xlabel("time (m:ss)" if duration < 3600 else "time (h:mm:ss)")
    ax.set_ylabel("class probability (stacked)")
    name = title or Path(str(predicted[0]["file"])).name
    verdict = "no summary (rows cut short)" if summary is None else f"summary label {summary['label'] or '-'}"
    hop = f", {np.diff(starts).min():g} s hop" if len(predicted) > 1 else ""
    step = f"{len(predicted)} windows of {weights.max():g} s{hop}" if windows else f"{len(predicted)} speech segments"
    ax.set_title(f"{name} ({_clock(duration)}): {verdict}; {step}", fontsize=10)
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
    fig.tight_layout()
    return fig


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
