"""Output post-processing: a subset of classes renormalised, and the top k classes, highest first.

``classes``: the probabilities of the other classes are dropped and the rest divided by their
sum, so the label is the most probable class of the subset. ``top_k``: the HF
``pipeline("audio-classification")`` form, ``[{"label": ..., "score": ...}, ...]``, highest
first; equal scores keep the model's class order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["check_classes", "restrict", "top_classes", "postprocess_row"]


def check_classes(class_names: Sequence[str], classes: Sequence[str]) -> list[str]:
    """``classes`` as a list, checked against the model's ``class_names``.

    Raises:
        ValueError: ``classes`` is empty, repeats a class, or names one the model does not have
            (the message lists the model's classes).
    """
    classes = list(classes)
    unknown = [c for c in classes if c not in class_names]
    if unknown:
        raise ValueError(f"unknown class(es) {', '.join(unknown)}: the model's classes are {', '.join(class_names)}")
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must name each class at most once and at least one, got {classes}")
    return classes


def restrict(probabilities: dict[str, float], classes: Sequence[str]) -> dict[str, float]:
    """``{class: p}`` over the model's classes -> ``{class: p / sum of p over classes}`` over ``classes``
    (in ``classes``' order); all equal if the subset's sum is 0.

    Example:
        >>> restrict({"neu": 0.125, "hap": 0.25, "ang": 0.375, "sad": 0.25}, ["neu", "ang"])
        {'neu': 0.25, 'ang': 0.75}
    """
    classes = check_classes(list(probabilities), classes)
    total = sum(probabilities[c] for c in classes)
    if total <= 0:  # float32 softmax underflow over every chosen class
        return {c: 1.0 / len(classes) for c in classes}
    return {c: probabilities[c] / total for c in classes}


def top_classes(probabilities: dict[str, float], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes, ``[{"label": c, "score": p}, ...]`` highest first (all of
    them if ``k`` exceeds their number); equal scores keep the order of ``probabilities``.

    Raises:
        ValueError: ``k`` < 1.

    Example:
        >>> top_classes({"neu": 0.2, "hap": 0.2, "ang": 0.6}, 2)
        [{'label': 'ang', 'score': 0.6}, {'label': 'neu', 'score': 0.2}]
    """
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    ranked = sorted(probabilities.items(), key=lambda item: -item[1])  # stable: ties in class order
    return [{"label": c, "score": p} for c, p in ranked[:k]]


def postprocess_row(row: dict[str, Any], classes: Sequence[str] | None, k: int | None) -> dict[str, Any]:
    """A result row (:mod:`~s3prl_ser.inference.rows`) with ``classes`` applied to its
    ``probabilities`` and ``label``, and a ``top_k`` field if ``k`` is given; error rows
    (no probabilities) get an empty ``top_k``."""
    if classes is None and k is None:
        return row
    if not row["probabilities"]:
        return {**row, "top_k": []} if k is not None else row
    probabilities = restrict(row["probabilities"], classes) if classes else row["probabilities"]
    row = {**row, "probabilities": probabilities, "label": max(probabilities, key=probabilities.__getitem__)}
    if k is not None:
        row["top_k"] = top_classes(probabilities, k)
    return row
