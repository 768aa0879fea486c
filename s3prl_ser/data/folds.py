"""IEMOCAP's leave-one-session-out folds and each fold's train/dev split.

Fold N tests on Session N and trains on the other four sessions (SUPERB, the paper 2.1).
Within the training sessions, :func:`superb_train_dev_split` reproduces s3prl's emotion
expert bit for bit: ``torch.manual_seed(0)`` then ``random_split`` of the train meta-data list
into ``int((1 - valid_ratio) * n)`` train and the rest dev. That split is utterance-level, so
dev shares speakers with train. :func:`speaker_disjoint_split` instead holds out the two
speakers of one training session; its numbers are *not* comparable with the SUPERB
leaderboard, which uses the former.

Other corpora (:mod:`s3prl_ser.data.manifest`) list their folds explicitly; where a fold has no
dev list, :func:`speaker_holdout_split` holds out whole speakers taken from the manifest's
``speaker`` field, and :func:`speaker_folds` deals a corpus's speakers into speaker-independent
folds for corpora without an official split, balancing gender where the corpus records it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath

import torch

__all__ = [
    "FOLDS",
    "DEPLOY_FOLD",
    "SUPERB_SPLIT_SEED",
    "fold_session",
    "check_fold",
    "check_run_fold",
    "is_deployment",
    "utterance_speaker",
    "resolve_fold",
    "superb_train_dev_split",
    "speaker_disjoint_split",
    "speaker_holdout_split",
    "speaker_folds",
    "GENDER_RULE",
    "SORTED_RULE",
]

FOLDS = ("fold1", "fold2", "fold3", "fold4", "fold5")
# The "fold" of a deployment run (:mod:`s3prl_ser.data.full_data_pool`): trained on every fold's
# utterances, it has no test set. Stage 2 accepts it as ``datarc.test_fold``; cross-validation
# and stage 1 do not (``check_fold`` refuses it).
DEPLOY_FOLD = "deploy"
SUPERB_SPLIT_SEED = 0  # s3prl's emotion expert: torch.manual_seed(0) before random_split
_FOLD = re.compile(r"^fold([1-9][0-9]*)$")
# How :func:`speaker_folds` dealt a corpus's speakers: the text its manifest's protocol records.
GENDER_RULE = "speakers ordered by gender, then id, and dealt round-robin: each gender spread evenly over the folds"
SORTED_RULE = "sorted speakers dealt round-robin (genders not recorded)"
# e.g. Ses01F_impro01_M000, Ses03M_script02_1_F012
_UTTERANCE = re.compile(r"^Ses(\d\d)[FM]_.*_([FM])\d+$")


def check_fold(fold: str) -> str:
    """Return ``fold`` if it is ``fold<N>``, else raise a ValueError that says what is expected."""
    if not _FOLD.match(str(fold)):
        raise ValueError(f"invalid fold {fold!r}: expected one of {', '.join(FOLDS)}")
    return fold


def is_deployment(fold: str | None) -> bool:
    """Whether ``fold`` names a deployment run (:data:`DEPLOY_FOLD`), which has no test set.

    Example:
        >>> is_deployment("deploy"), is_deployment("fold1")
        (True, False)
    """
    return fold == DEPLOY_FOLD


def check_run_fold(fold: str) -> str:
    """:func:`check_fold`, or :data:`DEPLOY_FOLD` (a stage-2 run may be a deployment run).

    Example:
        >>> check_run_fold("deploy"), check_run_fold("fold2")
        ('deploy', 'fold2')
    """
    return fold if is_deployment(fold) else check_fold(fold)


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
        test_fold: the fold being tested, whose session must not be in ``paths``; or
            :data:`DEPLOY_FOLD` (every session is in ``paths``, none is tested).
        dev_session: session number to hold out; by default the one after the test session
            (fold1 -> Session2, ..., fold5 -> Session1), and for a deployment run the last one.
    """
    sessions = [int(utterance_speaker(p)[3:5]) for p in paths]
    available = sorted(set(sessions))
    if is_deployment(test_fold):
        test_session = available[-1] + 1 if available else 0  # none: the default dev is then the last session
    else:
        test_session = int(fold_session(test_fold).removeprefix("Session"))
    if test_session in available:
        raise ValueError(f"the train list of {test_fold} contains Session{test_session} utterances")
    if dev_session is None:
        later = [s for s in available if s > test_session]
        dev_session = later[0] if later else (available[-1] if is_deployment(test_fold) else available[0])
    if dev_session not in available or len(available) < 2:
        raise ValueError(f"cannot hold out Session{dev_session}: train sessions are {available}")
    train = [i for i, s in enumerate(sessions) if s != dev_session]
    dev = [i for i, s in enumerate(sessions) if s == dev_session]
    return train, dev


def speaker_holdout_split(
    speakers: Sequence[str | None],
    valid_ratio: float = 0.2,
    seed: int = SUPERB_SPLIT_SEED,
    dev_speakers: Sequence[str] | None = None,
) -> tuple[list[int], list[int]]:
    """Train/dev indices holding out whole speakers (the manifest's ``speaker`` field).

    Args:
        speakers: the speaker of each utterance of a fold's train list.
        valid_ratio: by default, speakers are taken in a seeded random order until dev holds
            at least this share of the utterances (one speaker always stays in train).
        seed: seed of that order.
        dev_speakers: hold out exactly these speakers instead.

    Raises:
        ValueError: an utterance without a speaker, fewer than two speakers, or a named dev
            speaker that is not in the list.

    Example:
        >>> speaker_holdout_split(["a", "a", "b", "b", "c"], dev_speakers=["b"])
        ([0, 1, 4], [2, 3])
    """
    unknown = [i for i, s in enumerate(speakers) if s is None or s == ""]
    if unknown:
        raise ValueError(
            f"split: speaker needs the speaker of every utterance; {len(unknown)} of {len(speakers)} have none "
            "(use split: superb, or give the corpus a dev list)"
        )
    present = sorted(set(speakers))
    if len(present) < 2:
        raise ValueError(f"split: speaker needs at least two training speakers, got {present}")
    if dev_speakers is not None:
        held = set(dev_speakers)
        missing = sorted(held - set(present))
        if missing or held == set(present):
            raise ValueError(f"dev_speakers {sorted(held)}: must be some, not all, of the training speakers {present}")
    else:
        if not 0.0 < valid_ratio < 1.0:
            raise ValueError(f"valid_ratio must be in (0, 1), got {valid_ratio}")
        generator = torch.Generator().manual_seed(seed)
        order = [present[i] for i in torch.randperm(len(present), generator=generator).tolist()]
        counts = {s: 0 for s in present}
        for s in speakers:
            counts[s] += 1
        held, size = set(), 0
        for speaker in order[:-1]:  # the last one always trains
            if size >= valid_ratio * len(speakers):
                break
            held.add(speaker)
            size += counts[speaker]
    train = [i for i, s in enumerate(speakers) if s not in held]
    dev = [i for i, s in enumerate(speakers) if s in held]
    return train, dev


def speaker_folds(speakers: Iterable[str], num_folds: int, genders: Mapping[str, str] | None = None) -> list[list[str]]:
    """Speaker-independent folds, dealt so that each test fold is as gender-balanced as the
    speakers allow (:data:`GENDER_RULE`).

    The speakers are ordered by gender (the gender names in sorted order, speakers of unknown
    gender last), by id within a gender, and dealt round-robin: the k-th speaker of that order
    goes to fold ``k mod K``. Each gender's block then lands in consecutive folds, so every
    fold holds ``floor`` or ``ceil`` of ``n_g / K`` speakers of each gender ``g`` and fold
    sizes differ by at most one speaker. Without genders this is the sorted speakers dealt
    round-robin (fold k tests speakers k, k + K, ...).

    Args:
        speakers: every utterance's speaker (repeats allowed).
        num_folds: K.
        genders: speaker -> gender, where the corpus records it.

    Raises:
        ValueError: fewer speakers than folds.

    Example:
        >>> speaker_folds(["04", "01", "03", "02", "05"], 2)
        [['01', '03', '05'], ['02', '04']]
        >>> speaker_folds(["1", "2", "3", "4"], 2, {"1": "m", "3": "m", "2": "f", "4": "f"})
        [['2', '1'], ['4', '3']]
    """
    known = genders or {}
    ordered = sorted(set(speakers), key=lambda s: (s not in known, known.get(s, ""), s))
    if num_folds < 1 or len(ordered) < num_folds:
        raise ValueError(f"cannot make {num_folds} speaker-independent folds from {len(ordered)} speaker(s)")
    return [ordered[k::num_folds] for k in range(num_folds)]
