"""The fine-tuning config: defaults from ``config.yaml``, user files merged over them, checked.

``config.yaml`` beside this module is the schema: a key it does not hold is an error (with the
closest known key suggested), a key a user file leaves out takes its default.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from s3prl_ser.training.config import ConfigError, check_keys

__all__ = ["DEFAULT_CONFIG", "FEATURE_SELECTIONS", "load_config", "validate_config"]

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "upstream_ft" / "config.yaml"
FEATURE_SELECTIONS = ("last_hidden_state", "hidden_states")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(defaults: Mapping[str, Any], user: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``defaults`` with ``user`` values laid over them; unknown keys raise."""
    check_keys(user, defaults.keys(), where)
    merged = copy.deepcopy(dict(defaults))
    for key, value in user.items():
        if isinstance(defaults[key], Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}.{key} must be a mapping, got {value!r}")
            merged[key] = _merge(defaults[key], value, f"{where}.{key}")
        else:
            merged[key] = value
    return merged


def load_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The defaults, or ``path`` merged over them (unknown keys raise :class:`ConfigError`)."""
    defaults = _read_yaml(DEFAULT_CONFIG)
    if path is None:
        return defaults
    path = Path(path)
    try:
        return _merge(defaults, _read_yaml(path), "config")
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def _positive_int(config: Mapping[str, Any], section: str, key: str, minimum: int = 1) -> None:
    value = config[section][key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"config.{section}.{key} must be an integer >= {minimum}, got {value!r}")


def validate_config(config: Mapping[str, Any], device: str) -> None:
    """Check keys and values once every override is applied; raise :class:`ConfigError`."""
    defaults = _read_yaml(DEFAULT_CONFIG)
    check_keys(config, defaults.keys(), "config")
    for section, keys in defaults.items():
        values = config.get(section)
        if not isinstance(values, Mapping):
            raise ConfigError(f"config.{section} must be a mapping of {', '.join(keys)}, got {values!r}")
        check_keys(values, keys.keys(), f"config.{section}")
        missing = [key for key in keys if key not in values]
        if missing:
            raise ConfigError(f"config.{section} lacks {', '.join(missing)}")

    for key in ("total_steps", "gradient_accumulate_steps", "log_step", "eval_step", "save_step"):
        _positive_int(config, "runner", key)
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
    if runner["fp16"] and not device.startswith("cuda"):
        raise ConfigError("config.runner.fp16 needs a CUDA device (--device cuda)")
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
    split = config["datarc"]["split"]
    if split not in ("superb", "speaker"):
        raise ConfigError(f"config.datarc.split must be 'superb' or 'speaker', got {split!r}")
    for key in ("root", "meta_data"):
        if config["datarc"][key] is None:
            raise ConfigError(
                f"config.datarc.{key} is not set: pass -o config.datarc.{key}=PATH or set it in -c CONFIG"
            )
