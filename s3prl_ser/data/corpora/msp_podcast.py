"""MSP-Podcast (Lotfian & Busso 2019) in its release layout.

``ROOT/Labels/labels_consensus.csv`` (columns ``FileName, EmoClass, EmoAct, EmoVal, EmoDom,
SpkrID, Gender, Split_Set``), ``ROOT/Audios/<FileName>``, and optionally
``ROOT/Transcripts/<stem>.txt``.

Protocol: the official sets: ``Split_Set`` ``Train`` trains, ``Development`` is dev, and one
test set (``Test1`` by default; ``Test2``, ``Test3`` where the release has them) is the
official test. Classes: the eight consensus categories (``A S H U F D C N``, the Odyssey 2024
challenge's); ``O`` (other) and ``X`` (no agreement) are left out. Four classes, as in many
papers: ``datarc.labels: {drop: [sur, fea, dis, con]}``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from s3prl_ser.data.corpora.common import PreparationError, check_audio, finish, official_manifest
from s3prl_ser.data.manifest import Manifest

__all__ = ["EMOTIONS", "LEFT_OUT", "COLUMNS", "prepare"]

EMOTIONS = {"N": "neu", "H": "hap", "S": "sad", "A": "ang", "U": "sur", "F": "fea", "D": "dis", "C": "con"}
LEFT_OUT = frozenset({"O", "X"})
COLUMNS = ("FileName", "EmoClass", "SpkrID", "Split_Set")
_SETS = {"Train": "train", "Development": "dev"}


def prepare(
    root: str | os.PathLike, out: str | os.PathLike, *, test_set: str = "Test1", skip_bad_audio: bool = False
) -> Manifest:
    """Write ``out/manifest.json`` from ``root/Labels/labels_consensus.csv``.

    Raises:
        PreparationError: no label file, a missing column, a short row or an unknown
            ``EmoClass`` (file and line named), a test set the file does not have, or unreadable or missing audio.
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
        for number, record in enumerate(reader, start=2):
            short = [c for c in COLUMNS if record[c] is None]  # csv leaves the fields a row lacks None
            if short:
                raise PreparationError(f"{labels_csv}:{number}: a short row, without {', '.join(short)}")
            code, name, split = record["EmoClass"].strip(), record["FileName"].strip(), record["Split_Set"].strip()
            sets.add(split)
            if code in LEFT_OUT:
                continue
            if code not in EMOTIONS:
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
                "label": EMOTIONS[code],
                "speaker": None if speaker in ("", "Unknown") else speaker,
            }
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
    return finish(manifest, out)
