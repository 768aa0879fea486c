"""The project's ECAPA-TDNN against SpeechBrain's reference implementation.

SpeechBrain's ``speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN`` (a test extra) is built with the
same sizes, its convolutions switched from reflect to zero padding, and given the project
model's weights and BatchNorm buffers. On unpadded input, in eval mode, the embeddings must then
be the same: the remaining differences of the project's model (length masking, re-zeroed
padding, masked BatchNorm statistics, absolute lengths) only matter for padded batches.
"""

from typing import Any

import pytest
import torch

# speechbrain is in the `test` extra: a missing install fails here rather than skipping.
from speechbrain.lobes.models import ECAPA_TDNN as sb_ecapa
from speechbrain.nnet.CNN import Conv1d as SBConv1d
from speechbrain.nnet.normalization import BatchNorm1d as SBBatchNorm1d
from torch import nn

from helpers import randomize_batchnorm
from s3prl_ser.models.ecapa_tdnn import ECAPA_TDNN

INPUT_SIZE = 24
SMALL: dict[str, Any] = dict(
    channels=(32, 32, 32, 32, 96),
    kernel_sizes=(5, 3, 3, 3, 1),
    dilations=(1, 2, 3, 4, 1),
    attention_channels=16,
    res2net_scale=4,
    se_channels=16,
    lin_neurons=24,
)
CONFIGS = {
    "small": SMALL,
    # First block 16 -> 32 wide (a shortcut conv), wider kernels, an aggregation kernel > 1, no
    # global context. SpeechBrain sizes its aggregation as channels[-2] * (len(channels) - 2), so
    # the SE-Res2Net widths must be equal; its 'same' padding is symmetric, so kernels stay odd.
    "shortcut_wide_kernels": {
        **SMALL,
        "channels": (16, 32, 32, 32, 96),
        "kernel_sizes": (7, 3, 5, 3, 3),
        "global_context": False,
    },
}
# Measured with torch 2.9.1 / SpeechBrain 1.1.2 on CPU (embedding values up to ~5): max |difference|
# 0.0 for one utterance, 4.8e-7 to 6e-7 for a batch of 4 (float rounding); SpeechBrain's default
# reflect padding differs by 1.5e-2 to 2.7e-2.
TOL = dict(atol=1e-5, rtol=1e-5)

# The project names some modules differently; everything else has the same path.
RENAMES = {"res2net_block": "res2net", "se_block": "se"}
# The attention network is an nn.Sequential in the project, a TDNNBlock in SpeechBrain.
MODULE_RENAMES = {"asp.tdnn.conv": "asp.tdnn.0", "asp.tdnn.norm": "asp.tdnn.2"}


def _project_name(sb_name: str) -> str:
    name = ".".join(RENAMES.get(part, part) for part in sb_name.split("."))
    return MODULE_RENAMES.get(name, name)


def _speechbrain_copy(ours: ECAPA_TDNN, config: dict[str, Any], padding_mode: str = "constant") -> nn.Module:
    """SpeechBrain's ECAPA_TDNN with ``config``'s sizes, convolutions padded with ``padding_mode``,
    and every parameter and buffer copied from ``ours``; in eval mode.

    SpeechBrain wraps each ``nn.Conv1d`` (``.conv``) and ``nn.BatchNorm1d`` (``.norm``) in a module
    of its own; the wrapper's path, renamed, is the project module's path. Copying by name, not by
    definition order: the project defines an SE-Res2Net block's shortcut conv first, SpeechBrain
    last, and it has the shape of the block's first 1x1 conv.
    """
    kwargs = {key: list(value) if isinstance(value, tuple) else value for key, value in config.items()}
    ref = sb_ecapa.ECAPA_TDNN(INPUT_SIZE, **kwargs)
    ours_modules = dict(ours.named_modules())
    copied: set[str] = set()
    num_zero_padded = 0
    with torch.no_grad():
        for sb_name, wrapper in ref.named_modules():
            if isinstance(wrapper, SBConv1d):
                assert wrapper.padding == "same"
                wrapper.padding_mode = padding_mode  # F.pad mode; SpeechBrain's default is "reflect"
                num_zero_padded += 1
                inner = wrapper.conv
            elif isinstance(wrapper, SBBatchNorm1d):
                inner = wrapper.norm
            else:
                continue
            name = _project_name(sb_name)
            source = ours_modules[name]
            assert isinstance(source, type(inner)), (sb_name, name)  # MaskedBatchNorm1d is an nn.BatchNorm1d
            sb_tensors = dict(inner.named_parameters()) | dict(inner.named_buffers())
            our_tensors = dict(source.named_parameters()) | dict(source.named_buffers())
            assert sb_tensors.keys() == our_tensors.keys(), (sb_name, name)
            for key, target in sb_tensors.items():
                assert target.shape == our_tensors[key].shape, (f"{sb_name}.{key}", f"{name}.{key}")
                target.copy_(our_tensors[key])
                copied.add(f"{name}.{key}")
    # Every parameter and buffer of the project model was copied, each exactly once.
    assert copied == set(ours.state_dict()), set(ours.state_dict()) ^ copied
    assert len(copied) == len(ref.state_dict())
    assert num_zero_padded == sum(isinstance(m, nn.Conv1d) for m in ours.modules())
    return ref.eval()


def _models(config: dict[str, Any], padding_mode: str = "constant") -> tuple[ECAPA_TDNN, nn.Module]:
    torch.manual_seed(0)
    ours = ECAPA_TDNN(INPUT_SIZE, **config)
    randomize_batchnorm(ours)  # running statistics and affine parameters away from 0 / 1
    ours.eval()
    return ours, _speechbrain_copy(ours, config, padding_mode)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("batch_size, num_frames", [(1, 50), (4, 37)])
def test_embeddings_equal_speechbrain(one_thread, config: dict[str, Any], batch_size: int, num_frames: int) -> None:
    ours, ref = _models(config)
    x = torch.randn(batch_size, num_frames, INPUT_SIZE)  # (B, T, D) for both
    with torch.no_grad():
        expected = ref(x)  # (B, 1, lin_neurons)
        assert expected.shape == (batch_size, 1, config["lin_neurons"])
        torch.testing.assert_close(ours(x), expected.squeeze(1), **TOL)
        # Full lengths given explicitly: absolute frame counts here, relative lengths there.
        full = ours(x, torch.full((batch_size,), num_frames))
        torch.testing.assert_close(full, ref(x, torch.ones(batch_size)).squeeze(1), **TOL)


def test_speechbrain_reflect_padding_differs(one_thread) -> None:
    """The comparison sees the padding: with SpeechBrain's default reflect padding it fails."""
    ours, ref = _models(SMALL, padding_mode="reflect")
    x = torch.randn(2, 50, INPUT_SIZE)
    with torch.no_grad():
        difference = (ours(x) - ref(x).squeeze(1)).abs().max().item()
    assert difference > 1e-3
