"""BatchNorm over the valid frames of a padded batch."""

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

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> bn = MaskedBatchNorm1d(4)
        >>> x = torch.randn(2, 4, 6)  # (B, C, T)
        >>> mask = (torch.arange(6) < torch.tensor([[6], [3]])).unsqueeze(1)  # (B, 1, T): lengths 6 and 3
        >>> y = bn(x, mask)
        >>> y.shape
        torch.Size([2, 4, 6])
        >>> y[1, :, 3:].abs().max().item()  # padded frames are zero
        0.0
        >>> valid = y.transpose(1, 2)[mask.squeeze(1)]  # (N, C) normalised valid frames
        >>> bool(valid.mean(dim=0).abs().max() < 1e-6)  # zero mean over valid frames only
        True
        >>> torch.equal(bn(x.masked_fill(~mask, 1e4), mask), y)  # padding content changes nothing
        True
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None or not self.training:
            return super().forward(x)
        valid = mask.squeeze(1)  # (B, T)
        frames = super().forward(x.transpose(1, 2)[valid])  # (N, C)
        out = x.new_zeros(x.shape[0], x.shape[2], x.shape[1])  # (B, T, C)
        out[valid] = frames.to(out.dtype)
        return out.transpose(1, 2)
