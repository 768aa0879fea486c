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
from pathlib import Path
from typing import Any, Mapping

__all__ = ["RUN_ARGS", "RESUMABLE_SECTIONS", "run_identity", "differences", "previous_run_files"]

# Arguments that change what is trained (the rest: where, on which device, how verbose).
RUN_ARGS = (
    "upstream", "upstream_ckpt", "upstream_model_config", "upstream_trainable",
    "upstream_feature_selection", "upstream_layer_selection", "upstream_feature_normalize",
    "downstream", "downstream_variant", "seed",
)
# Config sections a resumed run may change: schedule length and logging/evaluation cadence.
RESUMABLE_SECTIONS = ("runner",)
# Files a training run leaves in its experiment directory.
_RUN_FILES = ("states-*.ckpt", "dev-top.json", "dev-avg.ckpt", "dev-best.ckpt", "final.json")


def run_identity(args: Namespace, config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"args": {RUN_ARGS...}, "config": config}`` as plain JSON values."""
    identity = {"args": {key: getattr(args, key, None) for key in RUN_ARGS}, "config": config}
    return json.loads(json.dumps(identity, default=str))


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as ``"key: old -> new"`` lines (``<absent>`` if missing)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            lines += differences(old.get(key, "<absent>"), new.get(key, "<absent>"), name)
        return lines
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def previous_run_files(expdir: str | Path) -> list[str]:
    """Names of the files of an earlier training run in ``expdir`` (sorted)."""
    expdir = Path(expdir)
    return sorted({path.name for pattern in _RUN_FILES for path in expdir.glob(pattern)})
