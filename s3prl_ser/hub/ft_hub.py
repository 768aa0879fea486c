"""Hub entries for fine-tuned and averaged upstreams: ``hubert_ft_avg``, ``wav2vec2_ft_avg``, ...

``python -m upstream_ft -u hubert -p FT_DIR`` writes one upstream per fold::

    FT_DIR/<fold>/upstream.ckpt    s3prl converted checkpoint (hubert_local / wav2vec2_local)
    FT_DIR/<fold>/upstream.json    metadata: base upstream, fold, loader, dev selection, ...

``<base>_ft_avg(ckpt=FT_DIR, fold=FOLD)`` loads ``FT_DIR/FOLD/upstream.ckpt`` through the
loader named in the metadata (``ckpt`` may also be the ``upstream.ckpt`` file itself). Each
fold's upstream was fine-tuned on that fold's training sessions only; using it for another
fold's test session would evaluate on utterances it was trained on, so a fold that differs
from the metadata's raises :class:`FoldMismatchError`, and the fold must always be given.

Wiring into a runner is one call, with the fold being trained or evaluated::

    upstream = getattr(s3prl.hub, name)(ckpt=args.upstream_ckpt, fold=test_fold, **kwargs)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "FT_CHECKPOINT",
    "FT_METADATA",
    "FT_SUFFIX",
    "FoldMismatchError",
    "check_export_fold",
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


class FoldMismatchError(ValueError):
    """A fine-tuned upstream was requested for a fold other than the one it was fine-tuned for."""


def is_ft_avg_entry(name: str) -> bool:
    """Whether ``name`` is a ``<base>_ft_avg`` entry (which needs the fold when called)."""
    return name.endswith(FT_SUFFIX) and len(name) > len(FT_SUFFIX)


def read_ft_metadata(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The ``upstream.json`` beside an exported ``upstream.ckpt``.

    Raises:
        FileNotFoundError: no metadata beside the checkpoint.
        ValueError: the metadata lacks ``fold`` or ``loader``.
    """
    path = Path(checkpoint).with_name(FT_METADATA)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {checkpoint} is not an export of `python -m upstream_ft` "
            "(its metadata names the fold and the loader)"
        )
    metadata = json.loads(path.read_text(encoding="utf-8"))
    missing = [key for key in ("fold", "loader") if key not in metadata]
    if missing:
        raise ValueError(f"{path}: metadata lacks {', '.join(missing)}")
    return metadata


def resolve_ft_checkpoint(ckpt: str | os.PathLike | None, fold: str | None) -> Path:
    """The exported checkpoint for ``fold``, after checking it was fine-tuned for that fold.

    Args:
        ckpt: FT_DIR (the ``-p`` of ``python -m upstream_ft``), or an ``upstream.ckpt`` file.
        fold: the fold whose test session the caller evaluates on, e.g. ``fold1``.

    Raises:
        ValueError: ``ckpt`` or ``fold`` is missing.
        FileNotFoundError: no export for ``fold`` (the message lists the folds exported).
        FoldMismatchError: the checkpoint was fine-tuned for another fold.
    """
    from s3prl_ser.data.folds import check_fold

    if ckpt is None:
        raise ValueError("a fine-tuned upstream needs -k FT_DIR: the directory `python -m upstream_ft -p FT_DIR` wrote")
    if fold is None:
        raise ValueError(
            f"loading the fine-tuned upstream in {ckpt} needs the fold being trained or evaluated "
            "(fold=...): each fold has its own upstream, fine-tuned without that fold's test session"
        )
    check_fold(fold)
    ckpt = Path(ckpt)
    path = ckpt / fold / FT_CHECKPOINT if ckpt.is_dir() else ckpt
    if not path.is_file():
        exported = sorted(p.parent.name for p in ckpt.glob(f"*/{FT_CHECKPOINT}")) if ckpt.is_dir() else []
        raise FileNotFoundError(
            f"no fine-tuned upstream for {fold}: {path} does not exist (exported folds: "
            f"{', '.join(exported) or 'none'}); run `python -m upstream_ft -u BASE -p {ckpt} --folds {fold}`"
        )
    _refuse_other_fold(path, read_ft_metadata(path)["fold"], fold)
    return path


def _refuse_other_fold(path: Path, trained_for: str, fold: str) -> None:
    if trained_for != fold:
        raise FoldMismatchError(
            f"{path} was fine-tuned for {trained_for} (its training data include the test session of "
            f"{fold}), but it was requested for {fold}: using it would leak {fold}'s test set into "
            f"training; use the export fine-tuned for {fold} (FT_DIR/{fold}/)"
        )


def check_export_fold(path: str | os.PathLike, fold: str | None) -> None:
    """Apply the fold guard to a checkpoint or encoder directory given by path (``-k``).

    ``hubert_local -k FT_DIR/fold3/upstream.ckpt`` or a text stream pointed at
    ``FT_DIR/fold3/text_encoder`` bypass the ``*_ft_avg`` entries, so an ``upstream.json``
    beside ``path`` (or, for a directory, inside it) is checked here. Paths without one
    (pretrained weights) and ``fold=None`` (inference, no test set) pass.

    Raises:
        FoldMismatchError: the export was fine-tuned for another fold.
    """
    if fold is None:
        return
    path = Path(path)
    candidates = [path.parent / FT_METADATA] + ([path / FT_METADATA] if path.is_dir() else [])
    for metadata in filter(Path.is_file, candidates):
        trained_for = json.loads(metadata.read_text(encoding="utf-8")).get("fold")
        if trained_for is not None:
            _refuse_other_fold(path, trained_for, fold)


def resolve_ft_text_encoder(path: str | os.PathLike, fold: str) -> Path:
    """The text encoder directory to use for ``fold``.

    ``path`` is either a plain Hugging Face encoder directory (used as is: not fine-tuned on
    IEMOCAP, so no fold to check), or the FT_DIR of ``python -m upstream_ft -u text`` (or one
    fold's directory in it), whose ``<fold>/text_encoder`` is returned after the fold guard of
    :func:`resolve_ft_checkpoint`.

    Raises:
        FoldMismatchError: the export was fine-tuned for another fold.
        ValueError: the export is a speech upstream.
        FileNotFoundError: neither an encoder directory nor an export for ``fold``.
    """
    from s3prl_ser.data.folds import check_fold

    check_fold(fold)
    path = Path(path)
    export = path / fold if (path / fold / FT_METADATA).is_file() else path
    if (export / FT_METADATA).is_file():
        metadata = read_ft_metadata(export / FT_CHECKPOINT)
        if metadata.get("modality") != "text":
            raise ValueError(
                f"{export / FT_METADATA} describes a fine-tuned {metadata.get('modality', 'speech')} upstream "
                f"({metadata.get('base_upstream', '?')}), not a text encoder; give the FT_DIR of "
                "`python -m upstream_ft -u text`"
            )
        _refuse_other_fold(export, metadata["fold"], fold)
        return export / "text_encoder"
    if (path / "config.json").is_file():
        check_export_fold(path, fold)  # FT_DIR/<fold>/text_encoder given directly
        return path
    exported = sorted(p.parent.name for p in path.glob(f"*/{FT_METADATA}")) if path.is_dir() else []
    raise FileNotFoundError(
        f"no text encoder for {fold} at {path}: neither a Hugging Face encoder directory nor an "
        f"upstream_ft export for {fold} (exported folds: {', '.join(exported) or 'none'})"
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

    def entry(ckpt: str | None = None, fold: str | None = None, **kwargs: Any) -> Any:
        path = resolve_ft_checkpoint(ckpt, fold)
        metadata = read_ft_metadata(path)
        if metadata["loader"] != loader:
            raise ValueError(
                f"{path} holds a fine-tuned {metadata.get('base_upstream', '?')} loaded by "
                f"{metadata['loader']}, not a {base} upstream; use -u {metadata['loader'].removesuffix('_local')}{FT_SUFFIX}"
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


def hubert_ft_avg(ckpt: str | None = None, fold: str | None = None, **kwargs: Any) -> Any:
    """HuBERT fine-tuned for ``fold`` and averaged: ``ckpt`` = FT_DIR or its ``<fold>/upstream.ckpt``."""
    return make_ft_avg_entry("hubert")(ckpt, fold, **kwargs)


def wav2vec2_ft_avg(ckpt: str | None = None, fold: str | None = None, **kwargs: Any) -> Any:
    """wav2vec 2.0 fine-tuned for ``fold`` and averaged: ``ckpt`` = FT_DIR or its ``<fold>/upstream.ckpt``."""
    return make_ft_avg_entry("wav2vec2")(ckpt, fold, **kwargs)
