"""Inference over many files: rows in input order, batches sorted by length, errors as rows.

Every input file gives rows with ``file``, ``segment`` (``file``; or ``window`` rows and a
``summary`` for a file longer than ``long_audio`` seconds, see :mod:`~s3prl_ser.deploy.long_audio`),
``start``, ``end``, ``duration`` (seconds), ``status`` (``ok`` or ``error``), ``silence``
(the audio's RMS level is below :data:`~s3prl_ser.data.audio.SILENCE_DBFS`: do not read an
emotion into its label), ``error`` (the message), ``label`` and every class's probability. A
file that cannot be read (undecodable, a symbolic link loop, out of memory, ...), or is shorter
than the model's minimum, gives one ``error`` row and the run goes on.

Short files are read a batch at a time, in order of length (similar lengths pad little), and
the rows are returned in input order. The progress bar counts seconds of audio, so its ETA
holds whatever the mix of lengths.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from s3prl_ser.data.audio import SAMPLE_RATE, AudioError, is_silent
from s3prl_ser.deploy.audio_inputs import AudioInfo, audio_info, collect_audio_files, read_audio
from s3prl_ser.deploy.long_audio import predict_windows, prediction_row

if TYPE_CHECKING:
    from s3prl_ser.inference import EmotionRecognizer

__all__ = ["READ_ERRORS", "predict_files", "write_rows", "csv_columns", "csv_cell"]

# What reading one file may raise; MemoryError too, so that one file cannot end the run.
READ_ERRORS = (FileNotFoundError, AudioError, OSError, MemoryError)


def _message(path: Path, error: BaseException) -> str:
    """The error's message, naming the file (numpy's MemoryError does not)."""
    text = str(error) or type(error).__name__
    if isinstance(error, MemoryError):
        text = f"out of memory reading it ({text})"
    return text if str(path) in text else f"{path}: {text}"


def _error_row(path: Path, message: str, duration: float | None = None) -> dict[str, Any]:
    return {
        "file": str(path),
        "segment": "file",
        "start": None,
        "end": None,
        "duration": duration,
        "status": "error",
        "silence": None,
        "error": message,
        "label": None,
        "probabilities": {},
    }


def predict_files(
    recognizer: EmotionRecognizer,
    inputs: Iterable[str | os.PathLike],
    *,
    batch_size: int = 8,
    long_audio: float = 60.0,
    window: float = 8.0,
    hop: float = 4.0,
    progress: bool = False,
) -> Iterator[dict[str, Any]]:
    """Rows for every audio file of ``inputs`` (files, folders, list files), in input order.

    Args:
        recognizer: the model.
        inputs: see :func:`~s3prl_ser.deploy.audio_inputs.collect_audio_files`.
        batch_size: files (or windows) per forward pass.
        long_audio: files longer than this many seconds are read in windows.
        window, hop: the windows' length and step, in seconds.
        progress: show a tqdm bar (seconds of audio, with ETA) on stderr.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    files = collect_audio_files(inputs)
    results: dict[int, list[dict[str, Any]]] = {}
    infos: dict[int, AudioInfo] = {}
    for index, path in enumerate(files):
        try:
            info = audio_info(path)
        except READ_ERRORS as error:
            results[index] = [_error_row(path, _message(path, error))]
            continue
        samples = info.samples
        if samples < recognizer.min_samples:
            results[index] = [
                _error_row(
                    path,
                    f"{path}: too short: {samples} samples at {SAMPLE_RATE} Hz, the model needs {recognizer.min_samples}",
                    info.seconds,
                )
            ]
            continue
        infos[index] = info
    short = sorted((i for i in infos if infos[i].seconds <= long_audio), key=lambda i: infos[i].frames)
    long = [i for i in infos if infos[i].seconds > long_audio]
    bar = tqdm(total=round(sum(infos[i].seconds for i in infos), 2), unit="s", disable=not progress, desc="audio")
    try:
        for first in range(0, len(short), batch_size):
            batch = short[first : first + batch_size]
            for index, rows in _predict_batch(recognizer, [(i, files[i], infos[i]) for i in batch]):
                results[index] = rows
            bar.update(round(sum(infos[i].seconds for i in batch), 2))
        for index in long:
            try:
                results[index] = predict_windows(
                    recognizer,
                    files[index],
                    window=window,
                    hop=hop,
                    batch_size=batch_size,
                    info=infos[index],
                    on_window=lambda seconds: bar.update(round(seconds, 2)),
                )
                for row in results[index]:
                    row.setdefault("error", "")
            except READ_ERRORS as error:
                results[index] = [_error_row(files[index], _message(files[index], error), infos[index].seconds)]
    finally:
        bar.close()
    for index in range(len(files)):
        yield from results[index]


def _predict_batch(
    recognizer: EmotionRecognizer, batch: Sequence[tuple[int, Path, AudioInfo]]
) -> list[tuple[int, list[dict[str, Any]]]]:
    out: list[tuple[int, list[dict[str, Any]]]] = []
    readable = []
    for index, path, info in batch:
        try:
            readable.append((index, path, read_audio(path, min_samples=recognizer.min_samples)))
        except READ_ERRORS as error:
            out.append((index, [_error_row(path, _message(path, error), info.seconds)]))
    if readable:
        probabilities = recognizer.probabilities([wav for _, _, wav in readable])
        for (index, path, wav), probs in zip(readable, probabilities):
            seconds = wav.numel() / SAMPLE_RATE
            row = prediction_row(
                recognizer.class_names,
                probs,
                file=str(path),
                segment="file",
                start=0.0,
                end=seconds,
                duration=seconds,
                status="ok",
                silence=is_silent(wav),
                error="",
            )
            out.append((index, [row]))
    return out


def csv_columns(class_names: Sequence[str]) -> list[str]:
    """CSV header: the row fields, then one probability column per class (``p_<class>``); every
    cell written passes :func:`csv_cell`."""
    return [
        "file",
        "segment",
        "start",
        "end",
        "duration",
        "status",
        "silence",
        "label",
        *[f"p_{c}" for c in class_names],
        "error",
    ]


def _flat(row: dict[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    flat = {k: v for k, v in row.items() if k != "probabilities"}
    for c in class_names:
        value = row["probabilities"].get(c)
        flat[f"p_{c}"] = "" if value is None else f"{value:.6f}"
    for key in ("start", "end", "duration"):
        flat[key] = "" if flat.get(key) is None else f"{flat[key]:.3f}"
    flat["label"] = flat.get("label") or ""
    flat["silence"] = {True: "true", False: "false"}.get(flat.get("silence"), "")
    return flat


def csv_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet reads as a formula: text starting with ``=``, ``+``, ``-``,
    ``@``, a tab or a carriage return (a file or label name) gets a leading ``'``.

    Example:
        >>> [csv_cell(v) for v in ("=HYPERLINK(1)", "-x.wav", "ang", 0.5)]
        ["'=HYPERLINK(1)", "'-x.wav", 'ang', 0.5]
    """
    return f"'{value}" if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")) else value


def write_rows(rows: Iterable[dict[str, Any]], output: str | os.PathLike, class_names: Sequence[str]) -> int:
    """Write rows to ``output`` (``.csv`` or ``.jsonl``) atomically; return how many had errors.

    Raises:
        ValueError: another extension.
    """
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ValueError(f"{output}: the output must end in .csv or .jsonl")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    failed = 0
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = None
            if suffix == ".csv":
                writer = csv.DictWriter(handle, fieldnames=csv_columns(class_names))
                writer.writeheader()
            for row in rows:
                failed += row["status"] != "ok"
                if writer is not None:
                    writer.writerow({key: csv_cell(value) for key, value in _flat(row, class_names).items()})
                else:
                    handle.write(json.dumps(row) + "\n")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return failed
