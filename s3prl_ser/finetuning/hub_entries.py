"""Hub entries for fine-tuned and averaged upstreams (``hubert_ft_avg``, ...).

``python -m upstream_ft -u hubert -p FT_DIR`` writes one upstream per fold::

    FT_DIR/<fold>/upstream.ckpt    s3prl converted checkpoint (hubert_local / wav2vec2_local)
    FT_DIR/<fold>/upstream.json    human-readable metadata: base upstream, dev selection, test, ...

``<base>_ft_avg(ckpt=FT_DIR, fold=FOLD)`` loads ``FT_DIR/FOLD/upstream.ckpt`` (``ckpt`` may also
be the file itself) through the loader the checkpoint names, after the fold guard
(:func:`s3prl_ser.data.protocol.check_fine_tuned`). Wiring into a runner is one call, with the
fold (or its full protocol) being trained or evaluated::

    upstream = getattr(s3prl.hub, name)(ckpt=args.upstream_ckpt, fold=protocol)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from s3prl_ser.data.folds import is_deployment
from s3prl_ser.data.protocol import (
    FT_METADATA,
    FoldMismatchError,
    FoldSpec,
    check_fine_tuned,
    fold_of,
    recorded_protocol,
)
from s3prl_ser.fileio import read_json, safe_torch_load

__all__ = [
    "FT_CHECKPOINT",
    "FT_SUFFIX",
    "LOADER_KEY",
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
FT_SUFFIX = "_ft_avg"
LOADER_KEY = "ft_loader"  # the hub entry that loads an exported upstream.ckpt


def is_ft_avg_entry(name: str) -> bool:
    """Whether ``name`` is a ``<base>_ft_avg`` entry (which needs the fold when called)."""
    return name.endswith(FT_SUFFIX) and len(name) > len(FT_SUFFIX)


def read_ft_metadata(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The ``upstream.json`` beside an exported ``upstream.ckpt`` (for its human-readable fields).

    Raises:
        FileNotFoundError: no metadata beside the checkpoint.
    """
    path = Path(checkpoint).with_name(FT_METADATA)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {checkpoint} is not an export of `python -m upstream_ft`")
    return read_json(path)


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
    fold_name = fold_of(fold)
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
    fold_name = fold_of(fold)
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
        recorded = safe_torch_load(path, mmap=True).get(LOADER_KEY)  # a checkpoint dict: the guard read it
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
