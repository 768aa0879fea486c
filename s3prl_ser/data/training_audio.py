"""What audio a model learnt from, as checkable keys: no scoring on training audio.

A model is trained (and its checkpoints selected) on a fold's train and dev utterances; a
deployment model on every utterance of its pool. Scoring it on any of them, under another
corpus's name (EmoBox lists and a preparer's output of the same corpus; the same file under two
roots), would report memorised audio as transfer. Two keys name an utterance's audio:

* its **resolved path**: ``os.path.realpath(root / path)`` (symbolic links and ``..`` undone),
  plus the item's segment and channel (:func:`~s3prl_ser.data.emotion_dataset.utterance_key`);
* its **audio digest**: the SHA-256 of the audio file's bytes (its first 16 hex digits, 64
  bits: a chance collision among 10^5 training and 10^5 scored files has a probability of
  about 5e-10), plus the segment and channel. Bytes, not decoded samples: a byte-identical
  copy anywhere is caught without decoding; the same recording re-encoded or resampled is not.

A run's fold yields both (its corpus is read again from the checkpoint's ``datarc``); an
exported model directory records the digests only (``training_audio`` in ``config.json``,
:func:`training_audio_record`), since it records no path of the machine it was exported on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3prl_ser.data.emotion_dataset import utterance_key
from s3prl_ser.data.folds import resolve_fold
from s3prl_ser.fileio import safe_torch_load, sha256_file

__all__ = [
    "DIGEST_RULE",
    "RECORD_KEY",
    "file_digest",
    "digest_key",
    "path_key",
    "TrainingAudio",
    "checkpoint_training_audio",
    "training_audio_record",
]

logger = logging.getLogger(__name__)

DIGEST_RULE = "sha256 of the audio file's bytes (first 16 hex digits), plus the item's segment and channel"
RECORD_KEY = "training_audio"  # in an exported model's config.json
_DIGITS = 16
_digests: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime) -> digest: each file read once


def file_digest(path: str | os.PathLike) -> str:
    """The first 16 hex digits of the SHA-256 of the file's bytes (read once per process and version of the file).

    Raises:
        FileNotFoundError: no such file.
    """
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        _digests[key] = sha256_file(real)[:_DIGITS]
    return _digests[key]


def digest_key(root: str | os.PathLike, item: dict) -> str:
    """An item's audio digest key: :func:`file_digest` of ``root / path``, its segment and channel."""
    return utterance_key({**item, "path": file_digest(Path(root) / item["path"])})


def path_key(root: str | os.PathLike, item: dict) -> str:
    """An item's resolved-path key: ``realpath(root / path)``, its segment and channel.

    Example:
        >>> path_key("/corpus/a/..", {"path": "b.wav", "start": 1.0, "end": 2.5})
        '/corpus/b.wav@1-2.5'
    """
    return utterance_key({**item, "path": os.path.realpath(Path(root) / item["path"])})


@dataclass(frozen=True)
class TrainingAudio:
    """The keys of the audio a model learnt from (train and dev lists).

    Attributes:
        corpus: the training corpus's name.
        digests: :func:`digest_key` of every training utterance.
        paths: :func:`path_key` of every training utterance; None when not known (a model
            directory records digests only).
        utterances: how many utterances the model learnt from.

    Example:
        >>> audio = TrainingAudio("toy", frozenset({"ab12"}), None, 1)
        >>> TrainingAudio.from_record(audio.to_record()) == audio
        True
    """

    corpus: str
    digests: frozenset[str]
    paths: frozenset[str] | None
    utterances: int

    def to_record(self) -> dict[str, Any]:
        """What an export records (digests only, sorted)."""
        return {
            "rule": DIGEST_RULE,
            "corpus": self.corpus,
            "utterances": self.utterances,
            "digests": sorted(self.digests),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TrainingAudio:
        """The inverse of :meth:`to_record`.

        Raises:
            ValueError: a record of another rule, or without digests.
        """
        if record.get("rule") != DIGEST_RULE or not isinstance(record.get("digests"), list):
            raise ValueError(f"a training-audio record of another kind: {str(record)[:200]}")
        return cls(str(record.get("corpus")), frozenset(record["digests"]), None, int(record.get("utterances", 0)))

    @classmethod
    def union(cls, parts: Sequence[TrainingAudio]) -> TrainingAudio:
        """Everything several models (an ensemble's members) learnt from."""
        paths = None if any(p.paths is None for p in parts) else frozenset().union(*(p.paths for p in parts))
        digests = frozenset().union(*(p.digests for p in parts))
        return cls(parts[0].corpus, digests, paths, len(digests))


def _fold_items(datarc: dict[str, Any], fold: str) -> tuple[str, Path, Iterable[dict]]:
    from s3prl_ser.data.fold_data import load_fold_data

    data = load_fold_data(datarc, fold, read_audio=False)
    items = [*data.train.items, *data.dev.items]  # dev selected the checkpoints: learnt from too
    return data.protocol.corpus_name or "unknown", Path(datarc["root"]), items


def checkpoint_training_audio(ckpt_path: str | os.PathLike) -> TrainingAudio:
    """The training audio of a runner checkpoint (``dev-avg.ckpt``): its fold's train and dev
    lists (for a deployment run: its pool), read again through its ``datarc``.

    Raises:
        FileNotFoundError: the corpus is not where the run read it (named).
        ValueError: the checkpoint records no run config, or the lists are malformed.
    """
    ckpt = safe_torch_load(ckpt_path, mmap=True)
    if "Config" not in ckpt or "Args" not in ckpt:
        raise ValueError(f"{ckpt_path}: not a runner checkpoint (no Config and Args)")
    args = ckpt["Args"]
    datarc = dict(ckpt["Config"]["downstream_expert"]["datarc"])
    fold = resolve_fold(datarc.get("test_fold"), getattr(args, "downstream_variant", None))
    corpus, root, items = _fold_items(datarc, fold)
    items = list(items)
    return TrainingAudio(
        corpus,
        frozenset(digest_key(root, item) for item in items),
        frozenset(path_key(root, item) for item in items),
        len(items),
    )


def training_audio_record(checkpoints: Sequence[str | os.PathLike]) -> dict[str, Any] | None:
    """The ``training_audio`` record of a model exported from ``checkpoints`` (one per member),
    or None with a warning when a member's corpus cannot be read here (the scorer then refuses
    the model: nothing shows what it learnt from)."""
    try:
        return TrainingAudio.union([checkpoint_training_audio(path) for path in checkpoints]).to_record()
    except (FileNotFoundError, ValueError) as error:
        logger.warning("no record of the training audio (cross-corpus scoring will refuse this model): %s", error)
        return None
