"""Training losses for continuous attributes and imbalanced categories.

* :func:`ccc_loss`: the sum over attributes of 1 - CCC over the batch, the MSP-Podcast
  challenge baseline's loss. CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2)
  with population (biased, divide-by-n) moments, as :func:`~s3prl_ser.training.metrics.concordance_correlation`.
* :func:`masked_mse`: the mean squared error over the known values.
* :func:`class_weights` and :class:`FocalLoss`: the cross-entropy options of the challenge's
  categorical systems.

Unknown attribute values are NaN in the target; they are masked out of both losses (an
utterance missing one attribute still trains the others) without a NaN reaching the gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ccc_loss", "masked_mse", "class_weights", "FocalLoss"]

# Keeps 1 - CCC finite when predictions and targets are one and the same constant (0 / 0).
_CCC_EPS = 1e-8


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.dim() != 2 or pred.shape != target.shape:
        raise ValueError(
            f"predictions and targets must both be (batch, attributes), got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def ccc_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Sum over attributes of ``1 - CCC`` between ``pred`` and ``target`` over the batch.

    Args:
        pred: ``(B, A)`` predictions.
        target: ``(B, A)`` targets, NaN where unknown; each attribute's CCC is over its known
            values only, and an attribute with fewer than 2 known values contributes 0.

    Returns:
        A scalar tensor, in ``[0, 2 A]`` (0 when every attribute is predicted exactly).

    Example:
        >>> t = torch.tensor([[1.0, 0.0], [2.0, float("nan")], [3.0, 1.0]])
        >>> round(ccc_loss(t.nan_to_num(0.5), t).item(), 6)  # both attributes exact on their known values
        0.0
        >>> round(ccc_loss(-t.nan_to_num(0.5), t).item(), 4)  # -x against x: (1 + 1/13) + (1 + 1/3)
        2.4103
    """
    _check_pair(pred, target)
    # float32 moments: under float16 autocast (CUDA AMP) _CCC_EPS would round to 0 and the
    # variances lose most of their digits.
    pred, target = pred.float(), target.float()
    known = ~torch.isnan(target)
    weight = known.to(pred.dtype)
    # Zeros in place of NaN: NaN * 0 is NaN, and would reach the gradient of every prediction.
    y = torch.where(known, target, torch.zeros_like(target))
    count = weight.sum(dim=0)
    n = count.clamp_min(1)
    mean_x = (pred * weight).sum(dim=0) / n
    mean_y = (y * weight).sum(dim=0) / n
    dx, dy = (pred - mean_x) * weight, (y - mean_y) * weight
    var_x, var_y = (dx * dx).sum(dim=0) / n, (dy * dy).sum(dim=0) / n
    cov = (dx * dy).sum(dim=0) / n
    ccc = 2 * cov / (var_x + var_y + (mean_x - mean_y) ** 2 + _CCC_EPS)
    return torch.where(count >= 2, 1 - ccc, torch.zeros_like(ccc)).sum()


def masked_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over the known values of ``target`` (``(B, A)``, NaN = unknown); 0
    when none is known (still a tensor of ``pred``'s graph).

    Example:
        >>> masked_mse(torch.tensor([[1.0, 5.0], [3.0, 0.0]]), torch.tensor([[0.0, float("nan")], [1.0, 0.0]]))
        tensor(1.6667)
    """
    _check_pair(pred, target)
    known = ~torch.isnan(target)
    error = torch.where(known, pred - torch.where(known, target, torch.zeros_like(target)), torch.zeros_like(pred))
    return (error * error).sum() / known.sum().clamp_min(1)


def class_weights(counts: Sequence[int]) -> Tensor:
    """Cross-entropy weights ``N / (C * n_c)`` from the training counts ``n_c`` of the ``C``
    classes (``N`` utterances): scikit-learn's ``class_weight="balanced"``, so every class
    weighs the same in total. A class with no training utterance gets weight 0 (it has
    nothing to weigh, and an infinite weight would make any stray label explode the loss).

    Returns:
        ``(C,)`` float32 weights.

    Example:
        >>> class_weights([6, 2, 0, 4])  # N = 12, C = 4
        tensor([0.5000, 1.5000, 0.0000, 0.7500])
    """
    counts_t = torch.as_tensor(list(counts), dtype=torch.float64)
    if counts_t.dim() != 1 or counts_t.numel() == 0 or bool((counts_t < 0).any()):
        raise ValueError(f"class counts must be a non-empty list of non-negative numbers, got {list(counts)}")
    total = counts_t.sum()
    if total == 0:
        raise ValueError("class weights need at least one training utterance")
    weights = torch.where(counts_t > 0, total / (counts_t.numel() * counts_t.clamp_min(1)), torch.zeros_like(counts_t))
    return weights.to(torch.float32)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy with each utterance's term scaled by
    ``(1 - p_y)^gamma``, so confidently right utterances count less and the rare, hard ones more.

    The mean is taken as :func:`torch.nn.functional.cross_entropy` takes it: over the batch,
    weighted by ``weight[y]`` when class weights are given. With ``gamma = 0`` the loss is
    exactly (bit for bit) the cross-entropy with the same weights.

    Args:
        gamma: the focusing exponent, >= 0.
        weight: ``(C,)`` class weights (:func:`class_weights`) or None.

    Example:
        >>> logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
        >>> bool(FocalLoss(0.0)(logits, labels) == F.cross_entropy(logits, labels))
        True
        >>> FocalLoss(2.0)(logits, labels) < F.cross_entropy(logits, labels)
        tensor(True)
    """

    def __init__(self, gamma: float, weight: Tensor | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal loss gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``logits`` ``(B, C)``, ``labels`` ``(B,)`` class ids -> scalar loss."""
        log_p = F.log_softmax(logits, dim=-1)
        # 1 - p as -expm1(log p): accurate near p = 1; the floor keeps the gradient of
        # (1 - p)^gamma finite for gamma < 1 when p rounds to 1.
        focus = (-torch.expm1(log_p)).clamp_min(1e-12) ** self.gamma
        return F.nll_loss(focus * log_p, labels, weight=self.weight)
