"""MSP-Podcast (Lotfian & Busso 2019) in its release layout.

``ROOT/Labels/labels_consensus.csv`` (columns ``FileName, EmoClass, EmoAct, EmoVal, EmoDom,
SpkrID, Gender, Split_Set``), ``ROOT/Audios/<FileName>``, and optionally
``ROOT/Transcripts/<stem>.txt``.

Protocol: the official sets: ``Split_Set`` ``Train`` trains, ``Development`` is dev, and one
test set (``Test1`` by default; ``Test2``, ``Test3`` where the release has them) is the
official test. Classes: the eight consensus categories (``A S H U F D C N``, the Odyssey 2024
challenge's). Four classes, as in many papers: ``datarc.labels: {drop: [sur, fea, dis, con]}``.

Attributes: ``EmoAct``, ``EmoVal`` and ``EmoDom`` (means over the annotators, 1-7) become each
row's ``attributes`` (arousal, valence, dominance; declared ``attribute_scale`` 1-7; an empty
cell is unknown). A release without these columns, or ``attributes=False``, gives a categorical
manifest. ``O`` (other)
and ``X`` (no agreement) utterances have no usable category: with attributes they are kept with
``label: null`` (attribute runs learn from them, categorical runs leave them out); without,
they are left out.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from s3prl_ser.data.corpora.common import PreparationError, attribute_columns, check_audio, finish, official_manifest
from s3prl_ser.data.manifest import Manifest

__all__ = ["EMOTIONS", "LEFT_OUT", "COLUMNS", "ATTRIBUTE_COLUMNS", "ATTRIBUTE_SCALE", "prepare"]

EMOTIONS = {"N": "neu", "H": "hap", "S": "sad", "A": "ang", "U": "sur", "F": "fea", "D": "dis", "C": "con"}
LEFT_OUT = frozenset({"O", "X"})
COLUMNS = ("FileName", "EmoClass", "SpkrID", "Split_Set")
ATTRIBUTE_COLUMNS = {"EmoAct": "arousal", "EmoVal": "valence", "EmoDom": "dominance"}
ATTRIBUTE_SCALE = {name: (1.0, 7.0) for name in ATTRIBUTE_COLUMNS.values()}
ATTRIBUTES = {name: column for column, name in ATTRIBUTE_COLUMNS.items()}  # attribute_columns' order
_SETS = {"Train": "train", "Development": "dev"}


def prepare(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    test_set: str = "Test1",
    skip_bad_audio: bool = False,
    attributes: bool = True,
) -> Manifest:
    """Write ``out/manifest.json`` from ``root/Labels/labels_consensus.csv``, with the attributes
    where the file has them and ``attributes`` is true (module docstring).

    Raises:
        PreparationError: no label file, a missing column, a short row, an unknown
            ``EmoClass`` or an attribute that is not a number in 1-7 (file and line named), a
            test set the file does not have, or unreadable or missing audio.
    """
    root = Path(root)
    labels_csv = root / "Labels" / "labels_consensus.csv"
    if not labels_csv.is_file():
        raise PreparationError(f"{labels_csv}: not found (is {root} an MSP-Podcast root?)")
    rows: list[dict[str, Any]] = []
    split_of: dict[str, str] = {}
    sets: set[str] = set()
    with open(labels_csv, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise PreparationError(f"{labels_csv}: lacks the column(s) {', '.join(missing)}")
        rated = [c for c in ATTRIBUTE_COLUMNS if attributes and c in (reader.fieldnames or [])]
        if rated and len(rated) < len(ATTRIBUTE_COLUMNS):
            absent = ", ".join(c for c in ATTRIBUTE_COLUMNS if c not in rated)
            raise PreparationError(f"{labels_csv}: has {', '.join(rated)} but not {absent}")
        for number, record in enumerate(reader, start=2):
            short = [c for c in COLUMNS if record[c] is None]  # csv leaves the fields a row lacks None
            if short:
                raise PreparationError(f"{labels_csv}:{number}: a short row, without {', '.join(short)}")
            code, name, split = record["EmoClass"].strip(), record["FileName"].strip(), record["Split_Set"].strip()
            sets.add(split)
            if code in LEFT_OUT and not rated:
                continue
            if code not in EMOTIONS and code not in LEFT_OUT:
                raise PreparationError(f"{labels_csv}:{number}: unknown EmoClass {code!r} for {name}")
            role = _SETS.get(split, "test" if split == test_set else None)
            if role is None:
                continue
            path = Path("Audios") / name
            if not (root / path).is_file():
                raise PreparationError(f"{labels_csv}:{number}: audio file {root / path} not found")
            speaker = record["SpkrID"].strip()
            row = {
                "id": Path(name).stem,
                "path": path.as_posix(),
                "label": EMOTIONS.get(code),  # None for O and X
                "speaker": None if speaker in ("", "Unknown") else speaker,
            }
            if rated:
                row["attributes"] = attribute_columns(
                    record, ATTRIBUTES, ATTRIBUTE_SCALE, f"{labels_csv}:{number} ({name})"
                )
                if row["label"] is None and not any(v is not None for v in row["attributes"].values()):
                    continue  # neither a category nor an attribute to learn
            transcript = root / "Transcripts" / f"{Path(name).stem}.txt"
            if transcript.is_file():
                row["transcript"] = transcript.read_text(encoding="utf-8", errors="replace").strip()
            rows.append(row)
            split_of[row["id"]] = role
    if test_set not in sets:
        raise PreparationError(f"{labels_csv}: no Split_Set {test_set!r} (the file has {', '.join(sorted(sets))})")
    rows = check_audio(root, rows, skip_bad=skip_bad_audio)
    manifest = official_manifest(
        "MSP-Podcast",
        list(EMOTIONS.values()),
        rows,
        lambda row: split_of[row["id"]],
        test_set,
        f"official split (Train / Development / {test_set})",
    )
    if rated:
        manifest.attribute_scale = dict(ATTRIBUTE_SCALE)
    return finish(manifest, out)
