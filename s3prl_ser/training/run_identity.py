"""What defines a downstream run, so that an experiment directory is never silently reused.

s3prl resumes a run with the arguments stored in its checkpoint and lets a fresh run write
over an old one. Both can mix two experiments without a word: a stale ``dev-top.json`` whose
checkpoints get averaged into a new model, a cross-validation fold "finished earlier" with
another upstream. A run's identity (the arguments that choose the model and data, and the
whole config) is recorded in ``final.json`` and compared wherever a run is resumed or reused.
"""

from __future__ import annotations

import json
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from s3prl_ser.config import expert_default
from s3prl_ser.training.targets import LOSS_KEYS, TARGET_KEYS

__all__ = [
    "RUN_ARGS",
    "RUNTIME_SETTINGS",
    "run_identity",
    "differences",
    "significant_differences",
    "describe",
    "previous_run_files",
]

# Arguments that change what is trained (the rest: where, on which device, how verbose).
RUN_ARGS = (
    "upstream",
    "upstream_ckpt",
    "upstream_model_config",
    "upstream_trainable",
    "upstream_feature_selection",
    "upstream_layer_selection",
    "upstream_feature_normalize",
    "downstream",
    "downstream_variant",
    "seed",
)
# Config settings that say how data is fed or checked, not what is learned: they may always change.
# ``dir``: where the feature cache lives (what it holds is keyed by what it stores). ``min_samples``
# refuses short clips, never drops them (the runner raises it to 560 for fbank: runs recorded 400).
RUNTIME_SETTINGS = frozenset(
    {"num_workers", "eval_batch_size", "pre_load", "allow_outside_root", "max_eval_seconds", "dir", "min_samples"}
)
_ACCUMULATION = "config.runner.gradient_accumulate_steps"
# Stage-2 sections added after runs first recorded their identities: a record without one was
# trained as their defaults say (categories only, plain cross-entropy), so it is compared as such.
ADDED_EXPERT_SECTIONS = {"targets": TARGET_KEYS, "loss": LOSS_KEYS}
# Files a training run leaves in its experiment directory.
_RUN_FILES = ("states-*.ckpt", "dev-top.json", "dev-avg.ckpt", "dev-best.ckpt", "final.json")


def run_identity(args: Namespace | Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"args": {RUN_ARGS...}, "config": config}`` as plain JSON values."""
    get = args.get if isinstance(args, Mapping) else lambda key, default: getattr(args, key, default)
    identity = {"args": {key: get(key, None) for key in RUN_ARGS}, "config": config}
    return json.loads(json.dumps(identity, default=str))


def significant_differences(old: Any, new: Any, *, resuming: bool = False) -> list[str]:
    """:func:`differences` that matter for reusing a run: settings in :data:`RUNTIME_SETTINGS`
    are left out, and with ``resuming`` so is the ``config.runner`` section (schedule length,
    logging and evaluation cadence), which a resumed run may change, except the gradient
    accumulation: a resumed run's position is counted in micro-batches."""
    old, new = (_with_added_sections(json.loads(json.dumps(identity, default=str))) for identity in (old, new))
    lines = differences(old, new)
    keys = [line.split(": ", 1)[0] for line in lines]
    return [
        line
        for line, key in zip(lines, keys)
        if key.rsplit(".", 1)[-1] not in RUNTIME_SETTINGS
        and not (resuming and key.startswith("config.runner.") and key != _ACCUMULATION)
    ]


def _with_added_sections(identity: Any) -> Any:
    """``identity`` with each of :data:`ADDED_EXPERT_SECTIONS` its ``downstream_expert`` lacks set to
    ``emotion_ecapa``'s defaults (a run recorded before the section existed trained as they say).

    Example:
        >>> _with_added_sections({"config": {"downstream_expert": {}}})["config"]["downstream_expert"]["loss"]
        {'class_weights': False, 'focal_gamma': 0.0, 'balanced_sampler': False}
    """
    expert = ((identity or {}).get("config") or {}).get("downstream_expert") if isinstance(identity, dict) else None
    if not isinstance(expert, dict):
        return identity
    for section, keys in ADDED_EXPERT_SECTIONS.items():
        if section not in expert:
            expert[section] = {key: expert_default(section, key) for key in keys}
    return identity


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as ``"key: old -> new"`` lines (``<absent>`` if missing)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            lines += differences(old.get(key, "<absent>"), new.get(key, "<absent>"), name)
        return lines
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def describe(changed: list[str], limit: int = 5) -> str:
    """Difference lines for an error message: the first ``limit``, then ``...``."""
    return "; ".join(changed[:limit]) + ("; ..." if len(changed) > limit else "")


def previous_run_files(expdir: str | Path) -> list[str]:
    """Names of the files of an earlier training run in ``expdir`` (sorted)."""
    expdir = Path(expdir)
    return sorted({path.name for pattern in _RUN_FILES for path in expdir.glob(pattern)})
