"""Utterance classifier of the paper: an aggregator (mean pooling or ECAPA-TDNN) + a linear layer."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from torch import Tensor, nn

from s3prl_ser.models.ecapa_tdnn import ECAPA_TDNN
from s3prl_ser.models.pooling import MeanPooling

__all__ = ["AGGREGATORS", "build_aggregator", "UtteranceClassifier"]

AGGREGATORS = ("mean", "ecapa")


class _Mean(nn.Module):
    """Masked mean pooling with the aggregator interface (``output_size``)."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.output_size = input_size
        self.pool = MeanPooling()

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        return self.pool(x, lengths)


def build_aggregator(kind: str, input_size: int, ecapa: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """A frame-to-utterance aggregator: ``(B, T, D), (B,) -> (B, output_size)``.

    Args:
        kind: ``"mean"`` (masked mean pooling, paper experiments 1-4) or ``"ecapa"``
            (ECAPA-TDNN, experiments 5-11).
        input_size: D.
        ecapa: keyword arguments of :class:`~s3prl_ser.models.ecapa_tdnn.ECAPA_TDNN` (ignored for mean).
    """
    if kind == "mean":
        return _Mean(input_size)
    if kind == "ecapa":
        return ECAPA_TDNN(input_size, **dict(ecapa or {}))
    raise ValueError(f"unknown aggregator {kind!r}; expected one of {', '.join(AGGREGATORS)}")


class UtteranceClassifier(nn.Module):
    """Aggregator followed by a linear classifier.

    Args:
        input_size: D, the upstream feature dimension.
        num_classes: number of emotion classes.
        aggregator: ``"mean"`` or ``"ecapa"``.
        ecapa: ECAPA-TDNN keyword arguments.
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        aggregator: str = "ecapa",
        ecapa: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.aggregator = build_aggregator(aggregator, input_size, ecapa)
        self.classifier = nn.Linear(self.aggregator.output_size, num_classes)

    def forward(self, features: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """``(B, T, D)`` features and ``(B,)`` valid frame counts -> ``(B, num_classes)`` logits."""
        return self.classifier(self.aggregator(features, lengths))
