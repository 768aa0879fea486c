"""The loss and the dev scores of a run's targets (:class:`~s3prl_ser.training.targets.TargetSpec`).

A model's outputs are ``(B, C + A)``: C class logits, then A normalised attribute predictions
(:func:`~s3prl_ser.models.fusion.split_outputs`). :class:`TargetObjective` turns them and a batch's
labels into the training loss: cross-entropy (class-weighted and/or focal as the
:class:`~s3prl_ser.training.targets.LossSpec` asks) plus ``attribute_weight`` times the attribute
loss (1 - CCC or masked MSE), or either alone. :func:`selection_scores` names every dev metric a
run can select checkpoints by.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from s3prl_ser.models.fusion import split_outputs
from s3prl_ser.training.losses import FocalLoss, ccc_loss, class_weights, masked_mse
from s3prl_ser.training.metrics import ClassificationReport, RegressionReport
from s3prl_ser.training.targets import LossSpec, TargetSpec

__all__ = ["UNDEFINED_SCORE", "split_labels", "TargetObjective", "selection_scores", "selection_value"]

logger = logging.getLogger(__name__)

UNDEFINED_SCORE = -1.0
"""What an undefined dev score (a constant prediction's CCC) ranks as: the worst CCC there is."""


def split_labels(labels: Sequence[Any], targets: TargetSpec) -> tuple[list[int], np.ndarray | None]:
    """A batch's labels as the datasets serve them -> class ids ``(B,)`` (-1: no category) and,
    with attributes, their normalised values ``(B, A)`` float32 (NaN unknown).

    Example:
        >>> split_labels([2, 0], TargetSpec())
        ([2, 0], None)
        >>> ids, values = split_labels([(1, np.array([0.5, np.nan]))], TargetSpec(attributes=("arousal", "valence")))
        >>> ids, values.tolist()
        ([1], [[0.5, nan]])
    """
    if not targets.attributes:
        return [int(label) for label in labels], None
    values = np.stack([np.asarray(label[1], dtype=np.float32) for label in labels]).reshape(len(labels), -1)
    return [int(label[0]) for label in labels], values


class TargetObjective(nn.Module):
    """The training loss of ``targets`` over ``(B, C + A)`` outputs.

    Args:
        targets: what the run learns.
        loss: the class head's cross-entropy options (class weights, focal gamma).
        class_counts: the training split's utterances per class (C entries; the class weights
            come from them); empty without categories.

    Example:
        >>> objective = TargetObjective(TargetSpec(attributes=("arousal",)), LossSpec(), [3, 1])
        >>> outputs = torch.tensor([[2.0, 0.0, 0.1], [0.0, 2.0, 0.9], [1.0, 0.0, 0.5]])
        >>> labels = [(0, np.array([0.0])), (1, np.array([1.0])), (0, np.array([np.nan]))]
        >>> expected = nn.functional.cross_entropy(outputs[:, :2], torch.tensor([0, 1, 0])) + ccc_loss(
        ...     outputs[:2, 2:], torch.tensor([[0.0], [1.0]]))
        >>> bool(torch.isclose(objective(outputs, labels), expected))
        True
    """

    def __init__(self, targets: TargetSpec, loss: LossSpec, class_counts: Sequence[int] = ()) -> None:
        super().__init__()
        if targets.categories and not class_counts:
            raise ValueError("a run with categories needs the training split's class counts")
        self.targets, self.num_classes = targets, len(class_counts) if targets.categories else 0
        self.class_loss: nn.Module | None = None
        if targets.categories:
            weight = None
            if loss.class_weights:
                weight = class_weights(class_counts)
                logger.info(
                    "class weights from the training counts: %s",
                    ", ".join(f"{w:.3f} ({n})" for w, n in zip(weight.tolist(), class_counts)),
                )
            # Plain cross-entropy unless asked otherwise; FocalLoss with gamma 0 is the weighted
            # cross-entropy exactly, and keeps the weights out of the module's state dict.
            plain = weight is None and loss.focal_gamma == 0
            self.class_loss = nn.CrossEntropyLoss() if plain else FocalLoss(loss.focal_gamma, weight)
        self.attribute_loss = ccc_loss if targets.attribute_loss == "ccc" else masked_mse

    def forward(self, outputs: Tensor, labels: Sequence[Any]) -> Tensor:
        """``outputs`` ``(B, C + A)`` and the batch's labels (:func:`split_labels`) -> scalar loss."""
        class_ids, values = split_labels(labels, self.targets)
        logits, predicted = split_outputs(outputs, self.num_classes)
        loss = outputs.new_zeros(())
        if self.class_loss is not None:
            loss = self.class_loss(logits, torch.as_tensor(class_ids, device=outputs.device))
        if values is not None:
            value = self.attribute_loss(predicted, torch.as_tensor(values, dtype=outputs.dtype, device=outputs.device))
            loss = loss + self.targets.attribute_weight * value if self.class_loss is not None else value
        return loss


def selection_scores(
    classification: ClassificationReport | None, regression: RegressionReport | None
) -> dict[str, float]:
    """Every dev metric a run can be selected by (:meth:`TargetSpec.metric_names`): ``wa``, ``ua``,
    ``macro_f1`` from the class report, ``ccc_mean`` and ``ccc_<attribute>`` from the attribute report.

    Example:
        >>> from s3prl_ser.training.metrics import regression_report
        >>> selection_scores(None, regression_report([[1.0], [2.0]], [[1.0], [2.0]], ["valence"]))
        {'ccc_mean': 1.0, 'ccc_valence': 1.0}
    """
    scores: dict[str, float] = {}
    if classification is not None:
        scores.update(wa=classification.wa, ua=classification.ua, macro_f1=classification.macro_f1)
    if regression is not None:
        scores["ccc_mean"] = regression.ccc_mean
        scores.update({f"ccc_{name}": value for name, value in regression.ccc.items()})
    return scores


def selection_value(scores: dict[str, float], metric: str) -> float:
    """``scores[metric]`` to rank checkpoints by (higher is better); an undefined (NaN) score
    ranks as :data:`UNDEFINED_SCORE`.

    Example:
        >>> selection_value({"ccc_mean": float("nan")}, "ccc_mean")
        -1.0
    """
    value = scores[metric]
    return UNDEFINED_SCORE if math.isnan(value) else value
