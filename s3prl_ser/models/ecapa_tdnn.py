"""Length-aware ECAPA-TDNN utterance encoder (Desplanques et al. 2020, SpeechBrain defaults).

Every block takes a (B, 1, T) bool mask of valid frames. Convolutions use zero 'same' padding
and padded frames are set back to zero after every block, so a valid frame only ever sees valid
frames and zeros, exactly what it sees when the utterance is run alone; squeeze-excitation,
pooling and BatchNorm training statistics are masked. In eval mode an embedding therefore does
not depend on what the utterance is batched or padded with, and in training the amount of
padding changes nothing.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from s3prl_ser.models.masked_batchnorm import MaskedBatchNorm1d
from s3prl_ser.models.pooling import AttentiveStatisticsPooling, masked_mean, resolve_mask


class TDNNBlock(nn.Module):
    """Dilated Conv1d (zero 'same' padding) -> ReLU -> BatchNorm1d over valid frames, padding re-zeroed.

    (B, C_in, T) and a (B, 1, T) bool mask -> (B, C_out, T).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, padding="same")
        self.activation = nn.ReLU()
        self.norm = MaskedBatchNorm1d(out_channels)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        # Conv bias and the BN shift make padded frames non-zero; the next conv must see zeros
        # there, as an utterance run alone sees zero padding past its end.
        return self.norm(self.activation(self.conv(x)), mask).masked_fill(~mask, 0.0)


class Res2NetBlock(nn.Module):
    """Res2Net: split channels into ``scale`` groups, group i>0 goes through a dilated TDNN block
    fed with its input plus the previous group's output; group 0 passes through.

    (B, C, T) and a (B, 1, T) mask -> (B, C, T).
    """

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.scale = scale
        width = channels // scale
        self.blocks = nn.ModuleList(TDNNBlock(width, width, kernel_size, dilation) for _ in range(scale - 1))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        chunks = x.chunk(self.scale, dim=1)
        outputs = [chunks[0]]
        y: Tensor | None = None
        for block, chunk in zip(self.blocks, chunks[1:]):
            y = block(chunk if y is None else chunk + y, mask)
            outputs.append(y)
        return torch.cat(outputs, dim=1)


class SEBlock(nn.Module):
    """Squeeze-excitation with the squeeze averaged over valid frames only.

    (B, C, T) and a (B, 1, T) mask -> (B, C, T).
    """

    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, se_channels, kernel_size=1)
        self.conv2 = nn.Conv1d(se_channels, channels, kernel_size=1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        squeeze = masked_mean(x, mask, dim=2, keepdim=True)  # (B, C, 1)
        return x * torch.sigmoid(self.conv2(torch.relu(self.conv1(squeeze))))


class SERes2NetBlock(nn.Module):
    """1x1 TDNN -> Res2Net -> 1x1 TDNN -> SE, plus a residual (1x1 conv when widths differ).

    (B, C_in, T) and a (B, 1, T) mask -> (B, C_out, T).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        res2net_scale: int,
        se_channels: int,
        kernel_size: int,
        dilation: int,
    ) -> None:
        super().__init__()
        self.shortcut = nn.Conv1d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        self.tdnn1 = TDNNBlock(in_channels, out_channels, kernel_size=1, dilation=1)
        self.res2net = Res2NetBlock(out_channels, res2net_scale, kernel_size, dilation)
        self.tdnn2 = TDNNBlock(out_channels, out_channels, kernel_size=1, dilation=1)
        self.se = SEBlock(out_channels, se_channels)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        out = self.se(self.tdnn2(self.res2net(self.tdnn1(x, mask), mask), mask), mask)
        # The shortcut conv's bias is non-zero on padded frames.
        return (out + residual).masked_fill(~mask, 0.0)


class ECAPA_TDNN(nn.Module):
    """ECAPA-TDNN utterance embedding (Desplanques et al. 2020) with length masking.

    Architecture as in SpeechBrain's ``speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN`` with its
    defaults: a TDNN block (conv + ReLU + BN), ``len(channels) - 2`` SE-Res2Net blocks,
    multi-layer feature aggregation (their outputs concatenated, 1x1 TDNN block to
    ``channels[-1]``), attentive statistics pooling, BatchNorm over 2 * ``channels[-1]`` and a 1x1
    conv to ``lin_neurons``.

    Differences from SpeechBrain:
        * Zero 'same' padding instead of reflect padding, and padded frames are re-zeroed after
          every block. Reflect padding mirrors the frames next to the edge, so a batched
          utterance's last valid frames would see padding content (and differ from the same
          utterance run alone); SpeechBrain also lets padding flow through its convolutions,
          masking only in the SE and pooling statistics.
        * ``lengths`` are absolute valid-frame counts (long), not relative lengths in [0, 1].
        * The output is (B, lin_neurons), not (B, 1, lin_neurons); no ``activation``/``groups``
          options, ReLU and dense convolutions only.
    Differences from ``s3prl.nn.speaker_model.ECAPA_TDNN``: that one defaults to C=1024, returns
    frame-level features (pooling is separate) and applies no length masking at all.

    Frame-level BatchNorms take their training statistics from valid frames only
    (:class:`~s3prl_ser.models.masked_batchnorm.MaskedBatchNorm1d`; SpeechBrain's include padding), so
    padding changes neither training nor the running statistics. Train-mode outputs still depend
    on the other utterances of the batch, as with any BatchNorm; eval-mode outputs do not.

    Args:
        input_size: D, feature dimension of the input.
        channels: widths of the first TDNN block, the SE-Res2Net blocks and the aggregation.
        kernel_sizes: kernel size per entry of ``channels``.
        dilations: dilation per entry of ``channels``.
        attention_channels: hidden width of the attentive statistics pooling.
        res2net_scale: number of Res2Net groups; must divide the SE-Res2Net widths.
        se_channels: bottleneck width of the squeeze-excitation.
        global_context: give the attention the utterance mean and std.
        lin_neurons: embedding size.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = ECAPA_TDNN(
        ...     16, channels=(16, 16, 16, 32), kernel_sizes=(5, 3, 3, 1), dilations=(1, 2, 3, 1),
        ...     attention_channels=8, res2net_scale=4, se_channels=8, lin_neurons=12,
        ... ).eval()
        >>> x = torch.randn(3, 40, 16)  # (B, T, D)
        >>> lengths = torch.tensor([40, 25, 9])
        >>> emb = model(x, lengths)
        >>> emb.shape  # (B, lin_neurons)
        torch.Size([3, 12])
        >>> # An utterance embeds the same alone as in a padded batch, whatever the padding holds.
        >>> alone = model(x[1:2, :25])
        >>> torch.allclose(emb[1], alone[0], atol=1e-5)
        True
        >>> garbage = x.clone()
        >>> garbage[1, 25:] = 1e4
        >>> torch.allclose(model(garbage, lengths), emb, atol=1e-5)
        True
    """

    def __init__(
        self,
        input_size: int,
        channels: Sequence[int] = (512, 512, 512, 512, 1536),
        kernel_sizes: Sequence[int] = (5, 3, 3, 3, 1),
        dilations: Sequence[int] = (1, 2, 3, 4, 1),
        attention_channels: int = 128,
        res2net_scale: int = 8,
        se_channels: int = 128,
        global_context: bool = True,
        lin_neurons: int = 192,
    ) -> None:
        super().__init__()
        channels, kernel_sizes, dilations = list(channels), list(kernel_sizes), list(dilations)
        if not len(channels) == len(kernel_sizes) == len(dilations):
            raise ValueError(
                f"channels, kernel_sizes and dilations must have the same length, got "
                f"{len(channels)}, {len(kernel_sizes)} and {len(dilations)}"
            )
        if len(channels) < 3:
            raise ValueError(
                "channels needs at least 3 entries (first TDNN block, >= 1 SE-Res2Net block, "
                f"aggregation), got {len(channels)}"
            )
        sizes = {
            "input_size": input_size,
            "attention_channels": attention_channels,
            "res2net_scale": res2net_scale,
            "se_channels": se_channels,
            "lin_neurons": lin_neurons,
        }
        for name, values in (
            ("channels", channels),
            ("kernel_sizes", kernel_sizes),
            ("dilations", dilations),
        ):
            sizes.update({f"{name}[{i}]": v for i, v in enumerate(values)})
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for i, width in enumerate(channels[1:-1], start=1):
            if width % res2net_scale:
                raise ValueError(f"channels[{i}]={width} is not divisible by res2net_scale={res2net_scale}")

        self.input_size = input_size
        self.output_size = lin_neurons
        self.blocks = nn.ModuleList([TDNNBlock(input_size, channels[0], kernel_sizes[0], dilations[0])])
        for i in range(1, len(channels) - 1):
            self.blocks.append(
                SERes2NetBlock(
                    channels[i - 1],
                    channels[i],
                    res2net_scale,
                    se_channels,
                    kernel_sizes[i],
                    dilations[i],
                )
            )
        self.mfa = TDNNBlock(sum(channels[1:-1]), channels[-1], kernel_sizes[-1], dilations[-1])
        self.asp = AttentiveStatisticsPooling(channels[-1], attention_channels, global_context)
        self.asp_bn = nn.BatchNorm1d(2 * channels[-1])
        self.fc = nn.Conv1d(2 * channels[-1], lin_neurons, kernel_size=1)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Embed a padded batch.

        Args:
            x: (B, T, D) features, D == input_size.
            lengths: (B,) long valid-frame counts in [1, T]; None means all T frames are valid.

        Returns:
            (B, lin_neurons) utterance embeddings.
        """
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"expected (B, T, {self.input_size}) features, got shape {tuple(x.shape)}")
        mask = resolve_mask(lengths, x.shape[0], x.shape[1], x.device).unsqueeze(1)  # (B, 1, T)
        x = x.transpose(1, 2).masked_fill(~mask, 0.0)

        x = self.blocks[0](x, mask)
        hidden = []
        for block in self.blocks[1:]:
            x = block(x, mask)
            hidden.append(x)
        x = self.mfa(torch.cat(hidden, dim=1), mask)

        pooled = self.asp_bn(self.asp(x, lengths))  # (B, 2C)
        return self.fc(pooled.unsqueeze(2)).squeeze(2)
