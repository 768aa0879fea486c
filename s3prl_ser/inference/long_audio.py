"""Long recordings in windows: per-window predictions with timestamps and a whole-file summary.

A file longer than the threshold is never decoded whole: each window is read from disk on its
own (:func:`~s3prl_ser.data.audio.read_segment`) and windows go through the model
``batch_size`` at a time, so memory holds ``batch_size`` windows, whatever the file's length.

Windows start every ``hop`` seconds and last ``window`` seconds; the last one ends at the end
of the file (it may be shorter, but never shorter than ``window - hop``: a window is added
only while the previous one ends before the file does). The summary's probabilities (and
attribute values, for a model trained with attributes) are the mean of the windows' weighted by
their durations. Each window's samples are those
of the whole file resampled at once (no seams). ``silence`` marks a window, or a summary (over
the whole file), quieter than :data:`~s3prl_ser.data.audio.SILENCE_DBFS`: its label means nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from s3prl_ser.data.audio import SAMPLE_RATE, SILENCE_DBFS, AudioInfo, audio_info, is_silent, level_dbfs, read_segment
from s3prl_ser.inference.postprocess import check_classes, postprocess_row
from s3prl_ser.inference.rows import prediction_row

__all__ = ["AudioClassifier", "window_plan", "predict_windows", "stream_windows"]


class AudioClassifier(Protocol):
    """What window and file prediction need of a model (an
    :class:`~s3prl_ser.inference.recognizer.EmotionRecognizer`): its classes and attributes, its
    shortest clip, and B mono 16 kHz waveforms ``(T_b,)`` -> class probabilities then attribute
    values ``(B, C + A)``."""

    class_names: list[str]
    attribute_names: list[str]
    min_samples: int

    def predictions(self, wavs: Sequence[Tensor]) -> Tensor: ...

    def outputs(self, wavs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """(predictions ``(B, C + A)``, embeddings ``(B, E)``): file prediction with ``embeddings=True``."""
        ...


def window_plan(duration: float, window: float = 8.0, hop: float = 4.0) -> list[tuple[float, float]]:
    """``(start, end)`` seconds of the windows covering ``[0, duration]``.

    Example:
        >>> window_plan(20.0)
        [(0.0, 8.0), (4.0, 12.0), (8.0, 16.0), (12.0, 20.0)]
        >>> window_plan(21.0)  # the last window is shorter, and ends at the end
        [(0.0, 8.0), (4.0, 12.0), (8.0, 16.0), (12.0, 20.0), (16.0, 21.0)]
        >>> window_plan(5.0)
        [(0.0, 5.0)]
    """
    if not (window > 0 and 0 < hop <= window):
        raise ValueError(f"need 0 < hop <= window, got window {window} s and hop {hop} s")
    plan = []
    start = 0.0
    while True:
        end = min(start + window, duration)
        plan.append((start, end))
        if end >= duration:
            return plan
        start = round(start + hop, 6)


def predict_windows(recognizer: AudioClassifier, path: str | os.PathLike, **options: Any) -> list[dict[str, Any]]:
    """The rows of :func:`stream_windows` in one list: the windows', then the summary."""
    return [row for rows in stream_windows(recognizer, path, **options) for row in rows]


def stream_windows(
    recognizer: AudioClassifier,
    path: str | os.PathLike,
    *,
    window: float = 8.0,
    hop: float = 4.0,
    batch_size: int = 8,
    info: AudioInfo | None = None,
    on_window: Callable[[float], None] | None = None,
    classes: Sequence[str] | None = None,
    top_k: int | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """The rows of each forward pass as it is done (up to ``batch_size`` window rows), then ``[summary]``:
    window rows (``segment="window"``, ``start``, ``end``) and one summary row (``segment="summary"``),
    each with ``silence`` (RMS level below :data:`~s3prl_ser.data.audio.SILENCE_DBFS`).

    Args:
        recognizer: the model.
        path: the audio file.
        window, hop: seconds.
        batch_size: windows per forward pass.
        info: the file's :class:`AudioInfo` if already read.
        on_window: called after each window with the seconds of the file it newly covers (progress bars).
        classes, top_k: each row over this subset of the classes, renormalised (the summary: the
            whole-file mean, then renormalised), and with a ``top_k`` field; see
            :func:`~s3prl_ser.inference.postprocess.postprocess_row`.

    Raises:
        FileNotFoundError, AudioError: the file or one of its windows cannot be read.
    """
    path = Path(path)
    if classes is not None:
        check_classes(recognizer.class_names, classes)
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    info = info or audio_info(path)
    duration = info.frames / info.sample_rate
    plan = window_plan(duration, window, hop)
    names = {"attribute_names": recognizer.attribute_names}
    weighted = torch.zeros(len(recognizer.class_names) + len(recognizer.attribute_names), dtype=torch.float64)
    covered = 0.0
    energy = 0.0  # sum of squares of the file's samples, each counted once (windows overlap)
    done = 0  # samples of the file counted in energy
    for first in range(0, len(plan), batch_size):
        chunk = plan[first : first + batch_size]
        wavs = [
            read_segment(path, info, round(start * SAMPLE_RATE), min(round(end * SAMPLE_RATE), info.samples))
            for start, end in chunk
        ]
        rows: list[dict[str, Any]] = []
        for (start, end), wav, probs in zip(chunk, wavs, recognizer.predictions(wavs)):
            begin = round(start * SAMPLE_RATE)
            energy += float(wav[done - begin :].double().square().sum())
            done = begin + wav.numel()
            rows.append(
                prediction_row(
                    recognizer.class_names,
                    probs,
                    **names,
                    file=str(path),
                    segment="window",
                    start=start,
                    end=end,
                    duration=end - start,
                    status="ok",
                    silence=is_silent(wav),
                )
            )
            weighted += (end - start) * probs.double()
            if on_window is not None:
                on_window(end - covered)
            covered = end
        yield [postprocess_row(row, classes, top_k) for row in rows]
    total = sum(end - start for start, end in plan)
    summary = prediction_row(
        recognizer.class_names,
        (weighted / total).float(),
        **names,
        file=str(path),
        segment="summary",
        start=0.0,
        end=duration,
        duration=duration,
        status="ok",
        silence=level_dbfs(mean_square=energy / max(done, 1)) < SILENCE_DBFS,
    )
    yield [postprocess_row(summary, classes, top_k)]
