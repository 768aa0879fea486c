"""RAVDESS (Livingstone & Russo 2018), speech files, in its release layout.

``ROOT/Actor_01/03-01-06-01-02-01-01.wav`` .. ``Actor_24/`` (the Zenodo archive
``Audio_Speech_Actors_01-24.zip``; the directory above ``Actor_*`` is searched recursively, so
the archive's own top folder may stay). A file name is seven two-digit fields: modality
(``03`` audio-only), vocal channel (``01`` speech, ``02`` song), emotion (``01`` neutral,
``02`` calm, ``03`` happy, ``04`` sad, ``05`` angry, ``06`` fearful, ``07`` disgust, ``08``
surprised), intensity, statement, repetition, actor. Emotion and speaker come from these
fields; song and video files are left out. Odd-numbered actors are male, even-numbered female
(the corpus's documentation); each row records its actor's gender.

Protocol: RAVDESS has no official split; the default is EmoBox's 6 speaker-independent folds
of 4 actors, dealt by gender (:func:`~s3prl_ser.data.folds.speaker_folds`): every test fold
holds 2 male and 2 female actors. EmoBox's own assignment can be read as is from its
``data/ravdess`` lists.
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

EMOTIONS = {"01": "neu", "02": "cal", "03": "hap", "04": "sad", "05": "ang", "06": "fea", "07": "dis", "08": "sur"}
NUM_FOLDS = 6  # EmoBox: 24 actors in folds of 4
_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def parse_name(path: Path) -> dict[str, str] | None:
    """``{"emotion", "actor", "gender"}`` of a speech file's name, or None for song and video files.

    Raises:
        PreparationError: naming the file, for a name that is not seven two-digit fields, an
            unknown emotion code, or an actor that differs from its ``Actor_NN`` folder.

    Example:
        >>> parse_name(Path("Actor_12/03-01-06-01-02-01-12.wav"))
        {'emotion': 'fea', 'actor': '12', 'gender': 'female'}
        >>> parse_name(Path("Actor_12/03-02-06-01-02-01-12.wav")) is None  # song
        True
    """
    match = _NAME.match(path.stem)
    if not match:
        raise PreparationError(
            f"{path}: not a RAVDESS file name (expected seven two-digit fields, 03-01-06-01-02-01-12)"
        )
    modality, channel, emotion, _, _, _, actor = match.groups()
    if modality != "03" or channel != "01":
        return None
    if emotion not in EMOTIONS:
        raise PreparationError(f"{path}: unknown emotion code {emotion} (RAVDESS codes: 01..08)")
    folder = path.parent.name
    if folder.startswith("Actor_") and folder != f"Actor_{actor}":
        raise PreparationError(f"{path}: the actor field {actor} contradicts the folder {folder}")
    return {"emotion": EMOTIONS[emotion], "actor": actor, "gender": "male" if int(actor) % 2 else "female"}


def prepare(
    root: str | os.PathLike, out: str | os.PathLike, *, num_folds: int = NUM_FOLDS, skip_bad_audio: bool = False
) -> Manifest:
    """Write ``out/manifest.json`` for the RAVDESS speech files under ``root``.

    Raises:
        PreparationError: no audio, a malformed name, unreadable audio (files named), or fewer
            actors than folds.
    """
    root = Path(root)
    rows = rows_from_names(root, root, parse_name, "actor")
    if not rows:
        raise PreparationError(f"{root}: no RAVDESS speech file (03-01-*.wav)")
    rows = check_audio(root, rows, skip_bad=skip_bad_audio)
    protocol = f"{num_folds} speaker-independent folds (EmoBox's fold count)"
    return finish(speaker_cv_manifest("RAVDESS", list(EMOTIONS.values()), rows, num_folds, protocol), out)
