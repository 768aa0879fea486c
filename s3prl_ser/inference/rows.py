"""Result rows of file and window prediction, and writing them as CSV or JSON lines.

A row holds ``file``, ``segment`` (``file``, ``window`` or ``summary``), ``start``, ``end``,
``duration`` (seconds), ``status`` (``ok`` or ``error``), ``silence`` (the audio's RMS level is
below :data:`~s3prl_ser.data.audio.SILENCE_DBFS`: do not read an emotion into its label),
``error`` (the message), ``label`` and ``probabilities`` (``{class: p}``, empty for an error).
Every prediction the project prints or writes goes through :func:`prediction_row`: the files
and long-audio rows here, and s3prl's ``run_downstream.py -m inference`` line.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from s3prl_ser.fileio import atomic_write

__all__ = ["prediction_row", "error_row", "csv_columns", "csv_cell", "write_rows"]


def prediction_row(class_names: Sequence[str], probabilities: torch.Tensor, **fields: Any) -> dict[str, Any]:
    """A result row: ``fields`` + ``label`` + ``probabilities`` (``(C,)`` -> ``{class: p}``).

    Example:
        >>> prediction_row(["neu", "ang"], torch.tensor([0.25, 0.75]), file="a.wav")
        {'file': 'a.wav', 'label': 'ang', 'probabilities': {'neu': 0.25, 'ang': 0.75}}
    """
    return {
        **fields,
        "label": class_names[int(probabilities.argmax())],
        "probabilities": {c: float(p) for c, p in zip(class_names, probabilities)},
    }


def error_row(path: Path, message: str, duration: float | None = None) -> dict[str, Any]:
    """The one row of a file that could not be predicted (``message`` says why)."""
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


def csv_columns(class_names: Sequence[str], top_k: int = 0) -> list[str]:
    """CSV header: the row fields, then one probability column per class (``p_<class>``), then
    ``top<i>_label`` and ``top<i>_score`` for i = 1..``top_k``; every cell written passes :func:`csv_cell`."""
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
        *[f"top{i}_{field}" for i in range(1, top_k + 1) for field in ("label", "score")],
        "error",
    ]


def _flat(row: dict[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    flat = {k: v for k, v in row.items() if k not in ("probabilities", "top_k")}
    for i, entry in enumerate(row.get("top_k", []), start=1):
        flat[f"top{i}_label"], flat[f"top{i}_score"] = entry["label"], f"{entry['score']:.6f}"
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


def write_rows(
    rows: Iterable[dict[str, Any]], output: str | os.PathLike, class_names: Sequence[str], top_k: int = 0
) -> int:
    """Write rows to ``output`` (``.csv`` or ``.jsonl``) atomically; return how many had errors.
    ``top_k``: the CSV's ``top<i>_label``/``top<i>_score`` columns (rows' ``top_k`` fields).

    Raises:
        ValueError: another extension.
    """
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ValueError(f"{output}: the output must end in .csv or .jsonl")
    output.parent.mkdir(parents=True, exist_ok=True)
    failed = 0

    def write(binary: IO[bytes]) -> None:
        nonlocal failed
        handle = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        writer = None
        if suffix == ".csv":
            writer = csv.DictWriter(handle, fieldnames=csv_columns(class_names, top_k))
            writer.writeheader()
        for row in rows:
            failed += row["status"] != "ok"
            if writer is not None:
                writer.writerow({key: csv_cell(value) for key, value in _flat(row, class_names).items()})
            else:
                handle.write(json.dumps(row) + "\n")
        handle.flush()
        handle.detach()  # leaves ``binary`` open: atomic_write syncs and closes it

    atomic_write(output, write)
    return failed
