"""EmoDB, the Berlin Database of Emotional Speech (Burkhardt et al. 2005): ``ROOT/wav/03a01Fa.wav``.

A file name is speaker (two digits: 03, 08, 09, 10, 11, 12, 13, 14, 15, 16), text code
(``a01``..``b10``), emotion letter (German initials: ``W`` Ärger/Wut anger, ``L`` Langeweile
boredom, ``E`` Ekel disgust, ``A`` Angst fear, ``F`` Freude happiness, ``T`` Trauer sadness,
``N`` neutral) and a version letter. The corpus's documentation gives the speakers' genders
(:data:`GENDERS`: 03, 10, 11, 12, 15 male; 08, 09, 13, 14, 16 female); each row records its
speaker's.

Protocol: EmoDB has no official split; the default is 5 speaker-independent folds (EmoBox's
fold count) of two speakers, dealt by gender (:func:`~s3prl_ser.data.folds.speaker_folds`):
every test fold holds one male and one female speaker. ``num_folds=10`` is
leave-one-speaker-out.

EmoBox's own EmoDB folds (``EmoBox/data/emodb``) are not speaker-independent: each of its 5
test lists (107 utterances) holds all 10 speakers, and every one of them is also in that
fold's train list. Read them as is only to compare with EmoBox's numbers, which are
speaker-dependent; they do not compare with these folds.
"""

from __future__ import annotations

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

__all__ = ["EMOTIONS", "GENDERS", "NUM_FOLDS", "parse_name", "prepare"]

EMOTIONS = {"N": "neu", "F": "hap", "T": "sad", "W": "ang", "A": "fea", "E": "dis", "L": "bor"}
# The speakers as the corpus documents them (emodb.bilderbar.info: "Information about the speakers").
GENDERS = {
    "03": "male",
    "08": "female",
    "09": "female",
    "10": "male",
    "11": "male",
    "12": "male",
    "13": "female",
    "14": "female",
    "15": "male",
    "16": "female",
}
NUM_FOLDS = 5  # EmoBox's
_NAME = re.compile(r"^(\d\d)([ab]\d\d)([A-Z])([a-z])$")


def parse_name(path: Path) -> dict[str, str]:
    """``{"emotion", "speaker", "gender"}`` from an EmoDB file name (no ``gender`` for a speaker
    outside :data:`GENDERS`).

    Raises:
        PreparationError: naming the file, for another name pattern or an unknown emotion letter.

    Example:
        >>> parse_name(Path("wav/03a01Fa.wav"))
        {'emotion': 'hap', 'speaker': '03', 'gender': 'male'}
    """
    match = _NAME.match(path.stem)
    if not match:
        raise PreparationError(
            f"{path}: not an EmoDB file name (expected e.g. 03a01Fa: speaker, text, emotion, version)"
        )
    speaker, _, emotion, _ = match.groups()
    if emotion not in EMOTIONS:
        raise PreparationError(f"{path}: unknown emotion letter {emotion} (EmoDB: {', '.join(EMOTIONS)})")
    gender = {"gender": GENDERS[speaker]} if speaker in GENDERS else {}
    return {"emotion": EMOTIONS[emotion], "speaker": speaker, **gender}


def prepare(
    root: str | os.PathLike, out: str | os.PathLike, *, num_folds: int = NUM_FOLDS, skip_bad_audio: bool = False
) -> Manifest:
    """Write ``out/manifest.json`` for ``root/wav``.

    Raises:
        PreparationError: no ``wav`` directory, a malformed name, unreadable audio (files
            named), or fewer speakers than folds.
    """
    root = Path(root)
    rows = rows_from_names(root, root / "wav", parse_name, "speaker")
    rows = check_audio(root, rows, skip_bad=skip_bad_audio)
    protocol = f"{num_folds} speaker-independent folds (EmoBox's fold count)"
    return finish(speaker_cv_manifest("EmoDB", list(EMOTIONS.values()), rows, num_folds, protocol), out)
