"""Continuous emotion attributes (arousal, valence, dominance, ...): their scale and validation.

An utterance item (s3prl meta-data item, manifest row) may carry
``"attributes": {"arousal": 3.5, "valence": 2.0, "dominance": null}``; a missing key or ``null``
means unknown for that utterance (masked out of that attribute's loss and metrics). The list
file or manifest declares each attribute's scale once, at top level:
``"attribute_scale": {"arousal": [1, 5], ...}`` (IEMOCAP 1-5, MSP-Podcast 1-7). Models learn
values normalised to ``[0, 1]`` on that scale (:func:`normalise`) and report them back on it
(:func:`denormalise`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = [
    "DEFAULT_ATTRIBUTES",
    "Scale",
    "normalise",
    "denormalise",
    "parse_scale",
    "check_attributes",
    "attribute_summary",
]

DEFAULT_ATTRIBUTES = ("arousal", "valence", "dominance")

Scale = tuple[float, float]
Values = TypeVar("Values", np.ndarray, torch.Tensor)


def _bounds(scale: Sequence[Scale] | Scale, like: Values) -> tuple[Any, Any]:
    """``lo`` and ``hi`` as arrays broadcasting over the last axis of ``like`` (one scale per
    attribute), or scalars for a single ``(lo, hi)``."""
    if len(scale) == 2 and all(isinstance(v, (int, float)) for v in scale):
        return float(scale[0]), float(scale[1])
    lo = np.array([s[0] for s in scale], dtype=np.float64)
    hi = np.array([s[1] for s in scale], dtype=np.float64)
    if isinstance(like, torch.Tensor):
        return torch.as_tensor(lo, dtype=like.dtype, device=like.device), torch.as_tensor(
            hi, dtype=like.dtype, device=like.device
        )
    return lo.astype(like.dtype, copy=False), hi.astype(like.dtype, copy=False)


def normalise(values: Values, scale: Sequence[Scale] | Scale) -> Values:
    """``(y - lo) / (hi - lo)``: values on the corpus's scale to ``[0, 1]`` (NaN stays NaN).

    Args:
        values: numpy array or tensor (..., A), or any shape with a single ``scale``.
        scale: one ``(lo, hi)`` for all values, or one per attribute (the last axis).

    Example:
        >>> normalise(np.array([[1.0, 7.0], [3.0, np.nan]]), [(1, 5), (1, 7)]).tolist()
        [[0.0, 1.0], [0.5, nan]]
    """
    lo, hi = _bounds(scale, values)
    return (values - lo) / (hi - lo)


def denormalise(values: Values, scale: Sequence[Scale] | Scale) -> Values:
    """``lo + y * (hi - lo)``: normalised values back on the corpus's scale (inverse of
    :func:`normalise`; NaN stays NaN).

    Example:
        >>> denormalise(torch.tensor([[0.0, 0.5]]), [(1, 5), (1, 7)]).tolist()
        [[1.0, 4.0]]
    """
    lo, hi = _bounds(scale, values)
    return lo + values * (hi - lo)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_scale(value: Any, where: str) -> dict[str, Scale]:
    """A declared ``attribute_scale`` (``{name: [lo, hi]}``; absent/None: ``{}``), validated.

    Raises:
        ValueError: not an object of ``[lo, hi]`` pairs with ``lo < hi``, naming ``where``.

    Example:
        >>> parse_scale({"arousal": [1, 5]}, "meta.json")
        {'arousal': (1.0, 5.0)}
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f'{where}: attribute_scale must be an object {{"arousal": [1, 5], ...}}, got {value!r}')
    scale = {}
    for name, bounds in value.items():
        if (
            not isinstance(name, str)
            or not isinstance(bounds, (list, tuple))
            or len(bounds) != 2
            or not all(_number(b) for b in bounds)
            or not bounds[0] < bounds[1]
        ):
            raise ValueError(f"{where}: attribute_scale.{name} must be [low, high] with low < high, got {bounds!r}")
        scale[name] = (float(bounds[0]), float(bounds[1]))
    return scale


def check_attributes(item: Mapping[str, Any], scale: Mapping[str, Scale], where: str) -> None:
    """Raise a ValueError naming ``where`` when ``item["attributes"]`` (if present) is not an
    object of numbers or nulls, names an attribute ``scale`` does not declare, or holds a value
    outside its declared scale.

    Example:
        >>> check_attributes({"attributes": {"arousal": 6}}, {"arousal": (1, 5)}, "m.json: u1")
        Traceback (most recent call last):
        ...
        ValueError: m.json: u1: arousal 6 is outside the declared scale [1, 5]
    """
    values = item.get("attributes")
    if values is None:
        return
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: attributes must be an object {{name: value or null}}, got {values!r}")
    for name, value in values.items():
        if name not in scale:
            declared = ", ".join(scale) or "none"
            raise ValueError(f"{where}: attribute {name!r} has no declared attribute_scale (declared: {declared})")
        if value is None:
            continue
        if not _number(value):
            raise ValueError(f"{where}: attribute {name} must be a number or null, got {value!r}")
        lo, hi = scale[name]
        if not lo <= value <= hi:
            raise ValueError(f"{where}: {name} {value:g} is outside the declared scale [{lo:g}, {hi:g}]")


def attribute_summary(items: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, str]:
    """Per attribute, ``"min-max mean m (n)"`` over the items that know it (``"-"``: none), for
    the preparers' count tables.

    Example:
        >>> attribute_summary([{"attributes": {"arousal": 2}}, {"attributes": {"arousal": 4.5}}, {}], ["arousal"])
        {'arousal': '2.00-4.50 mean 3.25 (2)'}
    """
    summary = {}
    for name in names:
        known = [v for item in items if (v := (item.get("attributes") or {}).get(name)) is not None]
        summary[name] = f"{min(known):.2f}-{max(known):.2f} mean {np.mean(known):.2f} ({len(known)})" if known else "-"
    return summary
