"""Hub entries for fine-tuned and averaged upstreams (``hubert_ft_avg``, ...) and the fold guard.

``python -m upstream_ft -u hubert -p FT_DIR`` writes one upstream per fold::

    FT_DIR/<fold>/upstream.ckpt    s3prl converted checkpoint (hubert_local / wav2vec2_local)
    FT_DIR/<fold>/upstream.json    human-readable metadata: base upstream, dev selection, test, ...

``<base>_ft_avg(ckpt=FT_DIR, fold=FOLD)`` loads ``FT_DIR/FOLD/upstream.ckpt`` (``ckpt`` may also
be the file itself) through the loader the checkpoint names.

**The fold guard.** Every checkpoint stage 1 writes (states, dev-top, export; for text, the
exported encoder's ``config.json``) carries the :class:`~s3prl_ser.data.protocol.FoldProtocol`
it was trained under, under :data:`PROTOCOL_KEY`. Before a checkpoint is used for a fold,
:func:`check_fine_tuned` compares that record with the fold (and, where the caller knows them,
the corpus and the split) it is about to be trained or evaluated on: another fold would leak
that fold's test session, another split or corpus would leak dev utterances. A checkpoint
that claims to be fine-tuned (it carries a fine-tuning head, or an ``upstream.json`` lies
beside it) but records no protocol is refused too. Files without either (pretrained
weights) pass. The guard reads the checkpoint itself, so copying ``upstream.ckpt`` without its
``upstream.json`` keeps it.

Wiring into a runner is one call, with the fold (or its full protocol) being trained or evaluated::

    upstream = getattr(s3prl.hub, name)(ckpt=args.upstream_ckpt, fold=protocol)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from s3prl_ser.compat import safe_torch_load
from s3prl_ser.data.folds import DEPLOY_FOLD, check_run_fold, is_deployment
from s3prl_ser.data.protocol import FoldProtocol, ProtocolMismatchError, protocol_differences

__all__ = [
    "FT_CHECKPOINT",
    "FT_METADATA",
    "FT_SUFFIX",
    "LOADER_KEY",
    "PROTOCOL_KEY",
    "FoldMismatchError",
    "FoldSpec",
    "STAGE2_PROTOCOL_KEY",
    "recorded_protocol",
    "check_protocol_record",
    "check_fine_tuned",
    "is_ft_avg_entry",
    "read_ft_metadata",
    "resolve_ft_checkpoint",
    "resolve_ft_text_encoder",
    "make_ft_avg_entry",
    "register_ft_avg_entries",
    "hubert_ft_avg",
    "wav2vec2_ft_avg",
]

FT_CHECKPOINT = "upstream.ckpt"
FT_METADATA = "upstream.json"
FT_SUFFIX = "_ft_avg"
PROTOCOL_KEY = "ser_protocol"  # in checkpoints and in an exported text encoder's config.json
LOADER_KEY = "ft_loader"  # the hub entry that loads an exported upstream.ckpt
STAGE2_PROTOCOL_KEY = "FoldProtocol"  # what a stage-2 runner checkpoint records (the same record)

FoldSpec = str | FoldProtocol
"""What a consumer states about its data: the fold alone, or its full protocol."""


class FoldMismatchError(ProtocolMismatchError):
    """A fine-tuned upstream was requested for a fold other than the one it was fine-tuned for,
    or it claims to be fine-tuned but records no fold."""


def is_ft_avg_entry(name: str) -> bool:
    """Whether ``name`` is a ``<base>_ft_avg`` entry (which needs the fold when called)."""
    return name.endswith(FT_SUFFIX) and len(name) > len(FT_SUFFIX)


def _fold_name(fold: FoldSpec) -> str:
    return check_run_fold(fold.fold if isinstance(fold, FoldProtocol) else fold)


def read_ft_metadata(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The ``upstream.json`` beside an exported ``upstream.ckpt`` (for its human-readable fields).

    Raises:
        FileNotFoundError: no metadata beside the checkpoint.
    """
    path = Path(checkpoint).with_name(FT_METADATA)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {checkpoint} is not an export of `python -m upstream_ft`")
    return json.loads(path.read_text(encoding="utf-8"))


def _checkpoint_fields(path: Path) -> dict[str, Any]:
    """The non-weight fields of a checkpoint file (memory-mapped: weights are not read);
    ``{}`` for a file that is not a weights-only torch checkpoint (not one stage 1 wrote)."""
    try:
        state = safe_torch_load(path, mmap=True)
    except (RuntimeError, OSError):
        return {}
    if not isinstance(state, dict):
        return {}
    fields = {key: state[key] for key in (PROTOCOL_KEY, LOADER_KEY, "ft_head") if key in state}
    if PROTOCOL_KEY not in fields and isinstance(state.get(STAGE2_PROTOCOL_KEY), dict):
        fields[PROTOCOL_KEY] = state[STAGE2_PROTOCOL_KEY]  # a stage-2 model given as -k: guarded the same way
    return fields


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
    fold_name = _fold_name(fold)
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
    """The fold guard on a recorded :class:`~s3prl_ser.data.protocol.FoldProtocol` (a checkpoint's,
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
        s3prl_ser.hub.ft_hub.FoldMismatchError: m is a deployment model ...
    """
    if fold is None:
        return
    fold_name = _fold_name(fold)
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


def resolve_ft_checkpoint(ckpt: str | os.PathLike | None, fold: FoldSpec | None) -> Path:
    """The exported checkpoint for ``fold``, after the fold guard (:func:`check_fine_tuned`).

    Args:
        ckpt: FT_DIR (the ``-p`` of ``python -m upstream_ft``), or an ``upstream.ckpt`` file.
        fold: the fold whose test session the caller evaluates on, e.g. ``fold1``, or its protocol.

    Raises:
        ValueError: ``ckpt`` or ``fold`` is missing.
        FileNotFoundError: no export for ``fold`` (the message lists the folds exported).
        FoldMismatchError: the checkpoint was fine-tuned for another fold, or records none.
        ProtocolMismatchError: fine-tuned on another corpus or split.
    """
    if ckpt is None:
        raise ValueError("a fine-tuned upstream needs -k FT_DIR: the directory `python -m upstream_ft -p FT_DIR` wrote")
    if fold is None:
        raise ValueError(
            f"loading the fine-tuned upstream in {ckpt} needs the fold being trained or evaluated "
            "(fold=...): each fold has its own upstream, fine-tuned without that fold's test session"
        )
    fold_name = _fold_name(fold)
    if is_deployment(fold_name):
        raise ValueError(
            f"a deployment run cannot use the per-fold fine-tuned upstreams in {ckpt}: each was fine-tuned "
            "without one fold's data, and stage 1 has no deployment run; train the deployment model on a "
            "pretrained upstream"
        )
    ckpt = Path(ckpt)
    path = ckpt / fold_name / FT_CHECKPOINT if ckpt.is_dir() else ckpt
    if not path.is_file():
        exported = sorted(p.parent.name for p in ckpt.glob(f"*/{FT_CHECKPOINT}")) if ckpt.is_dir() else []
        raise FileNotFoundError(
            f"no fine-tuned upstream for {fold_name}: {path} does not exist (exported folds: "
            f"{', '.join(exported) or 'none'}); run `python -m upstream_ft -u BASE -p {ckpt} --folds {fold_name}`"
        )
    if not recorded_protocol(path)[1]:
        raise FoldMismatchError(f"{path} is not an export of `python -m upstream_ft`: it records no fold")
    check_fine_tuned(path, fold)
    return path


def resolve_ft_text_encoder(path: str | os.PathLike, fold: FoldSpec) -> Path:
    """The text encoder directory to use for ``fold``.

    ``path`` is either a plain Hugging Face encoder directory (used as is: not fine-tuned on
    IEMOCAP, so no fold to check), or the FT_DIR of ``python -m upstream_ft -u text`` (or one
    fold's directory in it), whose ``<fold>/text_encoder`` is returned after the fold guard.

    Raises:
        FoldMismatchError: the export was fine-tuned for another fold, or records none.
        ProtocolMismatchError: fine-tuned on another corpus or split.
        ValueError: the export is a speech upstream.
        FileNotFoundError: neither an encoder directory nor an export for ``fold``.
    """
    fold_name = _fold_name(fold)
    path = Path(path)
    export = path / fold_name if (path / fold_name / FT_METADATA).is_file() else path
    if (export / FT_METADATA).is_file():
        metadata = read_ft_metadata(export / FT_CHECKPOINT)
        if metadata.get("modality") != "text":
            raise ValueError(
                f"{export / FT_METADATA} describes a fine-tuned {metadata.get('modality', 'speech')} upstream "
                f"({metadata.get('base_upstream', '?')}), not a text encoder; give the FT_DIR of "
                "`python -m upstream_ft -u text`"
            )
        check_fine_tuned(export / "text_encoder", fold)
        return export / "text_encoder"
    if (path / "config.json").is_file():
        check_fine_tuned(path, fold)  # FT_DIR/<fold>/text_encoder given directly, or a plain encoder
        return path
    exported = sorted(p.parent.name for p in path.glob(f"*/{FT_METADATA}")) if path.is_dir() else []
    raise FileNotFoundError(
        f"no text encoder for {fold_name} at {path}: neither a Hugging Face encoder directory nor an "
        f"upstream_ft export for {fold_name} (exported folds: {', '.join(exported) or 'none'})"
    )


def make_ft_avg_entry(base: str) -> Callable[..., Any]:
    """The hub entry ``<base>_ft_avg``: fold-checked loading through ``<base>_local``.

    Raises:
        ValueError: s3prl has no ``<base>_local`` entry to load the export with.
    """
    import s3prl.hub as hub

    loader = f"{base}_local"
    if not callable(getattr(hub, loader, None)):
        raise ValueError(f"cannot make {base}{FT_SUFFIX}: s3prl has no {loader} entry to load its exports")

    def entry(ckpt: str | None = None, fold: FoldSpec | None = None, **kwargs: Any) -> Any:
        path = resolve_ft_checkpoint(ckpt, fold)
        recorded = _checkpoint_fields(path).get(LOADER_KEY)
        if recorded != loader:
            raise ValueError(
                f"{path} holds a fine-tuned upstream loaded by {recorded}, not a {base} upstream; "
                f"use -u {str(recorded).removesuffix('_local')}{FT_SUFFIX}"
            )
        return getattr(hub, loader)(ckpt=str(path), **kwargs)

    entry.__name__ = entry.__qualname__ = f"{base}{FT_SUFFIX}"
    entry.__doc__ = (
        f"{base} fine-tuned per fold and averaged (``python -m upstream_ft``): "
        f"``ckpt`` = FT_DIR or an upstream.ckpt, ``fold`` = the fold evaluated; loads with {loader}."
    )
    return entry


def register_ft_avg_entries(names: Iterable[str] = ("hubert", "wav2vec2")) -> list[str]:
    """Add ``<name>_ft_avg`` to ``s3prl.hub`` for each base name (idempotent); return the entry names.

    ``getattr(s3prl.hub, "hubert_ft_avg")`` and ``s3prl.hub.options()`` then see them.
    """
    import s3prl.hub as hub

    registered = []
    for base in names:
        entry = make_ft_avg_entry(base)
        setattr(hub, entry.__name__, entry)
        registered.append(entry.__name__)
    return registered


def hubert_ft_avg(ckpt: str | None = None, fold: FoldSpec | None = None, **kwargs: Any) -> Any:
    """HuBERT fine-tuned for ``fold`` and averaged: ``ckpt`` = FT_DIR or its ``<fold>/upstream.ckpt``."""
    return make_ft_avg_entry("hubert")(ckpt, fold, **kwargs)


def wav2vec2_ft_avg(ckpt: str | None = None, fold: FoldSpec | None = None, **kwargs: Any) -> Any:
    """wav2vec 2.0 fine-tuned for ``fold`` and averaged: ``ckpt`` = FT_DIR or its ``<fold>/upstream.ckpt``."""
    return make_ft_avg_entry("wav2vec2")(ckpt, fold, **kwargs)
