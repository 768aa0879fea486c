"""Length-aware pooling over time.

Lengths are absolute valid-frame counts: an integer tensor of shape (B,) where frame ``t`` of
utterance ``b`` is valid iff ``t < lengths[b]``. Padded frames never influence a result,
whatever they contain (padding is removed with ``masked_fill``, not multiplied by zero, so even
inf/NaN padding cannot leak). ``lengths=None`` means every frame is valid.
"""

import torch
from torch import Tensor, nn

from s3prl_ser.models.masked_batchnorm import MaskedBatchNorm1d


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """Turn valid-frame counts into a validity mask.

    Args:
        lengths: (B,) integer tensor, each value in [1, max_len].
        max_len: T, the padded length.

    Returns:
        (B, T) bool tensor, True on valid frames.

    Raises:
        ValueError: if lengths is not a 1-D integer tensor or a value lies outside [1, max_len].

    Example:
        >>> lengths_to_mask(torch.tensor([3, 1]), 4)
        tensor([[ True,  True,  True, False],
                [ True, False, False, False]])
    """
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D (B,), got shape {tuple(lengths.shape)}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(
            f"lengths must hold integer frame counts, got dtype {lengths.dtype} "
            "(relative lengths in [0, 1], as SpeechBrain uses, are not accepted)"
        )
    # Data-dependent checks would be frozen into a traced / exported graph as constants.
    if lengths.numel() > 0 and not torch.jit.is_tracing():
        shortest, longest = int(lengths.min()), int(lengths.max())
        if shortest < 1:
            raise ValueError(f"every length must be >= 1, got {shortest}")
        if longest > max_len:
            raise ValueError(f"length {longest} exceeds the number of frames T={max_len}")
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(1)


def resolve_mask(lengths: Tensor | None, batch_size: int, max_len: int, device: torch.device) -> Tensor:
    """Validated (B, T) bool mask for a batch; ``lengths=None`` marks every frame valid.

    Example:
        >>> resolve_mask(None, 2, 3, torch.device("cpu"))
        tensor([[True, True, True],
                [True, True, True]])
    """
    if lengths is None:
        return torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
    if lengths.dim() == 1 and lengths.shape[0] != batch_size:
        raise ValueError(f"got {lengths.shape[0]} lengths for a batch of {batch_size}")
    return lengths_to_mask(lengths.to(device), max_len)


def masked_mean(x: Tensor, mask: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    """Mean of ``x`` over ``dim`` counting only positions where ``mask`` is True.

    Args:
        x: any shape, e.g. (B, T, D) with dim=1 or (B, C, T) with dim=2.
        mask: bool, broadcastable to x, e.g. (B, T, 1) or (B, 1, T); at least one True per mean.
        dim: the time dimension.
        keepdim: keep ``dim`` with size 1.

    Example:
        >>> x = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [6.0], [float("nan")]]])  # (B=2, T=3, D=1)
        >>> mask = lengths_to_mask(torch.tensor([3, 2]), 3).unsqueeze(2)  # (B, T, 1)
        >>> masked_mean(x, mask, dim=1)  # the NaN padding does not leak
        tensor([[2.],
                [5.]])
    """
    total = x.masked_fill(~mask, 0.0).sum(dim=dim, keepdim=True)
    mean = total / mask.sum(dim=dim, keepdim=True).to(x.dtype)
    return mean if keepdim else mean.squeeze(dim)


def weighted_mean_std(x: Tensor, weights: Tensor, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Weighted mean and standard deviation over time.

    Args:
        x: (B, C, T), finite everywhere (zero the padding first).
        weights: (B, C, T) or (B, 1, T), non-negative, summing to 1 over T, zero on padding.
        eps: lower clamp of the variance; keeps sqrt and its gradient finite when an utterance is
            constant over time (e.g. a single frame).

    Returns:
        mean, std: each (B, C); std is the biased (population) weighted std.

    Example:
        >>> x = torch.tensor([[[1.0, 3.0, 0.0]]])  # (B=1, C=1, T=3), last frame padding
        >>> weights = torch.tensor([[[0.5, 0.5, 0.0]]])
        >>> weighted_mean_std(x, weights)
        (tensor([[2.]]), tensor([[1.]]))
    """
    mean = (weights * x).sum(dim=2)
    var = (weights * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)
    return mean, var.clamp(min=eps).sqrt()


class MeanPooling(nn.Module):
    """Masked mean over time: (B, T, D) features and (B,) lengths -> (B, D).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(2, 5, 3)  # (B, T, D)
        >>> pooled = MeanPooling()(x, torch.tensor([5, 2]))
        >>> pooled.shape
        torch.Size([2, 3])
        >>> torch.allclose(pooled[1], x[1, :2].mean(dim=0))  # mean of the 2 valid frames
        True
    """

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x: (B, T, D); lengths: (B,) integer valid-frame counts or None. Returns (B, D)."""
        if x.dim() != 3:
            raise ValueError(f"expected (B, T, D) input, got shape {tuple(x.shape)}")
        mask = resolve_mask(lengths, x.shape[0], x.shape[1], x.device)
        return masked_mean(x, mask.unsqueeze(2), dim=1)


class AttentiveStatisticsPooling(nn.Module):
    """Channel- and context-dependent attentive statistics pooling (Desplanques et al. 2020).

    Per channel, an attention distribution over the valid frames is computed from the frame
    itself and (with ``global_context``) the utterance's masked mean and std broadcast over time:
    1x1 conv + ReLU + BatchNorm (statistics over valid frames) -> tanh -> 1x1 conv to C channels
    -> softmax over time with padded frames at -inf. The output concatenates the
    attention-weighted mean and std.

    Unlike ``s3prl.nn.pooling.AttentiveStatisticsPooling`` it is batched (no per-sample loop) and
    has the global context; it matches SpeechBrain's module except that lengths are absolute
    frame counts and the output is (B, 2C) instead of (B, 2C, 1).

    Args:
        channels: C, channels of the input.
        attention_channels: hidden width of the attention network.
        global_context: feed the utterance mean and std to the attention network.
        eps: variance clamp of the std (see :func:`weighted_mean_std`).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> asp = AttentiveStatisticsPooling(channels=4, attention_channels=8).eval()
        >>> x = torch.randn(2, 4, 10)  # (B, C, T)
        >>> out = asp(x, torch.tensor([10, 6]))
        >>> out.shape  # attention-weighted mean and std: (B, 2C)
        torch.Size([2, 8])
        >>> torch.allclose(out[1], asp(x[1:, :, :6])[0], atol=1e-6)  # same as unpadded
        True
    """

    def __init__(
        self,
        channels: int,
        attention_channels: int = 128,
        global_context: bool = True,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if channels < 1 or attention_channels < 1:
            raise ValueError(f"channels ({channels}) and attention_channels ({attention_channels}) must be >= 1")
        self.channels = channels
        self.global_context = global_context
        self.eps = eps
        in_channels = 3 * channels if global_context else channels
        self.tdnn = nn.Sequential(
            nn.Conv1d(in_channels, attention_channels, kernel_size=1),
            nn.ReLU(),
            MaskedBatchNorm1d(attention_channels),
        )
        self.conv = nn.Conv1d(attention_channels, channels, kernel_size=1)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x: (B, C, T); lengths: (B,) integer valid-frame counts or None. Returns (B, 2C)."""
        if x.dim() != 3 or x.shape[1] != self.channels:
            raise ValueError(f"expected (B, {self.channels}, T) input, got shape {tuple(x.shape)}")
        num_frames = x.shape[2]
        mask = resolve_mask(lengths, x.shape[0], num_frames, x.device).unsqueeze(1)  # (B, 1, T)
        x = x.masked_fill(~mask, 0.0)

        if self.global_context:
            uniform = mask.to(x.dtype) / mask.sum(dim=2, keepdim=True).to(x.dtype)
            mean, std = weighted_mean_std(x, uniform, self.eps)
            context = [s.unsqueeze(2).expand(-1, -1, num_frames) for s in (mean, std)]
            attention_input = torch.cat([x, *context], dim=1)
        else:
            attention_input = x

        conv, relu, norm = self.tdnn
        logits = self.conv(torch.tanh(norm(relu(conv(attention_input)), mask)))
        weights = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=2)
        mean, std = weighted_mean_std(x, weights, self.eps)
        return torch.cat([mean, std], dim=1)
