"""Build an s3prl upstream by hub name, with the test fold for per-fold fine-tuned entries."""

from __future__ import annotations

import difflib

from torch import nn

from s3prl_ser.hub.ft_hub import FoldSpec, check_fine_tuned, is_ft_avg_entry

__all__ = ["build_upstream"]


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
    (``ckpt``) gets the same check (:func:`~s3prl_ser.hub.ft_hub.check_fine_tuned`).

    Raises:
        ValueError: ``name`` is not an s3prl hub entry (the closest names are suggested).
        FoldMismatchError: ``ckpt`` was fine-tuned for a fold other than ``fold``, or records none.
        ProtocolMismatchError: ``ckpt`` was fine-tuned on another corpus or train/dev split.
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
        check_fine_tuned(ckpt, fold)
    return entry(**kwargs)
