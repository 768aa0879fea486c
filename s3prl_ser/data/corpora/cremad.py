"""CREMA-D (Cao et al. 2014) in its release layout: ``ROOT/AudioWAV/1001_DFA_ANG_XX.wav``.

A file name is ``<actor>_<sentence>_<emotion>_<level>``: actor ``1001``..``1091``, one of the
12 sentence codes, emotion ``ANG DIS FEA HAP NEU SAD``, level ``LO MD HI XX``.

Protocol: CREMA-D has no official split; the default is 5 speaker-independent folds
(:func:`~s3prl_ser.data.folds.speaker_folds`), dealt by gender when ``ROOT/VideoDemographics.csv``
(the release's ``ActorID, Age, Sex, Race, Ethnicity`` table) is there, else in actor order.
EmoBox's one CREMA-D fold is an utterance-level random 25 % (speakers on both sides); read its
lists as is to compare with EmoBox.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from s3prl_ser.data.corpora.common import (
    PreparationError,
    check_audio,
    finish,
    rows_from_names,
    speaker_cv_manifest,
)
from s3prl_ser.data.manifest import Manifest

__all__ = ["EMOTIONS", "SENTENCES", "NUM_FOLDS", "DEMOGRAPHICS", "parse_name", "read_genders", "prepare"]

EMOTIONS = {"NEU": "neu", "HAP": "hap", "SAD": "sad", "ANG": "ang", "FEA": "fea", "DIS": "dis"}
SENTENCES = frozenset({"IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"})
LEVELS = frozenset({"LO", "MD", "HI", "XX"})
NUM_FOLDS = 5
DEMOGRAPHICS = "VideoDemographics.csv"
_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")


def parse_name(path: Path) -> dict[str, str]:
    """``{"emotion", "actor"}`` from a CREMA-D file name.

    Raises:
        PreparationError: naming the file, for another name pattern or unknown codes.

    Example:
        >>> parse_name(Path("AudioWAV/1001_DFA_ANG_XX.wav"))
        {'emotion': 'ang', 'actor': '1001'}
    """
    match = _NAME.match(path.stem)
    if not match:
        raise PreparationError(f"{path}: not a CREMA-D file name (expected 1001_DFA_ANG_XX)")
    actor, sentence, emotion, level = match.groups()
    for value, known, what in (
        (sentence, SENTENCES, "sentence"),
        (emotion, EMOTIONS, "emotion"),
        (level, LEVELS, "level"),
    ):
        if value not in known:
            raise PreparationError(f"{path}: unknown {what} code {value} (known: {', '.join(sorted(known))})")
    return {"emotion": EMOTIONS[emotion], "actor": actor}


def read_genders(path: Path) -> dict[str, str]:
    """Actor id -> ``male`` / ``female`` from the release's demographics table.

    Raises:
        PreparationError: naming the file (and line): no ``ActorID``/``Sex`` column, a short row,
            or a sex other than Male/Female.
    """
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("ActorID", "Sex") if c not in (reader.fieldnames or [])]
        if missing:
            raise PreparationError(f"{path}: lacks the column(s) {', '.join(missing)}")
        genders = {}
        for number, record in enumerate(reader, start=2):
            actor, sex = record["ActorID"], record["Sex"]
            if actor is None or sex is None:
                raise PreparationError(f"{path}:{number}: a short row (no ActorID or Sex)")
            if sex.strip().lower() not in ("male", "female"):
                raise PreparationError(f"{path}:{number}: Sex {sex!r} is not Male or Female")
            genders[actor.strip()] = sex.strip().lower()
    return genders


def prepare(
    root: str | os.PathLike, out: str | os.PathLike, *, num_folds: int = NUM_FOLDS, skip_bad_audio: bool = False
) -> Manifest:
    """Write ``out/manifest.json`` for ``root/AudioWAV``.

    Raises:
        PreparationError: no ``AudioWAV``, a malformed name or demographics table, unreadable audio (files named; the
            release's empty ``1076_MTI_SAD_XX.wav`` among them: ``skip_bad_audio`` leaves such
            files out with a warning), or fewer actors than folds.
    """
    root = Path(root)
    rows = rows_from_names(root, root / "AudioWAV", parse_name, "actor")
    if (root / DEMOGRAPHICS).is_file():
        genders = read_genders(root / DEMOGRAPHICS)
        rows = [{**row, "gender": genders[row["speaker"]]} if row["speaker"] in genders else row for row in rows]
    rows = check_audio(root, rows, skip_bad=skip_bad_audio)
    return finish(speaker_cv_manifest("CREMA-D", list(EMOTIONS.values()), rows, num_folds), out)
