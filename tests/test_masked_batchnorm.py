"""MaskedBatchNorm1d against nn.BatchNorm1d on the valid frames alone."""

import pytest
import torch
from torch import nn

from s3prl_ser.models.masked_batchnorm import MaskedBatchNorm1d
from s3prl_ser.models.pooling import lengths_to_mask


def _pair(channels=3):
    torch.manual_seed(0)
    masked, plain = MaskedBatchNorm1d(channels, momentum=0.3), nn.BatchNorm1d(channels, momentum=0.3)
    with torch.no_grad():
        masked.weight.uniform_(0.5, 2), masked.bias.uniform_(-1, 1)
    plain.load_state_dict(masked.state_dict())
    return masked, plain


def test_training_statistics_come_from_valid_frames_only():
    masked, plain = _pair()
    lengths = torch.tensor([5, 2, 7])
    x = torch.randn(3, 3, 7)
    x[0, :, 5:], x[1, :, 2:] = 1e3, -1e3  # padding that would dominate unmasked statistics
    mask = lengths_to_mask(lengths, 7).unsqueeze(1)
    out = masked(x, mask)
    valid = torch.cat([x[b, :, :n] for b, n in enumerate(lengths.tolist())], dim=1).unsqueeze(0)  # (1, C, 14)
    expected = plain(valid)[0]
    assert torch.allclose(
        torch.cat([out[b, :, :n] for b, n in enumerate(lengths.tolist())], dim=1), expected, atol=1e-5
    )
    assert torch.allclose(masked.running_mean, plain.running_mean, atol=1e-6)
    assert torch.allclose(masked.running_var, plain.running_var, atol=1e-5)  # unbiased, as BatchNorm1d
    assert masked.num_batches_tracked.item() == plain.num_batches_tracked.item() == 1


def test_without_padding_or_in_eval_it_is_batchnorm():
    masked, plain = _pair()
    x = torch.randn(4, 3, 6)
    full = torch.ones(4, 1, 6, dtype=torch.bool)
    assert torch.allclose(masked(x, full), plain(x), atol=1e-5)
    assert torch.allclose(masked.running_var, plain.running_var, atol=1e-6)
    masked.eval(), plain.eval()
    assert torch.equal(masked(x, full), plain(x))
    assert torch.equal(masked(x), plain(x))


@pytest.mark.parametrize("momentum", [None, 0.1])
def test_cumulative_and_exponential_running_averages(momentum):
    masked, plain = MaskedBatchNorm1d(2, momentum=momentum), nn.BatchNorm1d(2, momentum=momentum)
    for seed in range(3):
        x = torch.randn(2, 2, 5, generator=torch.Generator().manual_seed(seed))
        masked(x, torch.ones(2, 1, 5, dtype=torch.bool)), plain(x)
    assert torch.allclose(masked.running_mean, plain.running_mean, atol=1e-6)
    assert torch.allclose(masked.running_var, plain.running_var, atol=1e-6)


def test_under_autocast_statistics_stay_float32():
    """AMP feeds half-precision activations; statistics and buffers must stay float32."""
    masked = MaskedBatchNorm1d(3)
    conv = nn.Conv1d(2, 3, 1)
    x = torch.randn(2, 2, 9)
    mask = lengths_to_mask(torch.tensor([9, 4]), 9).unsqueeze(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = conv(x)
        out = masked(hidden, mask)
    assert hidden.dtype == out.dtype == torch.bfloat16
    assert masked.running_mean.dtype == masked.running_var.dtype == torch.float32
    out.float().sum().backward()
    assert torch.isfinite(conv.weight.grad).all() and torch.isfinite(masked.weight.grad).all()
    reference = MaskedBatchNorm1d(3)
    reference(hidden.detach().float(), mask)
    assert torch.allclose(masked.running_mean, reference.running_mean, atol=1e-3)
