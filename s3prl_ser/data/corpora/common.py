"""What every corpus preparer shares: the error type, the audio check, the two fold protocols.

A preparer collects rows (``id``, ``path`` relative to the corpus root, ``label``, ``speaker``,
optional fields of :mod:`s3prl_ser.data.manifest`), then builds its manifest with
:func:`speaker_cv_manifest` (corpora without an official split: speaker-independent folds) or
:func:`official_manifest` (train/dev/test lists of the corpus itself: one fold), and
:func:`finish` checks every audio header and writes it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from s3prl_ser.data.audio import AUDIO_EXTENSIONS, audio_file_problem, audio_info
from s3prl_ser.data.folds import GENDER_RULE, SORTED_RULE, speaker_folds
from s3prl_ser.data.manifest import Manifest, ManifestFold

__all__ = [
    "PreparationError",
    "audio_files",
    "check_audio",
    "speaker_cv_manifest",
    "official_manifest",
    "finish",
    "attribute_columns",
]


class PreparationError(ValueError):
    """The corpus does not have the expected layout or content; the message names the file."""


def audio_files(directory: Path, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[Path]:
    """Every audio file under ``directory`` (recursively), sorted, so preparation is the same on
    every file system.

    Raises:
        PreparationError: ``directory`` does not exist or holds none.
    """
    if not directory.is_dir():
        raise PreparationError(f"{directory}: directory not found")
    found = sorted(p for p in directory.rglob("*") if p.suffix.lower() in extensions and p.is_file())
    if not found:
        raise PreparationError(f"{directory}: no audio files ({', '.join(extensions)})")
    return found


def rows_from_names(
    root: Path, directory: Path, parse: Callable[[Path], Mapping[str, str] | None], speaker: str
) -> list[dict[str, Any]]:
    """One manifest row per audio file under ``directory`` named as the corpus names them.

    ``parse`` reads a file name into fields (``emotion``, the ``speaker`` field and, where the
    corpus records it, ``gender``), or returns None for a file that is not part of the corpus;
    the row's id is the file's stem and its path is relative to ``root``.
    """
    rows = []
    for path in audio_files(directory):
        fields = parse(path)
        if fields is not None:
            row = {"id": path.stem, "path": path.relative_to(root).as_posix(), "label": fields["emotion"]}
            gender = {"gender": fields["gender"]} if fields.get("gender") else {}
            rows.append({**row, "speaker": fields[speaker], **gender})
    return rows


def check_audio(root: Path, rows: list[dict[str, Any]], *, skip_bad: bool = False) -> list[dict[str, Any]]:
    """Check every row's audio header now (not at step 3,000) and fill in missing durations.

    Args:
        root: the corpus root the rows' paths are relative to.
        rows: the rows; ``duration`` is set from the header where absent.
        skip_bad: warn about unusable files (naming them) and leave them out, instead of raising.

    Returns:
        The usable rows.

    Raises:
        PreparationError: files that cannot be used, the first few named with the cause.
    """
    good, bad = [], []
    for row in rows:
        path = root / row["path"]
        problem = audio_file_problem(path, start=row.get("start"), end=row.get("end"), channel=row.get("channel"))
        if problem:
            bad.append(f"{path}: {problem}")
            continue
        if row.get("duration") is None:
            end = row.get("end") if row.get("end") is not None else audio_info(path).seconds
            row["duration"] = round(end - (row.get("start") or 0.0), 4)
        good.append(row)
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        message = f"{len(bad)} of {len(rows)} audio files cannot be used: {shown}"
        if not skip_bad:
            raise PreparationError(f"{message} (leave them out with --skip-bad-audio)")
        warnings.warn(f"{message}; left out", stacklevel=2)
    if not good:
        raise PreparationError(f"{root}: no usable audio")
    return good


def _labels_in_use(labels: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> list[str]:
    used = {row["label"] for row in rows}
    return [label for label in labels if label in used]


def speaker_cv_manifest(
    corpus: str, labels: Sequence[str], rows: list[dict[str, Any]], num_folds: int, protocol: str = ""
) -> Manifest:
    """Speaker-independent folds (:func:`~s3prl_ser.data.folds.speaker_folds`): fold k tests on
    its speakers and trains on all others; no fold lists dev (the ``split`` rule carves it).
    Where rows record the speaker's ``gender``, the folds balance it; the protocol text names
    the rule that dealt the speakers (:data:`~s3prl_ser.data.folds.GENDER_RULE` or
    :data:`~s3prl_ser.data.folds.SORTED_RULE`).

    Raises:
        PreparationError: fewer speakers than folds, or one speaker with two genders.
    """
    genders: dict[str, str] = {}
    for row in rows:
        if row.get("gender"):
            if genders.setdefault(row["speaker"], row["gender"]) != row["gender"]:
                raise PreparationError(
                    f"{corpus}: speaker {row['speaker']} is {genders[row['speaker']]!r} in one row and "
                    f"{row['gender']!r} in {row['path']}"
                )
    try:
        groups = speaker_folds((row["speaker"] for row in rows), num_folds, genders)
    except ValueError as error:
        raise PreparationError(f"{corpus}: {error}") from error
    folds = {}
    for k, speakers in enumerate(groups, start=1):
        held = set(speakers)
        folds[f"fold{k}"] = ManifestFold(
            tuple(row["id"] for row in rows if row["speaker"] not in held),
            tuple(row["id"] for row in rows if row["speaker"] in held),
        )
    rule = GENDER_RULE if genders else SORTED_RULE
    text = f"{protocol or f'{num_folds} speaker-independent folds'}; {rule}"
    return Manifest(corpus, _labels_in_use(labels, rows), rows, folds, protocol=text)


def official_manifest(
    corpus: str,
    labels: Sequence[str],
    rows: list[dict[str, Any]],
    split_of: Callable[[dict[str, Any]], str | None],
    test_name: str,
    protocol: str = "",
) -> Manifest:
    """One fold from the corpus's own lists: ``split_of(row)`` is ``train``, ``dev``, ``test``
    or None (in no list). A corpus without a dev list gets it by the ``split`` rule.

    Raises:
        PreparationError: an empty train or test list.
    """
    lists: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    kept = []
    for row in rows:
        split = split_of(row)
        if split is not None:
            lists[split].append(row["id"])
            kept.append(row)
    for split in ("train", "test"):
        if not lists[split]:
            raise PreparationError(f"{corpus}: the official {split} list is empty")
    fold = ManifestFold(tuple(lists["train"]), tuple(lists["test"]), tuple(lists["dev"]) or None)
    text = protocol or f"official split (test: {test_name})"
    return Manifest(corpus, _labels_in_use(labels, kept), kept, {"fold1": fold}, protocol=text, official_test=test_name)


def finish(manifest: Manifest, out: str | os.PathLike) -> Manifest:
    """Validate ``manifest`` as a reader would, write ``out/manifest.json`` and return it (its
    count table for printing)."""
    Manifest.from_dict(manifest.to_dict(), f"{manifest.corpus} manifest")
    manifest.write(out)
    return manifest


def attribute_columns(
    record: Mapping[str, Any], attributes: Mapping[str, str], scale: Mapping[str, tuple[float, float]], where: str
) -> dict[str, float | None]:
    """Attribute ``name``'s value from ``record[column]`` for each ``name: column`` of
    ``attributes``: None when empty, else a number within ``scale[name]`` (an error naming
    ``where``, the attribute and the column otherwise)."""
    values: dict[str, float | None] = {}
    for name, column in attributes.items():
        value = record.get(column)
        if value is None or str(value).strip() == "":
            values[name] = None
            continue
        try:
            number = float(value)
        except ValueError as error:
            raise PreparationError(f"{where}: {name} (column {column!r}) is not a number: {value!r}") from error
        lo, hi = scale[name]
        if not lo <= number <= hi:
            raise PreparationError(
                f"{where}: {name} {number:g} (column {column!r}) is outside its scale [{lo:g}, {hi:g}]"
            )
        values[name] = number
    return values
