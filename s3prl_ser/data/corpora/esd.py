"""ESD, the Emotional Speech Dataset (Zhou et al. 2021), in its release layout.

``ROOT/0011/Angry/{train,evaluation,test}/0011_000351.wav`` for speakers ``0001``..``0010``
(Mandarin) and ``0011``..``0020`` (English), emotions ``Angry Happy Neutral Sad Surprise``, and
``ROOT/0011/0011.txt`` (``0011_000351<TAB>text<TAB>emotion`` per line: the transcripts).

Protocol: ESD's own lists: its ``train`` folders train, ``evaluation`` is dev and ``test`` is
the official test set (one fold). Copies without the split folders
(``0011/Angry/0011_000351.wav``) are split by the same rule the release uses: of each
emotion's 350 utterances the first 20 are evaluation, the next 30 test, the rest train.

That split is speaker-dependent: every speaker is in train, dev and test, so loading it warns
about the speakers shared between train and test.
EmoBox's ESD folds are speaker-independent (5 folds, each testing all utterances of 4 of the
20 speakers), so numbers on this split do not compare with EmoBox's ESD numbers; to compare,
read EmoBox's lists as they are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from s3prl_ser.data.corpora.common import PreparationError, audio_files, check_audio, finish, official_manifest
from s3prl_ser.data.manifest import Manifest

__all__ = ["EMOTIONS", "LANGUAGES", "SPLITS", "split_by_index", "prepare"]

EMOTIONS = {"Neutral": "neu", "Happy": "hap", "Sad": "sad", "Angry": "ang", "Surprise": "sur"}
SPLITS = {"train": "train", "evaluation": "dev", "test": "test"}
LANGUAGES = {"zh": range(1, 11), "en": range(11, 21), "all": range(1, 21)}
_NAME = re.compile(r"^(\d{4})_(\d{6})$")


def split_by_index(number: int) -> str:
    """The release's split of utterance ``number`` (1-based over a speaker's 1,750).

    Example:
        >>> [split_by_index(n) for n in (1, 20, 21, 50, 51, 350, 351, 371)]
        ['dev', 'dev', 'test', 'test', 'train', 'train', 'dev', 'test']
    """
    within = (number - 1) % 350 + 1
    return "dev" if within <= 20 else "test" if within <= 50 else "train"


def _transcripts(speaker_dir: Path) -> dict[str, str]:
    path = speaker_dir / f"{speaker_dir.name}.txt"
    texts: dict[str, str] = {}
    if path.is_file():
        # The Mandarin speakers' files are not all UTF-8; a transcript is optional, a crash is not.
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            fields = line.strip().split("\t")
            if len(fields) >= 2:
                texts[fields[0]] = fields[1]
    return texts


def prepare(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    language: Literal["all", "en", "zh"] = "all",
    skip_bad_audio: bool = False,
) -> Manifest:
    """Write ``out/manifest.json`` for the speakers of ``language`` under ``root``.

    Raises:
        PreparationError: a speaker or emotion folder missing, a file name that is not
            ``<speaker>_<number>`` of its folder's speaker, or unreadable audio (files named).
    """
    root = Path(root)
    if language not in LANGUAGES:
        raise PreparationError(f"ESD language must be one of {', '.join(LANGUAGES)}, got {language!r}")
    speakers = [f"{n:04d}" for n in LANGUAGES[language]]
    present = [s for s in speakers if (root / s).is_dir()]
    if not present:
        raise PreparationError(
            f"{root}: no ESD speaker folder ({speakers[0]}..{speakers[-1]}); point ROOT at the folder holding them"
        )
    rows: list[dict[str, Any]] = []
    split_of: dict[str, str] = {}
    for speaker in present:
        texts = _transcripts(root / speaker)
        for emotion, label in EMOTIONS.items():
            for path in audio_files(root / speaker / emotion):
                match = _NAME.match(path.stem)
                if not match or match.group(1) != speaker:
                    raise PreparationError(f"{path}: not an ESD file name of speaker {speaker} ({speaker}_000351)")
                relative = path.relative_to(root / speaker / emotion).parts
                if len(relative) == 2 and relative[0] in SPLITS:
                    split_of[path.stem] = SPLITS[relative[0]]
                elif len(relative) == 1:
                    split_of[path.stem] = split_by_index(int(match.group(2)))
                else:
                    raise PreparationError(f"{path}: expected {emotion}/{{train,evaluation,test}}/{path.name}")
                row = {"id": path.stem, "path": path.relative_to(root).as_posix(), "label": label, "speaker": speaker}
                if path.stem in texts:
                    row["transcript"] = texts[path.stem]
                rows.append(row)
    rows = check_audio(root, rows, skip_bad=skip_bad_audio)
    name = "ESD" if language == "all" else f"ESD-{language}"
    manifest = official_manifest(
        name,
        list(EMOTIONS.values()),
        rows,
        lambda row: split_of[row["id"]],
        "test",
        "official split (train / evaluation / test), speaker-dependent: every speaker in all three",
    )
    return finish(manifest, out)
