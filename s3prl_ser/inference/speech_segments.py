"""Long recordings cut where the speech is: voice activity segments, one row per segment, silence between.

``segments="vad"`` (CLI ``--segments vad``) reads a long file in two passes. The first runs
silero-vad over the whole file, a block at a time (constant memory): its ONNX model, shipped in
the ``silero-vad`` wheel (``pip install 's3prl-ser[vad]'``), run by onnxruntime here. It gives a
speech probability every 32 ms (:data:`FRAME` samples). Speech starts at a frame at or above
``threshold`` and ends where the probability stays below ``threshold - 0.15`` for
:data:`MIN_SILENCE` s; speech shorter than :data:`MIN_SPEECH` s (or than the model's
``min_samples``) is dropped, and each span is padded by :data:`SPEECH_PAD` s (silero-vad's own
defaults). Spans closer than ``merge_gap`` s are merged while the result stays within
``max_length`` s, and a span longer than ``max_length`` is cut into equal parts, none longer:
short pauses inside a sentence do not split it, and no segment is longer than the model's
useful length. The second pass reads each segment alone and classifies ``batch_size`` at a time.

Rows, in time order, cover the file without overlap: ``segment="speech"`` (a prediction;
``start``, ``end``), ``segment="silence"`` for every gap (no ``label``, empty ``probabilities``,
``silence`` true), and a ``summary``: the duration-weighted mean of the speech rows'
probabilities; with no speech at all, no label and ``silence`` true.

``segments="fixed"`` (the default) is :func:`~s3prl_ser.inference.long_audio.stream_windows`:
it needs no optional package and gives a row every ``hop`` s whatever the audio holds.

Only the ONNX file is loaded: silero-vad's package is never imported (its ``load_silero_vad``
loads TorchScript by default, and importing it sets torch's thread count).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from s3prl_ser.data.audio import SAMPLE_RATE, AudioInfo, audio_info, is_silent, read_segment
from s3prl_ser.inference.long_audio import AudioClassifier, stream_windows
from s3prl_ser.inference.postprocess import check_classes, postprocess_row
from s3prl_ser.inference.rows import prediction_row

__all__ = [
    "SEGMENTS",
    "SileroVAD",
    "VADUnavailableError",
    "default_vad",
    "silero_model_path",
    "speech_spans",
    "segment_plan",
    "stream_speech",
    "stream_long",
]

# How a long file is cut: fixed windows, or voice activity segments.
SEGMENTS = ("fixed", "vad")
# silero-vad's frame and the context it prepends to each frame, in samples at 16 kHz.
FRAME = 512
CONTEXT = 64
# Frames per onnxruntime call (16.4 s), as silero-vad's sequence front-end does.
BLOCK_FRAMES = 512
# silero-vad's defaults (get_speech_timestamps), in seconds.
MIN_SPEECH = 0.25
MIN_SILENCE = 0.1
SPEECH_PAD = 0.03
# The model file of silero-vad 6's wheel: all frames of a block in one call, the LSTM state in and out.
SEQUENCE_MODEL = "silero_vad_16k_sequence.onnx"


class VADUnavailableError(ImportError):
    """silero-vad or onnxruntime is not installed."""


def silero_model_path(name: str = SEQUENCE_MODEL) -> Path:
    """The ONNX file ``name`` inside the installed ``silero-vad`` distribution (not imported).

    Raises:
        VADUnavailableError: silero-vad is not installed, or its wheel has no such file.
    """
    hint = "speech segments (--segments vad) need silero-vad and onnxruntime: pip install 's3prl-ser[vad]'"
    try:
        distribution = metadata.distribution("silero-vad")
    except metadata.PackageNotFoundError as error:
        raise VADUnavailableError(hint) from error
    path = Path(str(distribution.locate_file(f"silero_vad/data/{name}")))
    if not path.is_file():
        raise VADUnavailableError(f"{path}: not in silero-vad {distribution.version}; {hint}")
    return path


class SileroVAD:
    """silero-vad's speech probability for every :data:`FRAME` samples (32 ms) of 16 kHz audio:
    its sequence ONNX model run by onnxruntime, :data:`BLOCK_FRAMES` frames a call, the LSTM
    state and the 64-sample context carried from block to block (the same probabilities as
    silero-vad's frame-by-frame model, tests/test_speech_segments.py).

    Example:
        >>> vad = SileroVAD()
        >>> probs = vad.probabilities([torch.zeros(16000)])  # 1 s: 31.25 frames, the last one zero-padded
        >>> probs.shape, bool(probs.max() < 0.1)
        ((32,), True)
    """

    def __init__(self) -> None:
        try:
            import onnxruntime  # optional: only this mode needs it
        except ImportError as error:
            raise VADUnavailableError(
                "speech segments (--segments vad) need onnxruntime: pip install 's3prl-ser[vad]'"
            ) from error
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # a 300k-parameter model: more threads only wait on each other
        options.inter_op_num_threads = 1
        self.path = silero_model_path()
        self.session = onnxruntime.InferenceSession(
            str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def probabilities(self, chunks: Iterable[Tensor]) -> np.ndarray:
        """Consecutive pieces ``(T_i,)`` of one mono 16 kHz waveform (any lengths) -> float32
        ``(ceil(sum T_i / FRAME),)``: frame j's speech probability covers samples
        ``j * FRAME .. (j + 1) * FRAME`` (the last frame zero-padded)."""
        hidden = np.zeros((1, 1, 128), dtype=np.float32)
        cell = np.zeros((1, 1, 128), dtype=np.float32)
        context = np.zeros(CONTEXT, dtype=np.float32)
        pending = np.zeros(0, dtype=np.float32)
        out: list[np.ndarray] = []

        def run(samples: np.ndarray) -> None:
            nonlocal hidden, cell, context
            frames = samples.reshape(-1, FRAME)
            contexts = np.concatenate([context[None], frames[:-1, -CONTEXT:]])
            probs, hidden, cell = self.session.run(
                ["speech_probs", "hn", "cn"],
                {"input": np.concatenate([contexts, frames], axis=1), "h": hidden, "c": cell},
            )
            context = frames[-1, -CONTEXT:].copy()
            out.append(probs.reshape(-1))

        for chunk in chunks:
            pending = np.concatenate([pending, chunk.detach().cpu().numpy().astype(np.float32).reshape(-1)])
            while len(pending) >= BLOCK_FRAMES * FRAME:
                run(pending[: BLOCK_FRAMES * FRAME])
                pending = pending[BLOCK_FRAMES * FRAME :]
        if len(pending):
            run(np.pad(pending, (0, -len(pending) % FRAME)))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


@functools.cache
def default_vad() -> SileroVAD:
    """The :class:`SileroVAD` of this process (one onnxruntime session).

    Raises:
        VADUnavailableError: silero-vad or onnxruntime is not installed.
    """
    return SileroVAD()


def speech_spans(
    probabilities: np.ndarray,
    samples: int,
    *,
    threshold: float = 0.5,
    min_speech: int = round(MIN_SPEECH * SAMPLE_RATE),
    min_silence: int = round(MIN_SILENCE * SAMPLE_RATE),
    pad: int = round(SPEECH_PAD * SAMPLE_RATE),
) -> list[tuple[int, int]]:
    """Frame probabilities ``(F,)`` of a ``samples``-long waveform -> speech ``(start, stop)``
    sample spans (16 kHz), sorted, disjoint, within ``[0, samples]``.

    Speech starts at a frame >= ``threshold`` and ends where frames below ``threshold - 0.15``
    start and last ``min_silence`` samples (a frame >= ``threshold`` in between resets the count),
    or at the end; spans shorter than ``min_speech`` are dropped; each is padded by ``pad`` on
    both sides, two spans closer than ``2 * pad`` sharing their gap (silero-vad's
    ``get_speech_timestamps`` rules, without its cut of long spans: :func:`segment_plan` cuts).

    Example:
        >>> probs = np.array([0.0] * 10 + [0.9] * 20 + [0.1] * 10)  # frames of 512 samples
        >>> speech_spans(probs, 40 * 512)
        [(4640, 15840)]
        >>> speech_spans(probs, 40 * 512, min_speech=20 * 512 + 1)  # too short: none
        []
    """
    low = max(threshold - 0.15, 0.01)
    spans = []
    start: int | None = None
    quiet_since: int | None = None
    for index, prob in enumerate(probabilities.tolist()):
        position = index * FRAME
        if start is None:
            if prob >= threshold:
                start, quiet_since = position, None
            continue
        if prob >= threshold:
            quiet_since = None
        elif prob < low:
            quiet_since = position if quiet_since is None else quiet_since
            if position - quiet_since >= min_silence:
                spans.append((start, quiet_since))
                start = None
    if start is not None:
        spans.append((start, samples))
    spans = [(a, min(b, samples)) for a, b in spans if min(b, samples) - a >= min_speech]
    padded = []
    for i, (a, b) in enumerate(spans):
        left = a - pad if i == 0 else max(a - pad, (spans[i - 1][1] + a) // 2)
        right = b + pad if i == len(spans) - 1 else min(b + pad, (b + spans[i + 1][0]) // 2)
        padded.append((max(left, 0), min(right, samples)))
    return padded


def segment_plan(spans: Sequence[tuple[int, int]], max_length: int, merge_gap: int) -> list[tuple[int, int]]:
    """Speech spans (samples, sorted, disjoint) -> the segments to classify: neighbours closer
    than ``merge_gap`` merged while the merged span is at most ``max_length`` long, then each
    span longer than ``max_length`` cut into the fewest equal parts no longer than it.

    Example:
        >>> segment_plan([(0, 10), (12, 20), (40, 45), (50, 95)], max_length=30, merge_gap=5)
        [(0, 20), (40, 45), (50, 72), (72, 95)]
    """
    merged: list[tuple[int, int]] = []
    for start, stop in spans:
        if merged and start - merged[-1][1] < merge_gap and stop - merged[-1][0] <= max_length:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    plan = []
    for start, stop in merged:
        parts = math.ceil((stop - start) / max_length)
        bounds = [start + (stop - start) * i // parts for i in range(parts + 1)]
        plan.extend(zip(bounds[:-1], bounds[1:]))
    return plan


def stream_speech(
    recognizer: AudioClassifier,
    path: str | os.PathLike,
    *,
    max_length: float = 8.0,
    merge_gap: float = 0.5,
    threshold: float = 0.5,
    batch_size: int = 8,
    info: AudioInfo | None = None,
    on_window: Callable[[float], None] | None = None,
    classes: Sequence[str] | None = None,
    top_k: int | None = None,
    vad: SileroVAD | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """The rows of each forward pass as it is done (``speech`` rows and the ``silence`` rows of the
    gaps before them), then the last gap's and ``[summary]``; see the module docstring.

    Args:
        recognizer: the model.
        path: the audio file.
        max_length: the longest segment, seconds (at least the model's ``min_samples``).
        merge_gap: speech spans closer than this (seconds) become one segment.
        threshold: silero-vad's speech probability threshold.
        batch_size: segments per forward pass.
        info: the file's :class:`AudioInfo` if already read.
        on_window: called after each forward pass with the seconds of the file it newly covers.
        classes, top_k: see :func:`~s3prl_ser.inference.postprocess.postprocess_row`.
        vad: the voice activity model (default: one :class:`SileroVAD` per process).

    Raises:
        FileNotFoundError, AudioError: the file or one of its blocks cannot be read.
        VADUnavailableError: silero-vad or onnxruntime is not installed.
        ValueError: ``max_length`` shorter than the model's ``min_samples``, ``threshold`` outside
            (0, 1), a negative ``merge_gap``, or a bad ``top_k``/``classes``.
    """
    path = Path(path)
    if classes is not None:
        check_classes(recognizer.class_names, classes)
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    longest = round(max_length * SAMPLE_RATE)
    if longest < recognizer.min_samples:
        raise ValueError(f"max_length {max_length} s is shorter than the model's {recognizer.min_samples} samples")
    if not (0 < threshold < 1 and merge_gap >= 0):
        raise ValueError(f"need 0 < threshold < 1 and merge_gap >= 0, got {threshold} and {merge_gap}")
    vad = vad or default_vad()
    info = info or audio_info(path)
    total = info.samples
    block = BLOCK_FRAMES * FRAME
    blocks = (read_segment(path, info, start, min(start + block, total)) for start in range(0, total, block))
    spans = speech_spans(
        vad.probabilities(blocks),
        total,
        threshold=threshold,
        min_speech=max(round(MIN_SPEECH * SAMPLE_RATE), recognizer.min_samples),
    )
    plan = segment_plan(spans, longest, round(merge_gap * SAMPLE_RATE))

    def silence(start: int, stop: int) -> list[dict[str, Any]]:
        if stop <= start:
            return []
        seconds = (start / SAMPLE_RATE, stop / SAMPLE_RATE, (stop - start) / SAMPLE_RATE)
        row = dict(zip(("start", "end", "duration"), seconds))
        return [
            {"file": str(path), "segment": "silence", **row, "status": "ok", "silence": True}
            | {"label": None, "probabilities": {}}
        ]

    names = {"attribute_names": recognizer.attribute_names}
    weighted = torch.zeros(len(recognizer.class_names) + len(recognizer.attribute_names), dtype=torch.float64)
    covered = reported = 0  # samples of the file in rows so far, and given to on_window
    for first in range(0, len(plan), batch_size):
        chunk = plan[first : first + batch_size]
        wavs = [read_segment(path, info, start, stop) for start, stop in chunk]
        rows: list[dict[str, Any]] = []
        for (start, stop), wav, probs in zip(chunk, wavs, recognizer.predictions(wavs)):
            rows += silence(covered, start)
            rows.append(
                prediction_row(
                    recognizer.class_names,
                    probs,
                    **names,
                    file=str(path),
                    segment="speech",
                    start=start / SAMPLE_RATE,
                    end=stop / SAMPLE_RATE,
                    duration=(stop - start) / SAMPLE_RATE,
                    status="ok",
                    silence=is_silent(wav),
                )
            )
            weighted += (stop - start) * probs.double()
            covered = stop
        if on_window is not None:
            on_window((stop - reported) / SAMPLE_RATE)
            reported = stop
        yield [postprocess_row(row, classes, top_k) for row in rows]
    tail = silence(covered, total)
    if on_window is not None:
        on_window((total - reported) / SAMPLE_RATE)
    speech = sum(stop - start for start, stop in plan)
    fields = {"file": str(path), "segment": "summary", "start": 0.0, "end": total / SAMPLE_RATE}
    fields |= {"duration": total / SAMPLE_RATE, "status": "ok", "silence": not plan}
    if plan:
        summary = prediction_row(recognizer.class_names, (weighted / speech).float(), **names, **fields)
    else:
        summary = {**fields, "label": None, "probabilities": {}}
    yield [postprocess_row(row, classes, top_k) for row in tail + [summary]]


def stream_long(
    recognizer: AudioClassifier,
    path: str | os.PathLike,
    *,
    segments: str = "fixed",
    window: float = 8.0,
    hop: float = 4.0,
    **options: Any,
) -> Iterator[list[dict[str, Any]]]:
    """One long file's rows, a forward pass at a time: ``segments="fixed"``:
    :func:`~s3prl_ser.inference.long_audio.stream_windows` (``window``, ``hop``); ``"vad"``:
    :func:`stream_speech` with ``max_length=window`` (``hop`` unused). ``options``: theirs.

    Raises:
        ValueError: another ``segments``.
    """
    if segments == "fixed":
        return stream_windows(recognizer, path, window=window, hop=hop, **options)
    if segments == "vad":
        return stream_speech(recognizer, path, max_length=window, **options)
    raise ValueError(f"segments must be one of {', '.join(SEGMENTS)}, got {segments!r}")
