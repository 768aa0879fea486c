"""EmoBox's published folds, read as is: ``data/<corpus>/fold_N/<corpus>_{train,test}_fold_N.jsonl``.

EmoBox (emo-box/EmoBox) publishes train/test lists for 32 corpora, one JSON object per line::

    {"key": "ravdess-03-01-07-02-02-02-11", "dataset": "ravdess",
     "wav": "downloads/ravdess/audio/Audio_Speech_Actors_01-24/Actor_11/03-01-07-02-02-02-11.wav",
     "type": "raw", "sample_rate": 48000, "num_frame": 179379.0, "task": "category",
     "length": 3.737, "emo": "Disgust", "channel": 1}

``wav`` is relative to the directory EmoBox downloaded into (``datarc.root``); a corpus with a
validation list (``<corpus>_valid_fold_N.jsonl``, e.g. MSP-Podcast) gets it as the fold's dev
list. Segment times (``start_time``/``end_time``) and a speaker (``spk``) are kept when present.
EmoBox's published lists are categorical (``"task": "category"``): an EmoBox corpus declares no
continuous attributes, so an attribute run on it stops with an error naming it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from s3prl_ser.data.manifest import Manifest, ManifestFold

__all__ = ["is_emobox_dir", "read_emobox"]

_FOLD_DIR = re.compile(r"^fold_([1-9][0-9]*)$")


def _fold_dirs(data_dir: Path) -> dict[int, Path]:
    found = {}
    for child in data_dir.iterdir() if data_dir.is_dir() else ():
        match = _FOLD_DIR.match(child.name)
        if match and child.is_dir():
            found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def is_emobox_dir(data_dir: str | os.PathLike) -> bool:
    """Whether ``data_dir`` holds EmoBox fold lists (``fold_1/<name>_train_fold_1.jsonl``)."""
    data_dir = Path(data_dir)
    return (data_dir / "fold_1" / f"{data_dir.name}_train_fold_1.jsonl").is_file()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error})") from error
            missing = [key for key in ("key", "wav", "emo") if not isinstance(entry, dict) or key not in entry]
            if missing:
                raise ValueError(f"{path}:{number}: an EmoBox line needs key, wav and emo; lacks {', '.join(missing)}")
            rows.append(entry)
    if not rows:
        raise ValueError(f"{path}: lists no utterances")
    return rows


def _row(entry: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": str(entry["key"]),
        "path": entry["wav"],
        "label": entry["emo"],
        "speaker": entry.get("spk"),
    }
    if entry.get("length") is not None:
        row["duration"] = float(entry["length"])
    if entry.get("channel") is not None:
        row["channel"] = int(entry["channel"])
    if entry.get("start_time") is not None and entry.get("end_time") is not None:
        row["start"], row["end"] = float(entry["start_time"]), float(entry["end_time"])
    return row


def read_emobox(data_dir: str | os.PathLike) -> Manifest:
    """All folds of one EmoBox corpus directory as a :class:`~s3prl_ser.data.manifest.Manifest`
    (fold_N becomes ``foldN``; classes in sorted order; the corpus is the directory's name).

    Raises:
        FileNotFoundError: no ``fold_1/<name>_train_fold_1.jsonl`` there, or a fold lacks its test list.
        ValueError: a malformed line (file and line named), or one key with two different rows.

    Example:
        >>> import tempfile, json
        >>> d = Path(tempfile.mkdtemp()) / "toy"; (d / "fold_1").mkdir(parents=True)
        >>> line = lambda k, e: json.dumps({"key": k, "wav": f"w/{k}.wav", "emo": e, "length": 1.0, "channel": 1})
        >>> _ = (d / "fold_1" / "toy_train_fold_1.jsonl").write_text(line("a", "Sad") + "\\n" + line("b", "Angry") + "\\n")
        >>> _ = (d / "fold_1" / "toy_test_fold_1.jsonl").write_text(line("c", "Sad") + "\\n")
        >>> m = read_emobox(d)
        >>> m.corpus, m.labels, m.folds["fold1"].train, m.rows(["c"])[0]["path"]
        ('toy', ['Angry', 'Sad'], ('a', 'b'), 'w/c.wav')
    """
    data_dir = Path(data_dir)
    name = data_dir.name
    if not is_emobox_dir(data_dir):
        raise FileNotFoundError(f"{data_dir}: not an EmoBox corpus directory (no fold_1/{name}_train_fold_1.jsonl)")
    rows: dict[str, dict[str, Any]] = {}
    folds: dict[str, ManifestFold] = {}
    for number, fold_dir in _fold_dirs(data_dir).items():
        lists: dict[str, tuple[str, ...]] = {}
        for split, stem in (("train", "train"), ("dev", "valid"), ("test", "test")):
            path = fold_dir / f"{name}_{stem}_fold_{number}.jsonl"
            if not path.is_file():
                if split == "dev":
                    continue
                raise FileNotFoundError(f"{path}: missing ({fold_dir} must hold its train and test lists)")
            ids = []
            for entry in _read_jsonl(path):
                row = _row(entry)
                if rows.setdefault(row["id"], row) != row:
                    raise ValueError(f"{path}: key {row['id']} differs from its row in another list of {data_dir}")
                ids.append(row["id"])
            lists[split] = tuple(ids)
        folds[f"fold{number}"] = ManifestFold(lists["train"], lists["test"], lists.get("dev"))
    labels = sorted({row["label"] for row in rows.values()})
    protocol = f"EmoBox folds ({len(folds)})"
    return Manifest(name, labels, list(rows.values()), folds, protocol=protocol, source=str(data_dir))
