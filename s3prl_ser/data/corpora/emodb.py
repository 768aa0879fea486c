"""EmoDB, the Berlin Database of Emotional Speech (Burkhardt et al. 2005): ``ROOT/wav/03a01Fa.wav``.

A file name is speaker (two digits: 03, 08, 09, 10, 11, 12, 13, 14, 15, 16), text code
(``a01``..``b10``), emotion letter (German initials: ``W`` Ärger/Wut anger, ``L`` Langeweile
boredom, ``E`` Ekel disgust, ``A`` Angst fear, ``F`` Freude happiness, ``T`` Trauer sadness,
``N`` neutral) and a version letter.

Protocol: EmoDB has no official split; the default is EmoBox's 5 speaker-independent folds of
two speakers (:func:`~s3prl_ser.data.folds.speaker_folds`); ``num_folds=10`` is
leave-one-speaker-out.
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

__all__ = ["EMOTIONS", "NUM_FOLDS", "parse_name", "prepare"]

EMOTIONS = {"N": "neu", "F": "hap", "T": "sad", "W": "ang", "A": "fea", "E": "dis", "L": "bor"}
NUM_FOLDS = 5  # EmoBox's
_NAME = re.compile(r"^(\d\d)([ab]\d\d)([A-Z])([a-z])$")


def parse_name(path: Path) -> dict[str, str]:
    """``{"emotion", "speaker"}`` from an EmoDB file name.

    Raises:
        PreparationError: naming the file, for another name pattern or an unknown emotion letter.

    Example:
        >>> parse_name(Path("wav/03a01Fa.wav"))
        {'emotion': 'hap', 'speaker': '03'}
    """
    match = _NAME.match(path.stem)
    if not match:
        raise PreparationError(
            f"{path}: not an EmoDB file name (expected e.g. 03a01Fa: speaker, text, emotion, version)"
        )
    speaker, _, emotion, _ = match.groups()
    if emotion not in EMOTIONS:
        raise PreparationError(f"{path}: unknown emotion letter {emotion} (EmoDB: {', '.join(EMOTIONS)})")
    return {"emotion": EMOTIONS[emotion], "speaker": speaker}


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
