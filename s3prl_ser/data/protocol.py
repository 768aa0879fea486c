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

**The fold guard** (the block at the end of this module). Every checkpoint stage 1 writes
(states, dev-top, export; for text, the exported encoder's ``config.json``), every stage-2
runner checkpoint and an exported model's ``config.json`` carry this record under one key,
:data:`PROTOCOL_KEY` (:func:`checkpoint_protocol` reads it).
Before a checkpoint is used for a fold, :func:`check_fine_tuned` compares that record with the
fold (and, where the caller knows them, the corpus and the split) it is about to be trained or
evaluated on: another fold would leak that fold's test session, another split or corpus would
leak dev utterances. A checkpoint that claims to be fine-tuned (it carries a fine-tuning head,
or a stage-1 ``upstream.json`` lies beside it) but records no protocol is refused too. Files
without either (pretrained weights) pass. The guard reads the checkpoint itself, so copying
``upstream.ckpt`` without its ``upstream.json`` keeps it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from s3prl_ser.data.folds import DEPLOY_FOLD, check_run_fold, is_deployment
from s3prl_ser.fileio import safe_torch_load

__all__ = [
    "FoldProtocol",
    "ProtocolMismatchError",
    "digest",
    "protocol_differences",
    "PROTOCOL_KEY",
    "checkpoint_protocol",
    "FT_METADATA",
    "FoldSpec",
    "FoldMismatchError",
    "fold_of",
    "recorded_protocol",
    "check_fine_tuned",
    "check_protocol_record",
]


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
            every fold, :func:`check_protocol_record`).
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


# ---------------------------------------------------------------- the fold guard

PROTOCOL_KEY = "ser_protocol"  # in stage-1 and stage-2 checkpoints and in exported models' config.json
_RUNNER_KEY_READ_ONLY = "FoldProtocol"  # where older stage-2 runner checkpoints keep it: read, never written
FT_METADATA = "upstream.json"  # a stage-1 export's metadata: beside a file, it marks it fine-tuned

FoldSpec = str | FoldProtocol
"""What a consumer states about its data: the fold alone, or its full protocol."""


class FoldMismatchError(ProtocolMismatchError):
    """A fine-tuned upstream was requested for a fold other than the one it was fine-tuned for,
    or it claims to be fine-tuned but records no fold."""


def fold_of(fold: FoldSpec) -> str:
    """The fold named by ``fold`` (a fold name or a protocol), checked.

    Example:
        >>> fold_of("fold2")
        'fold2'
    """
    return check_run_fold(fold.fold if isinstance(fold, FoldProtocol) else fold)


def _checkpoint_fields(path: Path) -> dict[str, Any]:
    """The non-weight fields of a checkpoint file (memory-mapped: weights are not read);
    ``{}`` for a file that is not a weights-only torch checkpoint (not one stage 1 wrote)."""
    try:
        state = safe_torch_load(path, mmap=True)
    except (RuntimeError, OSError):
        return {}
    if not isinstance(state, dict):
        return {}
    fields = {key: state[key] for key in ("ft_head",) if key in state}
    record = checkpoint_protocol(state)
    if record is not None:  # a stage-2 model given as -k: guarded the same way
        fields[PROTOCOL_KEY] = record
    return fields


def checkpoint_protocol(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The protocol record a loaded checkpoint holds (:data:`PROTOCOL_KEY`; an older runner
    checkpoint's ``FoldProtocol``), or None.

    Example:
        >>> checkpoint_protocol({PROTOCOL_KEY: {"fold": "fold2"}}), checkpoint_protocol({"FoldProtocol": {"fold": "fold3"}})
        ({'fold': 'fold2'}, {'fold': 'fold3'})
        >>> checkpoint_protocol({"Downstream": {}}) is None
        True
    """
    for key in (PROTOCOL_KEY, _RUNNER_KEY_READ_ONLY):
        if isinstance(state.get(key), dict):
            return state[key]
    return None


def _model_dir_record(directory: Path) -> dict[str, Any] | None:
    """The protocol a model directory's ``config.json`` records (``python -m s3prl_ser.export``), if any."""
    config = directory / "config.json"
    try:
        fields = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    except ValueError:
        return None
    record = fields.get(PROTOCOL_KEY) if isinstance(fields, dict) else None
    return record if isinstance(record, dict) else None


def recorded_protocol(path: str | os.PathLike) -> tuple[dict[str, Any] | None, bool]:
    """The fold protocol recorded in a checkpoint file or an exported text encoder directory,
    and whether the path claims to be fine-tuned (a fine-tuning head, a recorded protocol, or
    an ``upstream.json`` beside it).

    Example:
        >>> recorded_protocol("pretrained-weights-that-do-not-exist.pt")
        (None, False)
    """
    path = Path(path)
    sidecars = [path.parent / FT_METADATA] + ([path / FT_METADATA] if path.is_dir() else [])
    beside = any(p.is_file() for p in sidecars)
    if path.is_dir():
        record = _model_dir_record(path)
        return record, beside or record is not None
    fields = _checkpoint_fields(path) if path.is_file() else {}
    # A file of an exported model directory (model.safetensors, model.onnx): its config.json says.
    record = fields.get(PROTOCOL_KEY) or _model_dir_record(path.parent)
    return record, beside or record is not None or "ft_head" in fields


def check_fine_tuned(path: str | os.PathLike, fold: FoldSpec | None) -> None:
    """The fold guard for a checkpoint file or encoder directory about to serve ``fold``.

    Args:
        path: an upstream checkpoint (``-k``) or a text encoder directory.
        fold: the fold being trained or evaluated, or its full protocol (then the corpus and
            the split are compared too); ``None`` (inference: no test set) checks nothing.

    A deployment model (its exported directory, a file in it, or its run's checkpoints, which
    record the fold ``deploy``) is refused for every fold (:func:`check_protocol_record`).

    Raises:
        FoldMismatchError: fine-tuned for another fold, fine-tuned without a record, or a
            deployment model.
        ProtocolMismatchError: fine-tuned on other meta data or another train/dev split.
    """
    if fold is None:
        return
    fold_name = fold_of(fold)
    record, fine_tuned = recorded_protocol(path)
    if record is None:
        if fine_tuned:
            raise FoldMismatchError(
                f"{path} is a fine-tuned checkpoint (upstream_ft head or metadata) that records no fold: it may "
                f"have been trained on {fold_name}'s test session; re-export it with this version of "
                "`python -m upstream_ft`"
            )
        return
    check_protocol_record(record, fold, path)


def check_protocol_record(record: dict[str, Any], fold: FoldSpec | None, where: str | os.PathLike) -> None:
    """The fold guard on a recorded :class:`FoldProtocol` (a checkpoint's,
    a model directory's) about to serve ``fold``; ``where`` names its file in messages.

    A deployment model (recorded fold ``deploy``) trained on every fold's utterances, test sets
    included: it is refused for every fold, whatever the rest of the record says.

    Raises:
        FoldMismatchError: recorded for another fold, or a deployment model used for a fold.
        ProtocolMismatchError: ``fold`` is a full protocol and the record's corpus or split differ.

    Example:
        >>> check_protocol_record({"fold": "deploy"}, "deploy", "m")  # a deployment run may read one
        >>> check_protocol_record({"fold": "deploy"}, "fold1", "m")
        Traceback (most recent call last):
        ...
        s3prl_ser.data.protocol.FoldMismatchError: m is a deployment model ...
    """
    if fold is None:
        return
    fold_name = fold_of(fold)
    trained_for = record.get("fold")
    if is_deployment(trained_for) and not is_deployment(fold_name):
        raise FoldMismatchError(
            f"{where} is a deployment model (fold {DEPLOY_FOLD}): it was trained on every fold's utterances, "
            f"{fold_name}'s test set included, and has no held-out score. It cannot serve {fold_name} or any "
            "cross-validation fold (as -k, text encoder, -i/-e or starting point): scores would be leaked; "
            "use it for inference only"
        )
    if is_deployment(fold_name) and not is_deployment(trained_for):
        raise FoldMismatchError(
            f"{where} was trained for {trained_for}, without that fold's data: a deployment run (every fold's "
            "utterances) cannot use it, and stage 1 has no deployment run; train it on a pretrained upstream"
        )
    if trained_for != fold_name:
        raise FoldMismatchError(
            f"{where} was fine-tuned for {trained_for} (its training data include the test session of "
            f"{fold_name}), but it was requested for {fold_name}: using it would leak {fold_name}'s test set "
            f"into training; use the export fine-tuned for {fold_name} (FT_DIR/{fold_name}/)"
        )
    if isinstance(fold, FoldProtocol):
        differences = protocol_differences(record, fold)
        if differences:
            raise ProtocolMismatchError(
                f"{where} was fine-tuned for {fold_name} on other data than this run's {fold_name}: "
                + "; ".join(differences)
                + ". Its training utterances may be in this run's dev set; use the same meta data and split "
                "(datarc.split, valid_ratio, dev_session) in both stages"
            )
