"""One config system for both stages: YAML defaults, a ``-c`` file merged over them, ``-o`` overrides.

``python -m upstream_ft`` (defaults ``s3prl_ser/finetuning/config.yaml``) and ``run_downstream.py -d TASK``
(defaults ``downstream/TASK/config.yaml``) build their config the same way:

1. :func:`load_config` reads the defaults and lays the user's ``-c`` file over them;
2. :func:`apply_overrides` applies ``-o "config.a.b=v,,config.c=w,,args.seed=3"`` (values are
   YAML; ``1e-3`` is read as a number).

The defaults are the schema. How a user value meets a default:

* **mapping over mapping: strict merge.** A key the default section does not hold is an error
  naming it and the closest known key; a key the user leaves out keeps its default. So a
  complete config (a stock s3prl one) merged over its task's defaults is itself, and a partial
  one (``paper/exp*.yaml``, the ``config_builtin.yaml`` files) holds only what differs. A
  non-mapping over a mapping section is an error.
* **lists and scalars are replaced** (``runner.eval_dataloaders: [dev, test]``).
* **a ``null`` default is optional and takes any value**, a mapping included, whole: ``scheduler:
  null`` and ``specaug: null`` accept s3prl's ``{name: linear_schedule_with_warmup, ...}`` or
  SpecAug options from a ``-c`` file or ``-o "config.specaug={apply_time_mask: true, ...}"``.
* **free-form sections are replaced whole** (``free_form``, dotted paths). Their keys are the
  keyword arguments of the class they name, which checks them, and they differ from class to
  class: s3prl's ``optimizer`` is ``{name: TorchOptim, torch_optim_name: Adam, lr: ...}`` or
  ``{name: AdamW, lr: ...}``, so a user section must never inherit the default's other keys.
  Stage 2 passes :data:`S3PRL_FREE_FORM` (``optimizer``, ``scheduler``, ``specaug``), plus
  ``downstream_expert.modelrc`` for s3prl's own experts (``-d emotion``: ``select`` plus one
  section per selectable model class). Stage 1's sections are all the project's own: strict.

``-o`` follows the same rules for the value it sets (``-o config.runner={total_steps: 5}`` merges
like a ``-c`` file), and is strict about the path: every key of ``config.a.b`` must already
exist, so a typo is an error with a suggestion. A key is added to a free-form or null section by
setting the section whole.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import functools
import os
import re
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "S3PRL_FREE_FORM",
    "DOWNSTREAM_DIR",
    "expert_default",
    "check_keys",
    "require",
    "read_yaml",
    "merge_config",
    "load_config",
    "Override",
    "parse_overrides",
    "apply_overrides",
    "check_int",
    "check_positive",
    "check_fp16",
]

# Sections s3prl's runner turns into objects by name (get_optimizer, get_scheduler, SpecAug).
S3PRL_FREE_FORM = ("optimizer", "scheduler", "specaug")

# A checkout's downstream/ sits beside the package; a wheel installs it as s3prl_ser/_downstream/
# (setup.py), leaving site-packages no generic top-level name.
_INSTALLED_DOWNSTREAM_DIR = Path(__file__).resolve().parent / "_downstream"
DOWNSTREAM_DIR = (
    _INSTALLED_DOWNSTREAM_DIR
    if _INSTALLED_DOWNSTREAM_DIR.is_dir()
    else Path(__file__).resolve().parents[1] / "downstream"
)


@functools.cache
def _expert_defaults() -> dict[str, Any]:
    return read_yaml(DOWNSTREAM_DIR / "emotion_ecapa" / "config.yaml")["downstream_expert"]


def expert_default(section: str, key: str) -> Any:
    """``downstream_expert.<section>.<key>`` as ``emotion_ecapa``'s ``config.yaml`` sets it: the
    one place the defaults of the data (``datarc``) and the model (``modelrc``) are written, for
    code given a section that lacks the key (s3prl's own runner, a model directory's config).

    Example:
        >>> expert_default("datarc", "min_samples"), expert_default("modelrc", "aggregator")
        (400, 'ecapa')
    """
    return copy.deepcopy(_expert_defaults()[section][key])


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A config key is unknown, missing or has an invalid value."""


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_keys(section: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Raise :class:`ConfigError` for a key of ``section`` not in ``known`` (``where`` names it)."""
    known = set(known)
    for key in section:
        if key not in known:
            raise ConfigError(
                f"unknown config key {where}.{key}{_suggest(key, known)} (known: {', '.join(sorted(known))})"
            )


def require(section: Mapping[str, Any], key: str, where: str, hint: str = "") -> Any:
    """``section[key]``, or a :class:`ConfigError` saying how to set it when missing or null."""
    value = section.get(key)
    if value is None:
        raise ConfigError(f"{where}.{key} is not set{': ' + hint if hint else ''}")
    return value


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML config file as a mapping (an empty file is ``{}``).

    Raises:
        FileNotFoundError: no such file.
        ConfigError: the file is not a mapping of sections.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge_value(default: Any, value: Any, path: str, free_form: Iterable[str]) -> Any:
    """``value`` laid over ``default`` at dotted ``path`` (``config.``-relative), by the module's rules."""
    if default is None or not isinstance(default, Mapping) or path in free_form:
        return copy.deepcopy(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"config.{path} is a section ({', '.join(default)}): it takes a mapping, got {value!r}")
    return merge_config(default, value, free_form=free_form, path=path)


def merge_config(
    defaults: Mapping[str, Any], user: Mapping[str, Any], *, free_form: Iterable[str] = (), path: str = ""
) -> dict[str, Any]:
    """``user`` laid over ``defaults`` (neither is modified), by the rules in the module docstring.

    Args:
        defaults: the schema and default values.
        user: the user's values (a ``-c`` file).
        free_form: dotted paths (e.g. ``"optimizer"``) replaced whole instead of merged.
        path: where ``defaults`` sits in the whole config (``""`` for the root), for messages.

    Raises:
        ConfigError: a key of ``user`` that ``defaults`` does not hold, or a non-mapping value
            for a mapping section.

    Example:
        >>> defaults = {"runner": {"total_steps": 30000, "fp16": False}, "specaug": None}
        >>> merge_config(defaults, {"runner": {"total_steps": 600}, "specaug": {"apply_time_mask": True}})
        {'runner': {'total_steps': 600, 'fp16': False}, 'specaug': {'apply_time_mask': True}}
        >>> merge_config(defaults, {"runner": {"total_step": 600}})
        Traceback (most recent call last):
        ...
        s3prl_ser.config.ConfigError: unknown config key config.runner.total_step; did you mean 'total_steps'? (known: fp16, total_steps)
    """
    free_form = tuple(free_form)
    check_keys(user, defaults.keys(), f"config.{path}" if path else "config")
    merged = copy.deepcopy(dict(defaults))
    for key, value in user.items():
        merged[key] = _merge_value(defaults[key], value, f"{path}.{key}" if path else key, free_form)
    return merged


def load_config(
    defaults_path: str | os.PathLike, user_path: str | os.PathLike | None = None, *, free_form: Iterable[str] = ()
) -> dict[str, Any]:
    """The config in ``defaults_path``, with the ``-c`` file ``user_path`` (if any) merged over it.

    Raises:
        FileNotFoundError: either file is missing.
        ConfigError: the user file has a key the defaults lack (the message names the file, the
            key and the closest known key) or a malformed section.
    """
    defaults = read_yaml(defaults_path)
    if user_path is None:
        return defaults
    try:
        return merge_config(defaults, read_yaml(user_path), free_form=free_form)
    except ConfigError as error:
        raise ConfigError(f"{user_path}: {error}") from error


Override = tuple[str, Any]  # ("config.a.b", value) or ("args.seed", value): a typed -o entry


def parse_overrides(spec: str) -> list[Override]:
    """A user's s3prl-style ``-o`` string ``"config.a.b=1,,args.seed=3"`` as typed entries
    (values parsed as YAML); s3prl's ``none`` and ``""`` are no overrides.

    Example:
        >>> parse_overrides("config.runner.total_steps=40,,config.optimizer.lr=1e-3,,args.seed=3")
        [('config.runner.total_steps', 40), ('config.optimizer.lr', 0.001), ('args.seed', 3)]

    Raises:
        ConfigError: an entry is not ``key=value``.
    """
    if spec.strip().lower() == "none":
        return []
    parsed = []
    for option in filter(None, (o.strip() for o in spec.split(",,"))):
        if "=" not in option:
            raise ConfigError(f"override {option!r} is not of the form key=value")
        key, value_text = (part.strip() for part in option.split("=", 1))
        value = yaml.safe_load(value_text) if value_text else None
        if isinstance(value, str) and _FLOAT.fullmatch(value):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        parsed.append((key, value))
    return parsed


def apply_overrides(
    overrides: str | Iterable[Override],
    args: argparse.Namespace,
    config: MutableMapping[str, Any],
    *,
    free_form: Iterable[str] = (),
) -> None:
    """Apply overrides: typed ``(key, value)`` entries, or a user's s3prl-style string
    ``"config.a.b=1,,args.seed=3"`` (:func:`parse_overrides`).

    Unlike s3prl's ``override`` (which ``eval``s values and creates any key it is given), a key
    must already exist, so a typo is an error naming the key and the closest known one. A value
    is laid over the current one as a ``-c`` file's would be (:func:`merge_config`; ``free_form``
    as there).
    """
    free_form = tuple(free_form)
    for key, value in parse_overrides(overrides) if isinstance(overrides, str) else overrides:
        first, *path = key.split(".")
        if first == "args":
            if len(path) != 1 or not hasattr(args, path[0]):
                raise ConfigError(
                    f"unknown argument in override {key!r}{_suggest(path[-1] if path else '', vars(args))}"
                )
            setattr(args, path[0], value)
        elif first == "config" and path:
            target: Any = config
            for depth, name in enumerate(path):
                where = ".".join(path[:depth]) or "config"
                if target is None:
                    raise ConfigError(
                        f"unknown config key {key!r}: config.{where} is null; set it whole, "
                        f'e.g. -o "config.{where}={{{name}: ...}}"'
                    )
                if not isinstance(target, MutableMapping) or name not in target:
                    known = target.keys() if isinstance(target, Mapping) else []
                    raise ConfigError(f"unknown config key {key!r}: no {name!r} in {where}{_suggest(name, known)}")
                if depth == len(path) - 1:
                    target[name] = _merge_value(target[name], value, ".".join(path), free_form)
                else:
                    target = target[name]
        else:
            raise ConfigError(f"override key {key!r} must start with 'config.' or 'args.'")


def check_int(value: Any, where: str, minimum: int = 1) -> int:
    """``value`` if it is an integer >= ``minimum``, else a :class:`ConfigError` naming ``where``.

    Example:
        >>> check_int(3, "config.runner.eval_step")
        3
        >>> check_int(0, "config.runner.eval_step")
        Traceback (most recent call last):
        ...
        s3prl_ser.config.ConfigError: config.runner.eval_step must be an integer >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive(value: Any, where: str) -> float:
    """``value`` if it is a number > 0, else a :class:`ConfigError` naming ``where``.

    Example:
        >>> check_positive(0.5, "config.runner.gradient_clipping")
        0.5
        >>> check_positive("1e-3", "config.optimizer.lr")
        Traceback (most recent call last):
        ...
        s3prl_ser.config.ConfigError: config.optimizer.lr must be a number > 0, got '1e-3' (YAML reads 1e-3 as text: write 1.0e-3)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if isinstance(value, str) and _FLOAT.fullmatch(value) else ""
        raise ConfigError(f"{where} must be a number > 0, got {value!r}{hint}")
    return value


def check_fp16(fp16: bool, device: Any) -> None:
    """Refuse ``config.runner.fp16`` (AMP with a grad scaler, both stages) unless ``device``
    (a name or ``torch.device``) is CUDA.

    Raises:
        ConfigError: ``fp16`` is on and ``device`` is not ``cuda``/``cuda:N``.
    """
    if fp16 and not str(device).startswith("cuda"):
        raise ConfigError(
            f"config.runner.fp16=True (mixed precision) needs a CUDA device, got --device {device}: "
            "drop it or run with --device cuda"
        )
