from typing import Any

import pytest
import torch

from helpers import pad_with_noise, randomize_batchnorm
from s3prl_ser.models.ecapa_tdnn import ECAPA_TDNN
from s3prl_ser.models.pooling import lengths_to_mask

SMALL: dict[str, Any] = dict(
    channels=(32, 32, 32, 32, 96),
    res2net_scale=4,
    attention_channels=16,
    se_channels=16,
    lin_neurons=24,
)


def _small(input_size: int = 8, **overrides: Any) -> ECAPA_TDNN:
    return ECAPA_TDNN(input_size, **{**SMALL, **overrides})


def test_output_shape() -> None:
    torch.manual_seed(0)
    model = _small().eval()
    x = torch.randn(3, 20, 8)
    out = model(x, torch.tensor([20, 7, 1]))
    assert out.shape == (3, 24)
    assert torch.isfinite(out).all()
    # No lengths: every frame is valid.
    torch.testing.assert_close(model(x), model(x, torch.tensor([20, 20, 20])))


def test_default_config_shape_and_size() -> None:
    model = ECAPA_TDNN(80).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 30, 80), torch.tensor([30, 12]))
    assert out.shape == (2, 192)
    # The ECAPA-TDNN paper reports 6.2M parameters for C=512.
    assert 5e6 < sum(p.numel() for p in model.parameters()) < 7.5e6


@pytest.mark.parametrize(
    "overrides",
    [
        # Wider kernels than the defaults: receptive fields reach far into the padding.
        dict(kernel_sizes=(7, 3, 5, 3, 1)),
        # Width changes (shortcut convs) and an aggregation kernel > 1, without global context.
        dict(channels=(16, 32, 48, 32, 96), kernel_sizes=(5, 3, 3, 3, 3), global_context=False),
    ],
)
def test_embedding_independent_of_batching_and_padding(overrides: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = _small(**overrides)
    randomize_batchnorm(model)
    model.eval()
    lengths = torch.tensor([30, 11, 1, 4, 23])
    x = pad_with_noise(torch.randn(5, 30, 8), lengths)
    with torch.no_grad():
        batched = model(x, lengths)
        for b, length in enumerate(lengths.tolist()):
            alone = model(x[b : b + 1, :length], lengths[b : b + 1])
            torch.testing.assert_close(batched[b : b + 1], alone, atol=1e-5, rtol=1e-5)


def test_training_does_not_depend_on_padding() -> None:
    """Train-mode outputs and the BatchNorm running statistics are the same whether a batch is
    padded to its longest utterance or by hundreds of frames more (noise in the padding)."""
    torch.manual_seed(0)
    lengths = torch.tensor([20, 6, 13])
    x = torch.randn(3, 20, 8)
    tight, padded = _small(), _small()
    padded.load_state_dict(tight.state_dict())
    long = pad_with_noise(torch.cat([x, torch.zeros(3, 300, 8)], dim=1), lengths)
    torch.testing.assert_close(tight.train()(x, lengths), padded.train()(long, lengths), atol=1e-5, rtol=1e-4)
    buffers = dict(padded.named_buffers())
    for name, value in tight.named_buffers():
        torch.testing.assert_close(value, buffers[name], atol=1e-5, rtol=1e-4, msg=name)


def test_blocks_output_zero_on_padding() -> None:
    torch.manual_seed(0)
    model = _small(channels=(16, 32, 48, 32, 96))
    randomize_batchnorm(model)
    model.eval()
    lengths = torch.tensor([12, 3])
    padding = ~lengths_to_mask(lengths, 12).unsqueeze(1)  # (B, 1, T)
    outputs = []
    for block in [*model.blocks, model.mfa]:
        block.register_forward_hook(lambda module, args, out: outputs.append(out))
    with torch.no_grad():
        model(pad_with_noise(torch.randn(2, 12, 8), lengths), lengths)
    assert len(outputs) == 5
    for out in outputs:
        assert (out.masked_select(padding) == 0).all()


@pytest.mark.parametrize("lengths, num_frames", [([1, 9, 4], 9), ([1, 1], 1)])
def test_gradients_flow_in_train_mode(lengths: list, num_frames: int) -> None:
    torch.manual_seed(0)
    model = _small().train()
    lengths_t = torch.tensor(lengths)
    x = torch.randn(len(lengths), num_frames, 8, requires_grad=True)
    model(x, lengths_t).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()
    for b, length in enumerate(lengths):
        assert (x.grad[b, length:] == 0).all(), "padding must receive no gradient"
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(kernel_sizes=(5, 3, 3, 1)), "same length"),
        (dict(dilations=(1, 2, 3, 4)), "same length"),
        (dict(channels=(32, 96), kernel_sizes=(5, 1), dilations=(1, 1)), "at least 3"),
        (dict(channels=(32, 30, 32, 32, 96)), r"channels\[1\]=30 is not divisible"),
        (dict(res2net_scale=0), "res2net_scale must be >= 1"),
        (dict(dilations=(1, 0, 3, 4, 1)), r"dilations\[1\] must be >= 1"),
        (dict(lin_neurons=0), "lin_neurons"),
    ],
)
def test_rejects_bad_constructor_arguments(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _small(**overrides)


@pytest.mark.parametrize(
    "x, lengths, match",
    [
        (torch.randn(2, 10), None, r"\(B, T, 8\)"),
        (torch.randn(2, 10, 7), None, r"\(B, T, 8\)"),
        (torch.randn(2, 10, 8), torch.tensor([10, 11]), "exceeds"),
        (torch.randn(2, 10, 8), torch.tensor([10, 0]), ">= 1"),
        (torch.randn(2, 10, 8), torch.tensor([10]), "1 lengths for a batch of 2"),
        (torch.randn(2, 10, 8), torch.tensor([1.0, 0.5]), "integer"),
    ],
)
def test_rejects_bad_forward_arguments(x: torch.Tensor, lengths: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _small()(x, lengths)


def test_learns_temporal_variance() -> None:
    """Classes differ only in how much frames vary over time around a random per-utterance
    offset: the time mean is distributed alike, so mean pooling cannot separate them."""
    torch.manual_seed(0)
    batch, num_frames, dim = 32, 40, 8
    labels = torch.arange(batch) % 2
    lengths = torch.randint(15, num_frames + 1, (batch,))
    offset = torch.randn(batch, 1, dim)
    spread = torch.where(labels == 1, 1.0, 0.3).view(batch, 1, 1)
    x = pad_with_noise(offset + spread * torch.randn(batch, num_frames, dim), lengths)

    encoder, head = _small(dim), torch.nn.Linear(24, 2)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    # No early stop: eval-mode BatchNorm needs its running statistics to catch up.
    for _ in range(50):
        loss = torch.nn.functional.cross_entropy(head(encoder(x, lengths)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    encoder.eval()
    with torch.no_grad():
        accuracy = (head(encoder(x, lengths)).argmax(dim=1) == labels).float().mean()
    assert accuracy == 1.0, f"accuracy {accuracy:.2f}, last loss {loss.item():.3f}"
