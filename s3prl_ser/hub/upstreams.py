"""Build an s3prl upstream by hub name, with the test fold for per-fold fine-tuned entries."""

from __future__ import annotations

import difflib

from torch import nn

from s3prl_ser.hub.ft_hub import check_export_fold, is_ft_avg_entry

__all__ = ["build_upstream"]


def build_upstream(
    name: str,
    ckpt: str | None = None,
    model_config: str | None = None,
    refresh: bool = False,
    fold: str | None = None,
) -> nn.Module:
    """``s3prl.hub.<name>(ckpt=..., model_config=..., refresh=...)``.

    ``<base>_ft_avg`` entries also get ``fold`` (the fold being trained or evaluated), which
    they check against the fold their upstream was fine-tuned for; any other entry given an
    ``upstream_ft`` export as ``ckpt`` gets the same check.

    Raises:
        ValueError: ``name`` is not an s3prl hub entry (the closest names are suggested).
        FoldMismatchError: ``ckpt`` was fine-tuned for a fold other than ``fold``.
    """
    from s3prl import hub

    entry = getattr(hub, name, None)
    if not callable(entry) or name.startswith("_"):
        close = difflib.get_close_matches(name, hub.options(), n=3)
        raise ValueError(f"unknown upstream {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    kwargs = dict(ckpt=ckpt, model_config=model_config, refresh=refresh)
    if is_ft_avg_entry(name):
        kwargs["fold"] = fold
    elif ckpt is not None:
        check_export_fold(ckpt, fold)
    return entry(**kwargs)
