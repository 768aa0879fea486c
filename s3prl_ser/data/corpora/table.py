"""Any corpus listed in a plain CSV or JSONL file, through a column mapping.

One row per utterance; ``columns`` maps manifest fields to the file's column names, e.g.
``{"path": "file", "label": "emotion", "speaker": "actor"}`` (``path``, ``label`` and
``speaker`` required; ``id``, ``gender``, ``duration``, ``transcript``, ``channel``, ``start``,
``end`` optional; an unmapped field is read from a column of its own name when there is one).
Paths are relative to the corpus root; one outside it is refused unless allowed. Folds come
from one of:

* ``split_column``: ``train`` / ``dev`` / ``test`` per row (also ``valid``, ``validation``,
  ``development``, ``evaluation`` for dev): one official fold;
* ``fold_column``: the fold (``1``, ``2``, ...) whose test set the row is in: fold k trains on
  every other row;
* neither: ``num_folds`` speaker-independent folds, gender-balanced where rows have a gender
  (:func:`~s3prl_ser.data.folds.speaker_folds`).

Continuous attributes: ``attributes`` maps attribute names to columns
(``{"arousal": "act", "valence": "val"}``) and ``attribute_scale`` gives each one's scale
(``{"arousal": (1, 7), ...}``); an empty cell is unknown, a value outside the scale is an error
naming the row. A row with attributes may leave its label empty (no usable category).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from s3prl_ser.data.corpora.common import (
    PreparationError,
    attribute_columns,
    check_audio,
    finish,
    official_manifest,
    speaker_cv_manifest,
)
from s3prl_ser.data.emotion_dataset import outside_root
from s3prl_ser.data.manifest import OPTIONAL_FIELDS, Manifest, ManifestFold

__all__ = ["SPLIT_NAMES", "parse_columns", "parse_scale_option", "read_table", "prepare"]

SPLIT_NAMES = {
    "train": "train",
    "dev": "dev",
    "valid": "dev",
    "validation": "dev",
    "development": "dev",
    "evaluation": "dev",
    "test": "test",
}
_NUMBERS = {"duration": float, "start": float, "end": float, "channel": int}


def parse_columns(spec: str) -> dict[str, str]:
    """``--columns`` text ``"path=file,label=emotion"`` -> ``{"path": "file", "label": "emotion"}``.

    Example:
        >>> parse_columns("path=file, label=emotion")
        {'path': 'file', 'label': 'emotion'}

    Raises:
        PreparationError: a part is not ``FIELD=COLUMN``.
    """
    columns = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        field, sep, column = part.partition("=")
        if not sep or not field or not column:
            raise PreparationError(f"--columns: cannot read {part!r} (use FIELD=COLUMN, e.g. label=emotion)")
        columns[field.strip()] = column.strip()
    return columns


def parse_scale_option(spec: str, names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """``--attribute-scale`` text: ``LO:HI`` for every attribute in ``names``, or
    ``NAME=LO:HI,...`` per attribute.

    Example:
        >>> parse_scale_option("1:7", ["arousal", "valence"])
        {'arousal': (1.0, 7.0), 'valence': (1.0, 7.0)}
        >>> parse_scale_option("arousal=1:5,valence=0:1", ["arousal", "valence"])
        {'arousal': (1.0, 5.0), 'valence': (0.0, 1.0)}

    Raises:
        PreparationError: unreadable text, or an attribute of ``names`` left without a scale.
    """

    def bounds(text: str) -> tuple[float, float]:
        lo, sep, hi = text.partition(":")
        try:
            low, high = float(lo), float(hi)
        except ValueError:
            low = high = float("nan")
        if not sep or not low < high:
            raise PreparationError(f"--attribute-scale: cannot read {text!r} (use LO:HI with LO < HI, e.g. 1:7)")
        return low, high

    spec = spec.strip()
    if spec and "=" not in spec:
        return {name: bounds(spec) for name in names}
    scale = {name: bounds(text) for name, text in parse_columns(spec).items()}
    missing = [name for name in names if name not in scale]
    if missing:
        raise PreparationError(f"--attribute-scale: no scale for {', '.join(missing)} (give LO:HI or NAME=LO:HI,...)")
    return scale


def read_table(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``.csv`` (header row) or ``.jsonl`` (one object per line) file.

    Raises:
        PreparationError: another extension, or a line that is not a JSON object (line named).
    """
    path = Path(path)
    if not path.is_file():
        raise PreparationError(f"{path}: not found")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise PreparationError(f"{path}:{number}: not a JSON line ({error})") from error
                if not isinstance(record, dict):
                    raise PreparationError(f"{path}:{number}: not a JSON object")
                records.append(record)
        return records
    raise PreparationError(f"{path}: expected a .csv or .jsonl file")


def _row(
    record: Mapping[str, Any],
    columns: Mapping[str, str],
    where: str,
    allow_outside_root: bool,
    attributes: Mapping[str, str],
    scale: Mapping[str, tuple[float, float]],
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    values = attribute_columns(record, attributes, scale, where) if attributes else {}
    for field in ("path", "label", "speaker", "id", *OPTIONAL_FIELDS):
        column = columns.get(field, field)
        value = record.get(column)
        if value is None or value == "":
            if field == "label" and any(v is not None for v in values.values()):
                row["label"] = None  # attributes without a category
            elif field in ("path", "label"):
                raise PreparationError(f"{where}: no {field} (column {column!r})")
            continue
        if field in _NUMBERS:
            try:
                value = _NUMBERS[field](value)
            except ValueError as error:
                raise PreparationError(f"{where}: {field} (column {column!r}) is not a number: {value!r}") from error
        row[field] = value if field in _NUMBERS else str(value)
    if not allow_outside_root and outside_root(row["path"]):
        raise PreparationError(
            f"{where}: path {row['path']!r} is outside the corpus root (absolute, or .. leads out of it); if that "
            "is intended, pass --allow-outside-root here and set the datarc key allow_outside_root: true for training"
        )
    if "speaker" not in row:
        if "speaker" in columns:
            raise PreparationError(f"{where}: no speaker (column {columns['speaker']!r})")
        row["speaker"] = None
    if "id" not in row:
        row["id"] = Path(row["path"]).stem + (f"@{row['start']:g}" if "start" in row else "")
    if attributes:
        row["attributes"] = values
    return row


def prepare(
    table: str | os.PathLike,
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    columns: Mapping[str, str] | None = None,
    corpus: str | None = None,
    split_column: str | None = None,
    fold_column: str | None = None,
    num_folds: int = 5,
    skip_bad_audio: bool = False,
    allow_outside_root: bool = False,
    attributes: Mapping[str, str] | None = None,
    attribute_scale: Mapping[str, tuple[float, float]] | None = None,
) -> Manifest:
    """Write ``out/manifest.json`` for the utterances listed in ``table`` (paths relative to
    ``root``; ``allow_outside_root`` accepts absolute ones and ones that ``..`` leads out of it,
    which training then accepts only with ``datarc.allow_outside_root``); ``attributes`` and
    ``attribute_scale`` as in the module docstring.

    Raises:
        PreparationError: naming the file and row: a missing required value, a path outside
            the root, a duplicate id, an unknown split name, an attribute that is not a number
            in its scale, or unreadable audio; an attribute without a scale.
    """
    table, root, columns = Path(table), Path(root), dict(columns or {})
    attributes, scale = dict(attributes or {}), dict(attribute_scale or {})
    if split_column and fold_column:
        raise PreparationError("give a split column or a fold column, not both")
    unscaled = [name for name in attributes if name not in scale]
    if unscaled:
        raise PreparationError(f"{table}: no scale for the attribute(s) {', '.join(unscaled)} (--attribute-scale)")
    records = read_table(table)
    if not records:
        raise PreparationError(f"{table}: lists no utterances")
    rows, roles, seen = [], {}, set()
    for number, record in enumerate(records, start=2 if table.suffix.lower() == ".csv" else 1):
        where = f"{table}:{number}"
        row = _row(record, columns, where, allow_outside_root, attributes, scale)
        if row["id"] in seen:
            raise PreparationError(f"{where}: duplicate utterance id {row['id']!r} (map an id column)")
        seen.add(row["id"])
        for column in filter(None, (split_column, fold_column)):
            value = str(record.get(column, "")).strip()
            if split_column:
                if value.lower() not in SPLIT_NAMES:
                    raise PreparationError(f"{where}: split {value!r} (column {column!r}) is not train, dev or test")
                roles[row["id"]] = SPLIT_NAMES[value.lower()]
            elif not value.isdigit() or int(value) < 1:
                raise PreparationError(f"{where}: fold {value!r} (column {column!r}) is not a fold number 1, 2, ...")
            else:
                roles[row["id"]] = int(value)
        rows.append(row)
    rows = check_audio(root, rows, skip_bad=skip_bad_audio)
    labels = sorted({row["label"] for row in rows if row["label"] is not None})
    name = corpus or table.stem
    if split_column:
        manifest = official_manifest(name, labels, rows, lambda row: roles[row["id"]], "test")
    elif fold_column:
        numbers = sorted({roles[row["id"]] for row in rows})
        folds = {
            f"fold{k}": ManifestFold(
                tuple(r["id"] for r in rows if roles[r["id"]] != k), tuple(r["id"] for r in rows if roles[r["id"]] == k)
            )
            for k in numbers
        }
        manifest = Manifest(name, labels, rows, folds, protocol=f"{len(folds)} folds from column {fold_column!r}")
    else:
        manifest = speaker_cv_manifest(name, labels, rows, num_folds)
    manifest.attribute_scale = {name: scale[name] for name in attributes}
    return finish(manifest, out)
