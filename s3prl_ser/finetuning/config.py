"""Stage 1's config: its defaults files (package data) and the value checks of ``python -m upstream_ft``.

``config.yaml`` beside this module is the schema; a ``-c`` file is merged over it and ``-o``
applied by the config system both stages share (:mod:`s3prl_ser.config`), so every key exists
by construction. :func:`validate_config` then checks the values. ``config_builtin.yaml`` holds
what the built-in corpus's runs (the main job) change.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from s3prl_ser.config import ConfigError, check_fp16, check_int
from s3prl_ser.data.fold_data import SPLITS
from s3prl_ser.models.text_encoder import FEATURE_SELECTIONS
from s3prl_ser.training.loop import Schedule
from s3prl_ser.training.targets import LossSpec, TargetSpec

__all__ = ["DEFAULT_CONFIG", "BUILTIN_CONFIG", "validate_config", "config_targets"]

DEFAULT_CONFIG = Path(__file__).with_name("config.yaml")
"""Every key of stage 1's config with its default (package data)."""
BUILTIN_CONFIG = Path(__file__).with_name("config_builtin.yaml")
"""What the built-in corpus's stage-1 runs change, merged over :data:`DEFAULT_CONFIG` (package data)."""


def _positive_int(config: Mapping[str, Any], section: str, key: str, minimum: int = 1) -> None:
    check_int(config[section][key], f"config.{section}.{key}", minimum)


def config_targets(config: Mapping[str, Any]) -> tuple[TargetSpec, LossSpec]:
    """What the head learns (``config.targets``) and the cross-entropy's options (``config.loss``),
    checked together.

    Raises:
        ConfigError: naming the bad key of either section.
    """
    targets = TargetSpec.from_config(config["targets"], "config.targets")
    loss = LossSpec.from_config(config["loss"], "config.loss")
    loss.check_targets(targets, "config.loss")
    return targets, loss


def validate_config(config: Mapping[str, Any], device: str) -> None:
    """Check the values of a loaded and overridden config for ``--device device``.

    Raises:
        ConfigError: naming the first bad value and what it must be.
    """
    Schedule.from_runner(config["runner"])  # the loop's own checks of the runner section
    config_targets(config)
    _positive_int(config, "scheduler", "warmup_steps", minimum=0)
    _positive_int(config, "upstream", "freeze_transformer_steps", minimum=0)
    _positive_int(config, "checkpoint_averaging", "best_k")
    for key in ("train_batch_size", "eval_batch_size"):
        _positive_int(config, "datarc", key)
    _positive_int(config, "datarc", "num_workers", minimum=0)

    runner = config["runner"]
    if config["scheduler"]["warmup_steps"] >= runner["total_steps"]:
        raise ConfigError(
            f"config.scheduler.warmup_steps ({config['scheduler']['warmup_steps']}) must be smaller "
            f"than config.runner.total_steps ({runner['total_steps']})"
        )
    check_fp16(config["runner"]["fp16"], device)
    selection = config["upstream"]["feature_selection"]
    if selection not in FEATURE_SELECTIONS:
        raise ConfigError(
            f"config.upstream.feature_selection must be one of {', '.join(FEATURE_SELECTIONS)}, got {selection!r}"
        )
    for key in ("upstream_lr", "head_lr"):
        value = config["optimizer"][key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if isinstance(value, str) else ""
            raise ConfigError(f"config.optimizer.{key} must be a number >= 0, got {value!r}{hint}")
    averaging = config["checkpoint_averaging"]
    for key in ("average", "export_best"):
        if not isinstance(averaging[key], bool):
            raise ConfigError(f"config.checkpoint_averaging.{key} must be true or false, got {averaging[key]!r}")
    if averaging["export_best"] and not averaging["average"]:
        raise ConfigError(
            "config.checkpoint_averaging.export_best adds the single best export beside the averaged one; "
            "with average: false the export already is the single best (set export_best: false)"
        )
    split = config["datarc"]["split"]
    if split not in SPLITS:
        raise ConfigError(f"config.datarc.split must be one of {', '.join(SPLITS)}, got {split!r}")
    for key in ("root", "meta_data"):
        if config["datarc"][key] is None:
            raise ConfigError(
                f"config.datarc.{key} is not set: pass -o config.datarc.{key}=PATH or set it in -c CONFIG"
            )
