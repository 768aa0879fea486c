"""IEMOCAP's leave-one-session-out folds and each fold's train/dev split.

Fold N tests on Session N and trains on the other four sessions (SUPERB, the paper 2.1).
Within the training sessions, :func:`superb_train_dev_split` reproduces s3prl's emotion
expert bit for bit: ``torch.manual_seed(0)`` then ``random_split`` of the train meta-data list
into ``int((1 - valid_ratio) * n)`` train and the rest dev. That split is utterance-level, so
dev shares speakers with train. :func:`speaker_disjoint_split` instead holds out the two
speakers of one training session; its numbers are *not* comparable with the SUPERB
leaderboard, which uses the former.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePath

import torch

__all__ = [
    "FOLDS",
    "SUPERB_SPLIT_SEED",
    "fold_session",
    "check_fold",
    "utterance_speaker",
    "resolve_fold",
    "superb_train_dev_split",
    "speaker_disjoint_split",
]

FOLDS = ("fold1", "fold2", "fold3", "fold4", "fold5")
SUPERB_SPLIT_SEED = 0  # s3prl's emotion expert: torch.manual_seed(0) before random_split
_FOLD = re.compile(r"^fold([1-9][0-9]*)$")
# e.g. Ses01F_impro01_M000, Ses03M_script02_1_F012
_UTTERANCE = re.compile(r"^Ses(\d\d)[FM]_.*_([FM])\d+$")


def check_fold(fold: str) -> str:
    """Return ``fold`` if it is ``fold<N>``, else raise a ValueError that says what is expected."""
    if not _FOLD.match(str(fold)):
        raise ValueError(f"invalid fold {fold!r}: expected one of {', '.join(FOLDS)}")
    return fold


def resolve_fold(test_fold: str | None, variant: str | None) -> str:
    """The fold named by ``datarc.test_fold`` or s3prl's ``-v`` (``fold1`` if neither).

    Stock s3prl lets the config's ``test_fold`` win silently, so ``-v fold3`` with a config that
    says ``fold1`` trains fold1; here that conflict is an error.

    Raises:
        ValueError: both are given and differ.
    """
    if test_fold and variant and test_fold != variant:
        raise ValueError(
            f"-v {variant} conflicts with config.downstream_expert.datarc.test_fold={test_fold}; choose the "
            f"fold with -o config.downstream_expert.datarc.test_fold={variant} (or drop -v)"
        )
    return test_fold or variant or "fold1"


def fold_session(fold: str) -> str:
    """``"fold3"`` -> ``"Session3"``: the session fold N tests on (s3prl's naming)."""
    return check_fold(fold).replace("fold", "Session")


def utterance_speaker(path: str) -> str:
    """The speaker of an IEMOCAP utterance, e.g. ``Ses01M`` for ``.../Ses01F_impro01_M000.wav``.

    s3prl's ``speaker`` meta-data field holds the dialog owner (the file-name prefix), which
    is the other speaker for half of the utterances; the utterance's speaker is the session
    plus the gender letter of the last name field.
    """
    stem = PurePath(path).stem
    match = _UTTERANCE.match(stem)
    if not match:
        raise ValueError(f"{path}: not an IEMOCAP utterance name (expected Ses01F_impro01_M000)")
    return f"Ses{match.group(1)}{match.group(2)}"


def superb_train_dev_split(
    num_utterances: int, valid_ratio: float = 0.2, seed: int = SUPERB_SPLIT_SEED
) -> tuple[list[int], list[int]]:
    """Indices of the train and dev parts of a fold's train list, as s3prl's emotion expert.

    Uses a private generator seeded like s3prl's global ``torch.manual_seed(0)``, so the
    permutation is identical but the caller's global RNG is left untouched.
    """
    if not 0.0 < valid_ratio < 1.0:
        raise ValueError(f"valid_ratio must be in (0, 1), got {valid_ratio}")
    train_len = int((1 - valid_ratio) * num_utterances)
    if train_len == 0 or train_len == num_utterances:
        raise ValueError(f"valid_ratio {valid_ratio} leaves an empty split of {num_utterances} utterances")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_utterances, generator=generator).tolist()
    return order[:train_len], order[train_len:]


def speaker_disjoint_split(
    paths: Sequence[str], test_fold: str, dev_session: int | None = None
) -> tuple[list[int], list[int]]:
    """Train/dev indices holding out both speakers of one training session as dev.

    Args:
        paths: utterance paths of the fold's train list (IEMOCAP names).
        test_fold: the fold being tested, whose session must not be in ``paths``.
        dev_session: session number to hold out; by default the one after the test session
            (fold1 -> Session2, ..., fold5 -> Session1).
    """
    test_session = int(fold_session(test_fold).removeprefix("Session"))
    sessions = [int(utterance_speaker(p)[3:5]) for p in paths]
    available = sorted(set(sessions))
    if test_session in available:
        raise ValueError(f"the train list of {test_fold} contains Session{test_session} utterances")
    if dev_session is None:
        later = [s for s in available if s > test_session]
        dev_session = later[0] if later else available[0]
    if dev_session not in available or len(available) < 2:
        raise ValueError(f"cannot hold out Session{dev_session}: train sessions are {available}")
    train = [i for i, s in enumerate(sessions) if s != dev_session]
    dev = [i for i, s in enumerate(sessions) if s == dev_session]
    return train, dev
