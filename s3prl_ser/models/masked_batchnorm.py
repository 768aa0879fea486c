"""BatchNorm over the valid frames of a padded batch."""

from typing import Optional

from torch import Tensor, nn

__all__ = ["MaskedBatchNorm1d"]


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` whose training statistics come from valid frames only.

    A padded batch otherwise normalises with statistics that include whatever its padding
    holds, so how much an utterance is padded changes what the model learns and the running
    statistics it is evaluated with. Here, in training, the valid frames are gathered into one
    (N, C) batch and normalised by ``nn.BatchNorm1d`` itself (batch statistics, running
    averages, ``momentum``, autocast handling all as there); padded outputs are zero. In eval
    mode, or without a mask, it is ``nn.BatchNorm1d``, and state dicts are interchangeable.

    Shapes: x (B, C, T), mask (B, 1, T) bool -> (B, C, T).
    """

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if mask is None or not self.training:
            return super().forward(x)
        valid = mask.squeeze(1)  # (B, T)
        frames = super().forward(x.transpose(1, 2)[valid])  # (N, C)
        out = x.new_zeros(x.shape[0], x.shape[2], x.shape[1])  # (B, T, C)
        out[valid] = frames.to(out.dtype)
        return out.transpose(1, 2)
