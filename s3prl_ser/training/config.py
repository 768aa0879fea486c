"""Config checking and ``-o`` overrides that catch typos instead of silently adding keys."""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Any, Iterable, Mapping, MutableMapping

import yaml

__all__ = ["ConfigError", "check_keys", "require", "apply_overrides"]

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


def apply_overrides(spec: str, args: argparse.Namespace, config: MutableMapping[str, Any]) -> None:
    """Apply s3prl-style overrides ``"config.a.b=1,,args.seed=3"`` (values parsed as YAML).

    Unlike s3prl's ``override`` (which ``eval``s values and creates any key it is given), a key
    must already exist, so a typo is an error naming the key and the closest known one.
    """
    for option in filter(None, (o.strip() for o in spec.split(",,"))):
        if "=" not in option:
            raise ConfigError(f"override {option!r} is not of the form key=value")
        key, value_text = (part.strip() for part in option.split("=", 1))
        value = yaml.safe_load(value_text) if value_text else None
        if isinstance(value, str) and _FLOAT.fullmatch(value):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        first, *path = key.split(".")
        if first == "args":
            if len(path) != 1 or not hasattr(args, path[0]):
                raise ConfigError(f"unknown argument in override {key!r}{_suggest(path[-1] if path else '', vars(args))}")
            setattr(args, path[0], value)
        elif first == "config" and path:
            target: Any = config
            for depth, name in enumerate(path):
                where = ".".join(path[:depth]) or "config"
                if not isinstance(target, MutableMapping) or name not in target:
                    known = target.keys() if isinstance(target, Mapping) else []
                    raise ConfigError(f"unknown config key {key!r}: no {name!r} in {where}{_suggest(name, known)}")
                if depth == len(path) - 1:
                    target[name] = value
                else:
                    target = target[name]
        else:
            raise ConfigError(f"override key {key!r} must start with 'config.' or 'args.'")
