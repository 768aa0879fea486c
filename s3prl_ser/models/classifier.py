"""Utterance classifier of the paper: an aggregator (mean pooling or ECAPA-TDNN) + a linear layer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from s3prl_ser.config import expert_default
from s3prl_ser.models.ecapa_tdnn import ECAPA_TDNN
from s3prl_ser.models.pooling import MeanPooling

__all__ = ["AGGREGATORS", "build_aggregator", "UtteranceClassifier"]

AGGREGATORS = ("mean", "ecapa")


class _Projected(nn.Module):
    """A frame-wise linear projection, then an aggregator (s3prl's ``projector`` of SUPERB's
    emotion downstream). The bias makes padded frames non-zero; both aggregators mask them."""

    def __init__(self, input_size: int, projector_dim: int, aggregator: nn.Module) -> None:
        super().__init__()
        self.projector = nn.Linear(input_size, projector_dim)
        self.aggregator = aggregator
        self.output_size = aggregator.output_size

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.aggregator(self.projector(x), lengths)


class _Mean(nn.Module):
    """Masked mean pooling with the aggregator interface (``output_size``)."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.output_size = input_size
        self.pool = MeanPooling()

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.pool(x, lengths)


def build_aggregator(
    kind: str | None, input_size: int, ecapa: Mapping[str, Any] | None = None, projector_dim: int | None = None
) -> nn.Module:
    """A frame-to-utterance aggregator: ``(B, T, D), (B,) -> (B, output_size)``.

    Args:
        kind: ``"mean"`` (masked mean pooling, paper experiments 1-4) or ``"ecapa"``
            (ECAPA-TDNN, experiments 5-11); None: ``modelrc.aggregator`` of ``emotion_ecapa``'s
            ``config.yaml``.
        input_size: D.
        ecapa: keyword arguments of :class:`~s3prl_ser.models.ecapa_tdnn.ECAPA_TDNN` (ignored for mean).
        projector_dim: P, a frame-wise linear projection D -> P first (SUPERB's emotion
            downstream uses 256); ``None``: none.

    Example:
        >>> build_aggregator("mean", 8).output_size  # D
        8
        >>> build_aggregator("mean", 8, projector_dim=6).output_size  # P
        6
        >>> ecapa = {"channels": (16, 16, 32), "kernel_sizes": (5, 3, 1), "dilations": (1, 2, 1), "lin_neurons": 12}
        >>> build_aggregator("ecapa", 8, ecapa).output_size  # lin_neurons
        12
    """
    if kind is None:
        kind = expert_default("modelrc", "aggregator")
    if projector_dim is not None:
        if isinstance(projector_dim, bool) or not isinstance(projector_dim, int) or projector_dim < 1:
            raise ValueError(f"projector_dim must be a positive integer or null, got {projector_dim!r}")
        return _Projected(input_size, projector_dim, build_aggregator(kind, projector_dim, ecapa))
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
        aggregator: ``"mean"`` or ``"ecapa"``; None: ``modelrc.aggregator`` of ``emotion_ecapa``'s
            ``config.yaml``.
        ecapa: ECAPA-TDNN keyword arguments.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> small = {"channels": (16, 16, 32), "kernel_sizes": (5, 3, 1), "dilations": (1, 2, 1),
        ...          "attention_channels": 8, "se_channels": 8, "lin_neurons": 12}  # a tiny ECAPA-TDNN
        >>> model = UtteranceClassifier(input_size=8, num_classes=4, aggregator="ecapa", ecapa=small)
        >>> features, lengths = torch.randn(2, 30, 8), torch.tensor([30, 17])  # (B, T, D), (B,)
        >>> model(features, lengths).shape  # (B, num_classes)
        torch.Size([2, 4])
        >>> mean = UtteranceClassifier(input_size=8, num_classes=4, aggregator="mean")
        >>> logits = mean(features, lengths)
        >>> torch.allclose(logits[1], mean.classifier(features[1, :17].mean(dim=0)))  # valid frames only
        True
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        aggregator: str | None = None,
        ecapa: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.aggregator = build_aggregator(aggregator, input_size, ecapa)
        self.classifier = nn.Linear(self.aggregator.output_size, num_classes)

    def forward(self, features: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(B, T, D)`` features and ``(B,)`` valid frame counts -> ``(B, num_classes)`` logits."""
        return self.classifier(self.aggregator(features, lengths))
