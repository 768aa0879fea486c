"""Build an s3prl upstream by hub name, with the test fold for per-fold fine-tuned entries."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from types import ModuleType

from torch import nn

from s3prl_ser.data.protocol import FoldSpec, check_fine_tuned
from s3prl_ser.evaluated_strings import check_feature_config
from s3prl_ser.finetuning.hub_entries import is_ft_avg_entry

__all__ = ["build_upstream"]


def _is_entry(hub: ModuleType, name: str) -> bool:
    """Whether ``name`` is a hub entry: a function of an s3prl hubconf or this project's
    ``*_ft_avg``. ``s3prl.hub`` also holds what those modules import (``Path``, ``FileLock``, ...)."""
    if not name.isidentifier() or name.startswith("_"):
        return False
    entry = getattr(hub, name, None)
    return callable(entry) and (getattr(entry, "__module__", "").endswith(".hubconf") or is_ft_avg_entry(name))


def build_upstream(
    name: str,
    ckpt: str | None = None,
    model_config: str | None = None,
    refresh: bool = False,
    fold: FoldSpec | None = None,
) -> nn.Module:
    """``s3prl.hub.<name>(ckpt=..., model_config=..., refresh=...)``.

    ``fold`` is the fold being trained or evaluated, or its full
    :class:`~s3prl_ser.data.protocol.FoldProtocol`. ``<base>_ft_avg`` entries get it and check
    it against what their upstream was fine-tuned on; any other entry given a checkpoint
    (``ckpt``) gets the same check (:func:`~s3prl_ser.data.protocol.check_fine_tuned`).

    Raises:
        ValueError: ``name`` is not an s3prl hub entry (the closest names are suggested), or
            the entry cannot load ``ckpt`` (a file of another kind; the cause is quoted).
        UnsafeConfigError: ``model_config`` is no plain YAML or names another kaldi feature
            than s3prl's baseline extractor computes (it evaluates that name).
        FileNotFoundError: ``ckpt`` is a path (not an ``http`` URL) that does not exist.
        FoldMismatchError: ``ckpt`` was fine-tuned for a fold other than ``fold``, or records none.
        ProtocolMismatchError: ``ckpt`` was fine-tuned on another corpus or train/dev split.
    """
    from s3prl import hub

    entry = getattr(hub, name, None) if _is_entry(hub, name) else None
    if entry is None:
        close = difflib.get_close_matches(name, [n for n in hub.options() if _is_entry(hub, n)], n=3)
        raise ValueError(f"unknown upstream {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    if ckpt is not None and not ckpt.startswith("http") and not os.path.exists(ckpt):
        raise FileNotFoundError(f"-k {ckpt}: checkpoint of upstream {name!r} not found")
    if model_config is not None and os.path.isfile(model_config):
        check_feature_config(Path(model_config).read_text(encoding="utf-8"), model_config)
    kwargs = dict(ckpt=ckpt, model_config=model_config, refresh=refresh)
    if is_ft_avg_entry(name):
        kwargs["fold"] = fold
    elif ckpt is not None:
        check_fine_tuned(ckpt, fold)
    try:
        return entry(**kwargs)
    except (ValueError, OSError):  # this project's and the OS's errors already name the file
        raise
    except Exception as error:
        if ckpt is None:
            raise
        # s3prl's loaders fail on a file of another kind with whatever unpickling or lookup
        # error comes first (KeyError: 101, AssertionError, ...), naming neither file nor entry.
        raise ValueError(
            f"upstream {name!r} cannot load -k {ckpt} ({type(error).__name__}: {error}): "
            "is it a checkpoint of that upstream?"
        ) from error
