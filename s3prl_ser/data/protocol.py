"""The identity of a fold's data: which corpus, which test session, which train/dev split.

Stage 1 writes this record into every checkpoint it produces, and every later consumer of
those checkpoints (stage 2, another stage-1 run started from them) compares it with its own:
an upstream fine-tuned on other utterances than the ones the consumer keeps out of training
(another fold's test session, another dev set, other meta data) would leak them.

The record holds digests, not utterance lists: ``corpus`` over the fold's (path, label) pairs
(order-free, so the same meta data in another file order is the same corpus) and ``dev`` over
the dev utterances' paths. ``split`` states the rule that carved dev out: its kind, the ratio
and seed of the SUPERB permutation or the held-out session, and the file order the meta data
were written in (the SUPERB permutation is of the train list's order, so the order decides
which utterances are dev).

It also names the corpus and its classes (``corpus_name``, ``class_names``, ``num_folds``,
``official_test``), so checkpoints and reports say what they were trained on; records written
before these fields existed read back with them unset.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["FoldProtocol", "ProtocolMismatchError", "digest", "protocol_differences"]


class ProtocolMismatchError(ValueError):
    """A checkpoint was trained on a corpus or split other than the one it is used with."""


def digest(lines: Iterable[str]) -> str:
    """SHA-256 (first 16 hex digits) of the sorted lines: a name for a set of strings.

    Example:
        >>> digest(["b", "a"]) == digest(["a", "b"]) != digest(["a"])
        True
    """
    return hashlib.sha256("\n".join(sorted(lines)).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class FoldProtocol:
    """What a fold's model was (or is about to be) trained and selected on.

    Attributes:
        fold: ``fold1`` .. ``fold5``; its session is the test set. ``deploy``: a deployment
            run, trained on every fold's utterances (no test set; the fold guard refuses it for
            every fold, :func:`s3prl_ser.hub.ft_hub.check_protocol_record`).
        corpus: :func:`digest` of the fold's train and test ``path<TAB>label`` lines.
        split: the dev rule: ``rule`` (``superb`` / ``speaker``), ``valid_ratio`` and
            ``seed`` (superb), ``dev_sessions`` (speaker), ``file_order`` (as the meta data
            record it; ``None`` for meta data that do not, e.g. stock s3prl's JSON).
        dev: :func:`digest` of the dev utterances' paths.
        sizes: utterances in train, dev and test (for messages).
        corpus_name: the corpus's name (``IEMOCAP``, ``RAVDESS``, ...); None in old records.
        class_names: the classes in id order; None in old records.
        num_folds: how many folds the corpus's protocol has; None in old records.
        official_test: the name of the corpus's official test set, None for cross-validation.

    Example:
        >>> p = FoldProtocol("fold1", "c0ffee", {"rule": "superb", "valid_ratio": 0.2}, "d1", {"dev": 2})
        >>> FoldProtocol.from_dict(p.to_dict()) == p
        True
        >>> protocol_differences(p.to_dict(), p)
        []
    """

    fold: str
    corpus: str
    split: dict[str, Any]
    dev: str
    sizes: dict[str, int]
    corpus_name: str | None = None
    class_names: list[str] | None = None
    num_folds: int | None = None
    official_test: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict (what checkpoints store)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> FoldProtocol:
        """The inverse of :meth:`to_dict`.

        Raises:
            ValueError: a field is missing.
        """
        missing = [name for name in ("fold", "corpus", "split", "dev", "sizes") if name not in record]
        if missing:
            raise ValueError(f"a fold protocol record lacks {', '.join(missing)}")
        names = record.get("class_names")
        return cls(
            record["fold"],
            record["corpus"],
            dict(record["split"]),
            record["dev"],
            dict(record["sizes"]),
            record.get("corpus_name"),
            list(names) if names is not None else None,
            record.get("num_folds"),
            record.get("official_test"),
        )


def protocol_differences(recorded: Mapping[str, Any], current: FoldProtocol) -> list[str]:
    """Human-readable differences that make ``recorded`` unusable with ``current``, fold excepted.

    The fold is the caller's first check (it has its own error); here: another corpus,
    another split rule or setting, or, with the same settings, another dev set (meta data in
    another file order).
    """
    found = []
    if recorded.get("corpus") != current.corpus:
        found.append(
            f"other meta data (corpus digest {recorded.get('corpus')} vs {current.corpus}): the fold's "
            "utterances or labels differ"
        )
    split = dict(recorded.get("split") or {})
    for key in sorted(set(split) | set(current.split)):
        if split.get(key) != current.split.get(key):
            found.append(f"split {key}: {split.get(key)!r} vs {current.split.get(key)!r}")
    names = recorded.get("class_names")
    if names is not None and current.class_names is not None and list(names) != list(current.class_names):
        found.append(f"classes {list(names)} vs {list(current.class_names)}")
    if not found and recorded.get("dev") != current.dev:
        found.append(f"another dev set with the same settings (dev digest {recorded.get('dev')} vs {current.dev})")
    return found
