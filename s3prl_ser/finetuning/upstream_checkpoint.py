"""Fine-tuned upstreams as s3prl converted checkpoints, and the averaged export of a fold.

A converted checkpoint is what s3prl's ``hubert_local`` / ``wav2vec2_local`` read: the base
checkpoint's ``task_cfg``, ``model_cfg`` and ``dictionaries_symbols`` plus the fine-tuned
``model_weight``. Stock s3prl ignores other keys, so the files here also carry the
fine-tuning head (``ft_head``: Featurizer + linear head state), what the head predicts
(``ft_targets``: the :class:`~s3prl_ser.training.targets.TargetSpec` record, its outputs being C
class logits then A attributes normalised on ``ft_attribute_scale``) and, for the export, the
class order (``ft_class_names``); the head is averaged together with the upstream, so the
exported file is the complete averaged fine-tuning model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from s3prl_ser.data.protocol import FT_METADATA
from s3prl_ser.fileio import atomic_torch_save, atomic_write_json, remove_temporaries, safe_torch_load
from s3prl_ser.finetuning.hub_entries import FT_CHECKPOINT
from s3prl_ser.training.best_checkpoints import BestCheckpoints, Entry
from s3prl_ser.training.checkpoint_averaging import average_checkpoint_files, average_state_dicts

__all__ = [
    "BASE_FIELDS",
    "TARGETS_KEY",
    "ATTRIBUTE_SCALE_KEY",
    "read_base_fields",
    "converted_checkpoint",
    "Export",
    "export_fold",
    "write_metadata",
]

BASE_FIELDS = ("task_cfg", "model_cfg", "dictionaries_symbols")
TARGETS_KEY = "ft_targets"  # TargetSpec.to_dict() of the run
ATTRIBUTE_SCALE_KEY = "ft_attribute_scale"  # {attribute: [lo, hi]} the attribute outputs are normalised on


def read_base_fields(path: str | os.PathLike) -> dict[str, Any]:
    """The configs of a converted checkpoint file (``task_cfg``, ``model_cfg``, and
    ``dictionaries_symbols`` where present), without its weights."""
    state = safe_torch_load(path)
    missing = [key for key in ("task_cfg", "model_cfg", "model_weight") if key not in state]
    if missing:
        raise ValueError(f"{path}: not an s3prl converted upstream checkpoint (no {', '.join(missing)})")
    return {key: state[key] for key in BASE_FIELDS if key in state}


def _cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().clone() for key, value in state.items()}


def converted_checkpoint(
    base_fields: Mapping[str, Any], model_weight: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    """A converted checkpoint dict: base configs, ``model_weight`` and ``ft_head`` (CPU copies)."""
    return {**base_fields, "model_weight": _cpu(model_weight), "ft_head": _cpu(head)}


@dataclass(frozen=True)
class Export:
    """What :func:`export_fold` wrote: the file and the dev-selected checkpoints it holds."""

    path: Path
    averaged: bool
    entries: list[Entry]


def export_fold(
    fold_dir: Path,
    best_k: int,
    average: bool,
    class_names: list[str],
    stamp: Mapping[str, Any],
    output_dir: Path | None = None,
) -> Export:
    """Write ``upstream.ckpt`` from the kept dev-top checkpoints of ``fold_dir``.

    Args:
        fold_dir: the fold's fine-tuning directory (holds ``dev-top.json`` and the files).
        best_k: the k the checkpoints were kept with.
        average: average all kept checkpoints (upstream and head); else copy the best one.
        class_names: class order of the head's class logits (empty without categories).
        stamp: fields the export carries whatever the files hold (the fold protocol, the loader).
        output_dir: where to write (default ``fold_dir``), e.g. a second export of the same run.

    Raises:
        RuntimeError: no dev checkpoint was kept.
    """
    entries = BestCheckpoints(fold_dir, best_k, prefix="dev-top").entries()
    if not entries:
        raise RuntimeError(f"{fold_dir}: no dev checkpoint was kept (is runner.eval_step larger than total_steps?)")
    chosen = entries if average else entries[:1]
    paths = [fold_dir / entry.name for entry in chosen]
    if average:
        state = average_checkpoint_files(paths)
        # Heads one file at a time: average_checkpoint_files averaged model_weight only.
        state["ft_head"] = average_state_dicts(
            [safe_torch_load(path)["ft_head"] for path in paths], [f"{path} [ft_head]" for path in paths]
        )
    else:
        state = safe_torch_load(paths[0])
    state["Averaged"] = {"paths": [path.name for path in paths], "steps": [entry.step for entry in chosen]}
    state["ft_class_names"] = list(class_names)
    state.update(stamp)
    output = (output_dir or fold_dir) / FT_CHECKPOINT
    output.parent.mkdir(parents=True, exist_ok=True)
    # A kill mid-export leaves the temporary file: the fold's directory is cleaned when its
    # training resumes, a second export's (FT_DIR/best/<fold>) only here.
    remove_temporaries(output.parent, output.name)
    atomic_torch_save(state, output)
    return Export(output, average, chosen)


def write_metadata(fold_dir: Path, record: Mapping[str, Any]) -> Path:
    """Write ``fold_dir/upstream.json`` atomically (its presence marks the export as finished)."""
    path = fold_dir / FT_METADATA
    atomic_write_json(path, record, indent=1)
    return path
