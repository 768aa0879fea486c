"""BatchNorm over the valid frames of a padded batch."""

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["MaskedBatchNorm1d"]


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` whose training statistics come from valid frames only.

    A padded batch otherwise normalises with statistics that include whatever its padding
    holds, so how much an utterance is padded changes what the model learns and the running
    statistics it is evaluated with. Here, in training, the per-channel mean and (biased)
    variance are taken over the frames where ``mask`` is true, and the running statistics are
    updated from them as ``nn.BatchNorm1d`` does (unbiased variance, ``momentum``). In eval mode,
    or without a mask, it is ``nn.BatchNorm1d``. Parameters and buffers are those of
    ``nn.BatchNorm1d``, so state dicts are interchangeable.

    Shapes: x (B, C, T), mask (B, 1, T) bool -> (B, C, T). Padded outputs are not meaningful.
    """

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if mask is None or not self.training or x.dim() != 3:
            return super().forward(x)
        weights = mask.to(torch.float32)
        count = weights.sum()
        # Statistics in float32, as BatchNorm runs under autocast.
        values = x.float()
        mean = (values * weights).sum(dim=(0, 2)) / count
        var = ((values - mean[:, None]).pow(2) * weights).sum(dim=(0, 2)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        out = (values - mean[:, None]) * torch.rsqrt(var[:, None] + self.eps)
        if self.affine:
            out = out * self.weight[:, None].float() + self.bias[:, None].float()
        return out.to(x.dtype)
