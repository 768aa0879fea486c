"""Inference over many files: rows as they are done, batches sorted by length, errors as rows.

Every input file gives a row (:mod:`~s3prl_ser.inference.rows`): one ``file`` row, or
``window`` rows and a ``summary`` for a file longer than ``long_audio`` seconds (see
:mod:`~s3prl_ser.inference.long_audio`; ``segments="vad"``: ``speech`` and ``silence`` rows,
:mod:`~s3prl_ser.inference.speech_segments`). A file that cannot be read (undecodable, a symbolic
link loop, out of memory, ...), or is shorter than the model's minimum, gives one ``error`` row
and the run goes on.

:func:`stream_files` gives the rows as they are done, a forward pass at a time, for writers that
keep what is done when a run is killed (:class:`~s3prl_ser.inference.rows.RowWriter`): first
the files whose header cannot be read, then the short files a batch at a time in order of length
(similar lengths pad little), then each long file a batch of windows at a time and its summary
(a long file that fails midway ends with an ``error`` row after the windows it had).
:func:`predict_files` returns the same rows in input order. The progress bar counts seconds of
audio, so its ETA holds whatever the mix of lengths.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from s3prl_ser.data.audio import SAMPLE_RATE, AudioError, AudioInfo, audio_info, is_silent, load_audio
from s3prl_ser.inference.audio_input import collect_audio_files
from s3prl_ser.inference.long_audio import AudioClassifier
from s3prl_ser.inference.postprocess import check_classes, postprocess_row
from s3prl_ser.inference.rows import error_row, prediction_row
from s3prl_ser.inference.speech_segments import stream_long

__all__ = ["READ_ERRORS", "predict_files", "stream_files"]

# What reading one file may raise; MemoryError too, so that one file cannot end the run.
READ_ERRORS = (FileNotFoundError, AudioError, OSError, MemoryError)

# (input index, row): a row and the position of its file among the inputs
Indexed = tuple[int, dict[str, Any]]


def _message(path: Path, error: BaseException) -> str:
    """The error's message, naming the file (numpy's MemoryError does not)."""
    text = str(error) or type(error).__name__
    if isinstance(error, MemoryError):
        text = f"out of memory reading it ({text})"
    return text if str(path) in text else f"{path}: {text}"


def stream_files(
    recognizer: AudioClassifier,
    inputs: Iterable[str | os.PathLike],
    *,
    batch_size: int = 8,
    long_audio: float = 60.0,
    window: float = 8.0,
    hop: float = 4.0,
    segments: str = "fixed",
    progress: bool = False,
    embeddings: bool = False,
    classes: Sequence[str] | None = None,
    top_k: int | None = None,
    skip: Callable[[str], bool] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Rows for every audio file of ``inputs`` (files, folders, list files), a list at a time
    as they are done (the order is in the module docstring); each file's rows are consecutive.

    Args:
        recognizer: the model.
        inputs: see :func:`~s3prl_ser.inference.audio_input.collect_audio_files`.
        batch_size: files (or windows) per forward pass.
        long_audio: files longer than this many seconds are read in windows.
        window, hop: the windows' length and step, in seconds.
        segments: how long files are cut: ``"fixed"`` windows, or ``"vad"`` speech segments of at
            most ``window`` s and the silences between (see :func:`~s3prl_ser.inference.speech_segments.stream_long`).
        progress: show a tqdm bar (seconds of audio, with ETA) on stderr.
        embeddings: give each ``ok`` file row (not windows) its utterance embedding, ``embedding``:
            a list of ``E`` floats (see :meth:`~s3prl_ser.inference.recognizer.EmotionRecognizer.embeddings`).
        classes, top_k: every row (windows and summaries too) over this subset of the classes,
            renormalised, and with a ``top_k`` field; see :func:`~s3prl_ser.inference.postprocess.postprocess_row`.
        skip: files (their rows' ``file``) for which it is True are left out, unread (a resumed run's
            finished files, :meth:`~s3prl_ser.inference.rows.RowWriter.finished`).

    Raises:
        ValueError: ``batch_size`` or ``top_k`` below 1, or unknown ``classes`` (before anything is read).
    """
    _check(recognizer, batch_size, classes, top_k)
    chunks = _stream(
        recognizer,
        collect_audio_files(inputs),
        batch_size=batch_size,
        long_audio=long_audio,
        window=window,
        hop=hop,
        segments=segments,
        progress=progress,
        embeddings=embeddings,
        classes=classes,
        top_k=top_k,
        skip=skip,
    )
    return ([row for _, row in chunk] for chunk in chunks)


def predict_files(
    recognizer: AudioClassifier, inputs: Iterable[str | os.PathLike], **options: Any
) -> list[dict[str, Any]]:
    """The rows of :func:`stream_files` (same ``options``) in input order: each file's rows (its
    ``file`` row, or its windows then its summary) where the file is among ``inputs``."""
    _check(recognizer, options.get("batch_size", 8), options.get("classes"), options.get("top_k"))
    indexed = [pair for chunk in _stream(recognizer, collect_audio_files(inputs), **options) for pair in chunk]
    return [row for _, row in sorted(indexed, key=lambda pair: pair[0])]  # stable: a file's rows keep their order


def _check(recognizer: AudioClassifier, batch_size: int, classes: Sequence[str] | None, top_k: int | None) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if (classes is not None or top_k is not None) and not recognizer.class_names:
        raise ValueError("classes and top_k need classes: this model predicts attributes only")
    if classes is not None:
        check_classes(recognizer.class_names, classes)
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")


def _stream(
    recognizer: AudioClassifier,
    files: Sequence[Path],
    *,
    batch_size: int = 8,
    long_audio: float = 60.0,
    window: float = 8.0,
    hop: float = 4.0,
    segments: str = "fixed",
    progress: bool = False,
    embeddings: bool = False,
    classes: Sequence[str] | None = None,
    top_k: int | None = None,
    skip: Callable[[str], bool] | None = None,
) -> Iterator[list[Indexed]]:
    """:func:`stream_files`' rows, each with the index of its file in ``files``."""

    def done(pairs: list[Indexed]) -> list[Indexed]:
        return [(index, postprocess_row(row, classes, top_k)) for index, row in pairs]

    infos: dict[int, AudioInfo] = {}
    for index, path in enumerate(files):
        if skip is not None and skip(str(path)):
            continue
        try:
            info = audio_info(path)
        except READ_ERRORS as error:
            yield done([(index, error_row(path, _message(path, error)))])
            continue
        if info.samples < recognizer.min_samples:
            message = f"{path}: too short: {info.samples} samples at {SAMPLE_RATE} Hz, the model needs {recognizer.min_samples}"
            yield done([(index, error_row(path, message, info.seconds))])
            continue
        infos[index] = info
    short = sorted((i for i in infos if infos[i].seconds <= long_audio), key=lambda i: infos[i].frames)
    long = [i for i in infos if infos[i].seconds > long_audio]
    bar = tqdm(total=round(sum(infos[i].seconds for i in infos), 2), unit="s", disable=not progress, desc="audio")
    try:
        for first in range(0, len(short), batch_size):
            batch = short[first : first + batch_size]
            yield done(_predict_batch(recognizer, [(i, files[i], infos[i]) for i in batch], embeddings))
            bar.update(round(sum(infos[i].seconds for i in batch), 2))
        for index in long:
            path = files[index]
            try:
                for rows in stream_long(
                    recognizer,
                    path,
                    segments=segments,
                    window=window,
                    hop=hop,
                    batch_size=batch_size,
                    info=infos[index],
                    on_window=lambda seconds: bar.update(round(seconds, 2)),
                    classes=classes,
                    top_k=top_k,
                ):
                    yield [(index, {**row, "error": row.get("error", "")}) for row in rows]
            except READ_ERRORS as error:
                yield done([(index, error_row(path, _message(path, error), infos[index].seconds))])
    finally:
        bar.close()


def _predict_batch(
    recognizer: AudioClassifier, batch: Sequence[tuple[int, Path, AudioInfo]], embeddings: bool = False
) -> list[Indexed]:
    out: list[Indexed] = []
    readable = []
    for index, path, info in batch:
        try:
            readable.append((index, path, load_audio(path, min_samples=recognizer.min_samples)))
        except READ_ERRORS as error:
            out.append((index, error_row(path, _message(path, error), info.seconds)))
    if readable:
        wavs = [wav for _, _, wav in readable]
        # one forward pass gives both; embeddings cost nothing more
        predictions, vectors = recognizer.outputs(wavs) if embeddings else (recognizer.predictions(wavs), None)
        for position, ((index, path, wav), values) in enumerate(zip(readable, predictions)):
            seconds = wav.numel() / SAMPLE_RATE
            row = prediction_row(
                recognizer.class_names,
                values,
                recognizer.attribute_names,
                file=str(path),
                segment="file",
                start=0.0,
                end=seconds,
                duration=seconds,
                status="ok",
                silence=is_silent(wav),
                error="",
            )
            if vectors is not None:
                row["embedding"] = vectors[position].tolist()
            out.append((index, row))
    return out
