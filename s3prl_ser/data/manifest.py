"""The corpus-neutral manifest: one row per utterance, explicit folds, label rules.

A prepared corpus is a directory ``META_DIR`` holding ``manifest.json``::

    {
      "format": "s3prl_ser.manifest/1",
      "corpus": "RAVDESS",                       # the corpus's name, shown in every report
      "protocol": "6 speaker-independent folds",  # how the folds were made (free text)
      "official_test": null,                      # or the name of an official test set ("Test1")
      "labels": ["neu", "hap", "sad", "ang"],     # class order: class id i is labels[i]
      "attribute_scale": {"arousal": [1, 7]},     # optional: each continuous attribute's scale
      "utterances": [                             # one row per utterance
        {"id": "03-01-01-01-01-01-01", "path": "Actor_01/03-01-01-01-01-01-01.wav",
         "label": "neu", "speaker": "01", "gender": "male",
         "duration": 3.2, "transcript": "...", "channel": 1, "start": 0.0, "end": 3.2,
         "attributes": {"arousal": 4.2}}
      ],
      "folds": {"fold1": {"train": ["id", ...], "test": ["id", ...], "dev": ["id", ...]}}
    }

``id``, ``path`` (relative to the corpus root), ``label`` and ``speaker`` are required
(``speaker`` may be ``null`` when the corpus does not say; the ``speaker`` dev rule then
refuses it); ``gender`` (the speaker's, where the corpus records it: speaker-independent folds
are then dealt gender-balanced, :func:`~s3prl_ser.data.folds.speaker_folds`), ``duration``
(seconds), ``transcript``, ``channel`` (1-based channel of a multi-channel file; absent:
channels are averaged) and ``start``/``end`` (seconds: a segment of a long recording, cut at
load time) are optional. ``attributes`` (optional) holds continuous labels
(:mod:`s3prl_ser.data.attributes`): each must be declared in ``attribute_scale`` and lie in it;
a missing name or ``null`` is unknown. ``label`` may be ``null`` in a row with attributes (no
usable category, e.g. MSP-Podcast's X/O): categorical runs leave such rows out. Folds are named ``fold1`` .. ``foldN``; one
fold is an official split. A fold without ``dev`` gets one by the ``datarc.split`` rule
(:mod:`s3prl_ser.data.folds`); a fold with ``dev`` never uses a rule.

Label merges and drops are :class:`LabelRules` (``datarc.labels`` in the configs), applied
when a fold is loaded, so one prepared corpus serves several label sets.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3prl_ser.config import ConfigError
from s3prl_ser.data.attributes import Scale, attribute_summary, check_attributes, parse_scale
from s3prl_ser.fileio import atomic_write_json

__all__ = [
    "MANIFEST_NAME",
    "FORMAT",
    "OPTIONAL_FIELDS",
    "LabelRules",
    "ManifestFold",
    "Manifest",
    "read_manifest",
]

MANIFEST_NAME = "manifest.json"
FORMAT = "s3prl_ser.manifest/1"
REQUIRED_FIELDS = ("id", "path", "label", "speaker")
OPTIONAL_FIELDS = ("gender", "duration", "transcript", "channel", "start", "end")
_FOLD = re.compile(r"^fold[1-9][0-9]*$")


@dataclass(frozen=True)
class LabelRules:
    """Label merges and drops, e.g. IEMOCAP's ``exc`` counted as ``hap``.

    ``merge`` maps a label to the one it becomes; ``drop`` lists labels whose utterances are
    left out (before or after merging).

    Example:
        >>> rules = LabelRules(merge={"exc": "hap"}, drop=("fru",))
        >>> rules.apply("exc"), rules.apply("fru"), rules.apply("neu")
        ('hap', None, 'neu')
        >>> rules.classes(["neu", "hap", "exc", "fru"])
        ['neu', 'hap']
        >>> LabelRules.from_config({"merge": {"exc": "hap"}}, "datarc.labels") == LabelRules({"exc": "hap"})
        True
    """

    merge: Mapping[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, value: Any, where: str) -> LabelRules:
        """Rules from a config value: ``null`` (none) or ``{merge: {a: b}, drop: [c]}``.

        Raises:
            ConfigError: another shape, naming ``where``.
        """
        if value is None:
            return cls()
        if not isinstance(value, Mapping) or set(value) - {"merge", "drop"}:
            raise ConfigError(f"{where} must be null or {{merge: {{FROM: TO}}, drop: [LABEL, ...]}}, got {value!r}")
        merge, drop = value.get("merge") or {}, value.get("drop") or []
        if not isinstance(merge, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in merge.items()
        ):
            raise ConfigError(f"{where}.merge must map label names to label names, got {merge!r}")
        if not isinstance(drop, (list, tuple)) or not all(isinstance(label, str) for label in drop):
            raise ConfigError(f"{where}.drop must be a list of label names, got {drop!r}")
        return cls(dict(merge), tuple(drop))

    def __bool__(self) -> bool:
        return bool(self.merge or self.drop)

    def apply(self, label: str) -> str | None:
        """The label an utterance labelled ``label`` gets, or None when it is dropped."""
        mapped = self.merge.get(label, label)
        return None if label in self.drop or mapped in self.drop else mapped

    def classes(self, labels: Sequence[str]) -> list[str]:
        """The class list after the rules: ``labels`` in order, merged-away and dropped ones out."""
        kept: list[str] = []
        for label in labels:
            mapped = self.apply(label)
            if mapped is not None and mapped not in kept:
                kept.append(mapped)
        return kept

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (what the fold protocol records)."""
        return {"merge": dict(sorted(self.merge.items())), "drop": sorted(self.drop)}


@dataclass(frozen=True)
class ManifestFold:
    """One fold: utterance ids to train and test on, and optionally the corpus's own dev list."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    dev: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, list[str]]:
        lists = {"train": list(self.train), "test": list(self.test)}
        if self.dev is not None:
            lists["dev"] = list(self.dev)
        return lists


@dataclass
class Manifest:
    """A corpus: its utterance rows, class order and folds (the format in the module docstring).

    Example:
        >>> rows = [{"id": f"u{i}", "path": f"u{i}.wav", "label": "ab"[i % 2], "speaker": f"s{i % 3}"} for i in range(6)]
        >>> m = Manifest("toy", ["a", "b"], rows, {"fold1": ManifestFold(("u0", "u1", "u2", "u3"), ("u4", "u5"))})
        >>> Manifest.from_dict(m.to_dict()).folds == m.folds
        True
        >>> [row["id"] for row in m.rows(m.folds["fold1"].test)]
        ['u4', 'u5']
    """

    corpus: str
    labels: list[str]
    utterances: list[dict[str, Any]]
    folds: dict[str, ManifestFold]
    protocol: str = ""
    official_test: str | None = None
    source: str = "<manifest>"
    attribute_scale: dict[str, Scale] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_id = {row["id"]: row for row in self.utterances}

    def rows(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """The rows of ``ids``, in that order."""
        return [self._by_id[i] for i in ids]

    def to_dict(self) -> dict[str, Any]:
        """The ``manifest.json`` content (``attribute_scale`` only when the corpus has attributes)."""
        scale = (
            {"attribute_scale": {k: list(v) for k, v in self.attribute_scale.items()}} if self.attribute_scale else {}
        )
        return {
            "format": FORMAT,
            "corpus": self.corpus,
            "protocol": self.protocol,
            "official_test": self.official_test,
            "labels": list(self.labels),
            **scale,
            "utterances": self.utterances,
            "folds": {name: fold.to_dict() for name, fold in self.folds.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "<manifest>") -> Manifest:
        """Validate and build; every error names ``source`` and the offending row or fold.

        Raises:
            ValueError: a missing or malformed field, a duplicate id, a label outside
                ``labels``, a bad segment or channel, an attribute undeclared or outside its
                scale, a fold naming an unknown utterance, or a fold whose lists overlap.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{source}: not a manifest (expected a JSON object)")
        missing = [key for key in ("corpus", "labels", "utterances", "folds") if key not in data]
        if missing:
            raise ValueError(f"{source}: not a manifest, lacks {', '.join(missing)}")
        labels, rows, folds = data["labels"], data["utterances"], data["folds"]
        if not isinstance(labels, list) or not labels or len(set(labels)) != len(labels):
            raise ValueError(f"{source}: labels must be a non-empty list of distinct names, got {labels!r}")
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"{source}: utterances must be a non-empty list")
        seen: set[str] = set()
        scale = parse_scale(data.get("attribute_scale"), source)
        for index, row in enumerate(rows):
            _check_row(row, index, labels, seen, source)
            check_attributes(row, scale, f"{source}: utterances[{index}] ({row['path']})")
        if not isinstance(folds, dict) or not folds:
            raise ValueError(f"{source}: folds must be an object {{fold1: {{train: [...], test: [...]}}}}")
        parsed = {name: _parse_fold(name, lists, seen, source) for name, lists in folds.items()}
        return cls(
            corpus=str(data["corpus"]),
            labels=list(labels),
            utterances=rows,
            folds=parsed,
            protocol=str(data.get("protocol") or ""),
            official_test=data.get("official_test"),
            source=source,
            attribute_scale=scale,
        )

    def write(self, out_dir: str | os.PathLike) -> Path:
        """Write ``out_dir/manifest.json`` (atomically) and, when rows have transcripts,
        ``out_dir/transcripts.json`` (utterance id -> text, what the text stream reads)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / MANIFEST_NAME
        atomic_write_json(path, self.to_dict(), indent=1, ensure_ascii=False)
        if any(row.get("transcript") for row in self.utterances):
            transcripts = {row["id"]: row.get("transcript") or "" for row in self.utterances}
            atomic_write_json(out_dir / "transcripts.json", transcripts, ensure_ascii=False)
        return path

    def count_table(self) -> str:
        """Utterances per class for each fold's train, dev (when listed) and test lists (``none``:
        rows without a category, when there are such); then each declared attribute's range, mean
        and count per list; where rows record genders, then each fold's test speakers per gender."""
        width = max(7, *(len(label) + 2 for label in self.labels))
        columns = [*self.labels, *([None] if any(row["label"] is None for row in self.utterances) else [])]
        header = f"{'fold':<8}{'split':<7}" + "".join(f"{c or 'none':>{width}}" for c in columns) + f"{'total':>8}"
        lines = [f"{self.corpus}: {self.protocol or f'{len(self.folds)} fold(s)'}", header, "-" * len(header)]
        for name, fold in self.folds.items():
            for split, ids in (("train", fold.train), ("dev", fold.dev), ("test", fold.test)):
                if ids is None:
                    continue
                counts = Counter(row["label"] for row in self.rows(ids))
                lines.append(
                    f"{name:<8}{split:<7}" + "".join(f"{counts[c]:>{width}}" for c in columns) + f"{len(ids):>8}"
                )
        everything = Counter(row["label"] for row in self.utterances)
        lines.append(
            f"{'all':<15}" + "".join(f"{everything[c]:>{width}}" for c in columns) + f"{len(self.utterances):>8}"
        )
        if self.attribute_scale:
            names = list(self.attribute_scale)
            scales = ", ".join(f"{n} {lo:g}-{hi:g}" for n, (lo, hi) in self.attribute_scale.items())
            lines.append(f"attributes (scale: {scales}): range, mean (utterances that have it)")
            for name, fold in self.folds.items():
                for split, ids in (("train", fold.train), ("dev", fold.dev), ("test", fold.test)):
                    if ids is not None:
                        summary = attribute_summary(self.rows(ids), names)
                        lines.append(f"{name:<8}{split:<7}" + "; ".join(f"{n} {summary[n]}" for n in names))
        if any(row.get("gender") for row in self.utterances):
            lines.append("test speakers per gender:")
            for name, fold in self.folds.items():
                speakers = {(row.get("gender") or "unknown", row["speaker"]) for row in self.rows(fold.test)}
                genders = Counter(gender for gender, _ in speakers)
                lines.append(f"{name:<8}" + ", ".join(f"{g} {n}" for g, n in sorted(genders.items())))
        return "\n".join(lines)


def _check_row(row: Any, index: int, labels: list[str], seen: set[str], source: str) -> None:
    where = f"{source}: utterances[{index}]"
    if not isinstance(row, dict):
        raise ValueError(f"{where} is not an object: {row!r}")
    for key in REQUIRED_FIELDS:
        if key not in row:
            raise ValueError(f"{where} lacks {key!r} (required: {', '.join(REQUIRED_FIELDS)}): {row!r}")
    if not isinstance(row["id"], str) or not row["id"]:
        raise ValueError(f"{where}: id must be a non-empty string, got {row['id']!r}")
    if row["id"] in seen:
        raise ValueError(f"{where}: duplicate id {row['id']!r}")
    seen.add(row["id"])
    if not isinstance(row["path"], str) or not row["path"]:
        raise ValueError(f"{where} ({row['id']}): path must be a non-empty string")
    if row["label"] is None and row.get("attributes"):
        pass  # attributes without a usable category: categorical runs leave the row out
    elif row["label"] not in labels:
        raise ValueError(f"{where} ({row['path']}): label {row['label']!r} is not among {labels}")
    start, end = row.get("start"), row.get("end")
    for name, value in (("start", start), ("end", end), ("duration", row.get("duration"))):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"{where} ({row['path']}): {name} must be a number of seconds >= 0, got {value!r}")
    if end is not None and end <= (start or 0):
        raise ValueError(f"{where} ({row['path']}): segment end {end} is not after its start {start or 0}")
    gender = row.get("gender")
    if gender is not None and (not isinstance(gender, str) or not gender):
        raise ValueError(f"{where} ({row['path']}): gender must be a non-empty string or null, got {gender!r}")
    channel = row.get("channel")
    if channel is not None and (isinstance(channel, bool) or not isinstance(channel, int) or channel < 1):
        raise ValueError(f"{where} ({row['path']}): channel must be a 1-based channel number, got {channel!r}")


def _parse_fold(name: str, lists: Any, known: set[str], source: str) -> ManifestFold:
    if not _FOLD.match(str(name)):
        raise ValueError(f"{source}: fold {name!r} must be named fold1, fold2, ...")
    if not isinstance(lists, dict) or "train" not in lists or "test" not in lists:
        raise ValueError(f"{source}: folds.{name} must hold train and test lists (and optionally dev)")
    parsed: dict[str, tuple[str, ...]] = {}
    for split in ("train", "dev", "test"):
        if split not in lists:
            continue
        ids = lists[split]
        if not isinstance(ids, list) or not ids:
            raise ValueError(f"{source}: folds.{name}.{split} must be a non-empty list of utterance ids")
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ValueError(
                f"{source}: folds.{name}.{split} names unknown utterances: {', '.join(map(str, unknown[:5]))}"
            )
        parsed[split] = tuple(ids)
    for a, b in (("train", "test"), ("train", "dev"), ("dev", "test")):
        common = set(parsed.get(a, ())) & set(parsed.get(b, ()))
        if common:
            raise ValueError(
                f"{source}: folds.{name}: {len(common)} utterance(s) in both {a} and {b}, e.g. {min(common)}"
            )
    return ManifestFold(parsed["train"], parsed["test"], parsed.get("dev"))


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read ``path`` (a ``manifest.json``, or the directory holding it).

    Raises:
        FileNotFoundError: no manifest there.
        ValueError: not valid JSON or not a valid manifest (the file and the problem named).
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"manifest not found: {path} (prepare one with `python -m s3prl_ser.cli.prepare_corpus`)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    return Manifest.from_dict(data, str(path))
