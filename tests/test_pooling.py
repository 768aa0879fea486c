import pytest
import torch

from helpers import pad_with_noise, randomize_batchnorm
from s3prl_ser.models.pooling import (
    AttentiveStatisticsPooling,
    MeanPooling,
    lengths_to_mask,
    weighted_mean_std,
)


def test_lengths_to_mask() -> None:
    mask = lengths_to_mask(torch.tensor([3, 1, 4]), 4)
    expected = torch.tensor([[True, True, True, False], [True, False, False, False], [True, True, True, True]])
    assert mask.dtype == torch.bool
    assert torch.equal(mask, expected)


@pytest.mark.parametrize(
    "lengths, match",
    [
        (torch.tensor([[3, 2]]), "1-D"),
        (torch.tensor([0.5, 1.0]), "integer"),
        (torch.tensor([3, 0]), ">= 1"),
        (torch.tensor([3, 5]), "exceeds"),
    ],
)
def test_lengths_to_mask_rejects_bad_lengths(lengths: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lengths_to_mask(lengths, 4)


def test_mean_pooling_matches_hand_computed_mean() -> None:
    torch.manual_seed(0)
    lengths = torch.tensor([5, 2, 1])
    x = pad_with_noise(torch.randn(3, 5, 4), lengths, time_dim=1)
    pooled = MeanPooling()(x, lengths)
    assert pooled.shape == (3, 4)
    for b, length in enumerate(lengths.tolist()):
        torch.testing.assert_close(pooled[b], x[b, :length].mean(dim=0))


def test_mean_pooling_without_lengths_and_with_non_finite_padding() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3)
    torch.testing.assert_close(MeanPooling()(x), x.mean(dim=1))
    lengths = torch.tensor([6, 4])
    poisoned = x.clone()
    poisoned[1, 4] = float("inf")
    poisoned[1, 5] = float("nan")
    torch.testing.assert_close(MeanPooling()(poisoned, lengths)[1], x[1, :4].mean(dim=0))


@pytest.mark.parametrize("global_context", [True, False])
def test_asp_output_shape(global_context: bool) -> None:
    pool = AttentiveStatisticsPooling(6, attention_channels=4, global_context=global_context)
    out = pool(torch.randn(3, 6, 10), torch.tensor([10, 3, 1]))
    assert out.shape == (3, 12)
    assert torch.isfinite(out).all()


def test_asp_with_constant_attention_gives_plain_mean_and_std() -> None:
    torch.manual_seed(0)
    pool = AttentiveStatisticsPooling(5, attention_channels=3).eval()
    # Zero weights make the attention logits the bias alone, constant over time.
    torch.nn.init.zeros_(pool.conv.weight)
    lengths = torch.tensor([7, 3, 1])
    x = pad_with_noise(torch.randn(3, 5, 7), lengths, time_dim=2)
    out = pool(x, lengths)
    for b, length in enumerate(lengths.tolist()):
        frames = x[b, :, :length]
        torch.testing.assert_close(out[b, :5], frames.mean(dim=1))
        # Population std; a single frame gives sqrt(eps) = 1e-6.
        torch.testing.assert_close(out[b, 5:], frames.std(dim=1, correction=0), atol=1e-5, rtol=1e-5)


def test_weighted_mean_std_matches_hand_computed() -> None:
    x = torch.tensor([[[1.0, 3.0, 100.0]]])
    weights = torch.tensor([[[0.25, 0.75, 0.0]]])
    mean, std = weighted_mean_std(x, weights)
    torch.testing.assert_close(mean, torch.tensor([[2.5]]))
    # 0.25 * 1.5^2 + 0.75 * 0.5^2 = 0.75
    torch.testing.assert_close(std, torch.tensor([[0.75**0.5]]))


@pytest.mark.parametrize("global_context", [True, False])
def test_asp_batched_equals_alone(global_context: bool) -> None:
    torch.manual_seed(0)
    pool = AttentiveStatisticsPooling(8, attention_channels=4, global_context=global_context)
    randomize_batchnorm(pool)
    pool.eval()
    lengths = torch.tensor([12, 5, 1, 9])
    x = pad_with_noise(torch.randn(4, 8, 12), lengths, time_dim=2)
    with torch.no_grad():
        batched = pool(x, lengths)
        for b, length in enumerate(lengths.tolist()):
            alone = pool(x[b : b + 1, :, :length], lengths[b : b + 1])
            torch.testing.assert_close(batched[b : b + 1], alone, atol=1e-5, rtol=1e-5)


def test_asp_gradients_flow_with_single_frame_utterances() -> None:
    torch.manual_seed(0)
    pool = AttentiveStatisticsPooling(6, attention_channels=4).train()
    lengths = torch.tensor([1, 8, 1, 4])
    x = torch.randn(4, 6, 8, requires_grad=True)
    pool(x, lengths).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[0, :, 1:] == 0).all(), "padding must receive no gradient"
    for name, param in pool.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_asp_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="channels"):
        AttentiveStatisticsPooling(0)
    pool = AttentiveStatisticsPooling(6, attention_channels=4)
    with pytest.raises(ValueError, match=r"\(B, 6, T\)"):
        pool(torch.randn(2, 5, 10))
    with pytest.raises(ValueError, match="2 lengths for a batch of 3"):
        pool(torch.randn(3, 6, 10), torch.tensor([10, 4]))
