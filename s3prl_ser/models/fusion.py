"""Emotion classifiers over one or several feature streams, with early or late fusion.

A *stream* is one upstream's features: a list of ``(T_b, D_s)`` tensors, one per utterance.

* single stream: aggregator (mean or ECAPA-TDNN) + linear (paper experiments 1-6, 9, 10);
* ``early``: streams aligned frame by frame and concatenated along features before one
  aggregator (experiment 7: HuBERT + W2V2);
* ``late``: one aggregator per stream, utterance embeddings concatenated before the linear
  classifier (experiments 8 and 11: HuBERT & W2V2, fbank & BERT).

Alignment rule for early fusion (:func:`align_streams`): every stream is brought to the
coarsest frame rate -- the largest downsample rate r_max, in samples per frame -- by
averaging each run of ``r_max / r_s`` consecutive frames (a trailing partial run is averaged
over the frames it has), then all streams are cut to the shortest one. The ratios must be
integers (fbank's 160 and HuBERT's 320 give 2). Upstreams disagree by a frame or two at the
utterance edges (padding conventions), hence the cut; a larger disagreement means the rates
are wrong and raises an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from s3prl_ser.models.classifier import build_aggregator

__all__ = ["FUSIONS", "MAX_FRAME_MISMATCH", "pool_frames", "align_streams", "EmotionClassifier", "split_outputs"]

FUSIONS = ("early", "late")
MAX_FRAME_MISMATCH = 2


def pool_frames(frames: Tensor, factor: int) -> Tensor:
    """Average each run of ``factor`` consecutive frames: ``(T, D) -> (ceil(T / factor), D)``.

    Example:
        >>> pool_frames(torch.tensor([[1.0], [3.0], [5.0]]), 2)  # the trailing partial run has one frame
        tensor([[2.],
                [5.]])
    """
    if factor == 1:
        return frames
    length = frames.shape[0]
    groups = -(-length // factor)
    padded = torch.nn.functional.pad(frames, (0, 0, 0, groups * factor - length))
    counts = torch.full((groups, 1), float(factor), dtype=frames.dtype, device=frames.device)
    counts[-1] = length - (groups - 1) * factor
    return padded.view(groups, factor, -1).sum(dim=1) / counts


def align_streams(streams: Sequence[Sequence[Tensor]], rates: Sequence[int]) -> list[list[Tensor]]:
    """Bring streams to a common frame rate and length (see the module docstring).

    Args:
        streams: S streams, each a list of B tensors ``(T_{s,b}, D_s)``.
        rates: downsample rate (input samples per frame) of each stream.

    Returns:
        S lists of B tensors ``(T_b, D_s)``, equal ``T_b`` across streams.

    Example:
        >>> fbank = [torch.zeros(21, 3)]  # 160 samples per frame
        >>> hubert = [torch.zeros(10, 5)]  # 320 samples per frame
        >>> [s[0].shape for s in align_streams([fbank, hubert], [160, 320])]  # 21 -> 11 -> cut to 10
        [torch.Size([10, 3]), torch.Size([10, 5])]
    """
    if len(streams) != len(rates):
        raise ValueError(f"{len(streams)} streams but {len(rates)} downsample rates")
    coarsest = max(rates)
    for rate in rates:
        if coarsest % rate:
            raise ValueError(
                f"early fusion needs frame rates that divide each other; downsample rates {list(rates)} do not"
            )
    pooled = [[pool_frames(f, coarsest // rate) for f in stream] for stream, rate in zip(streams, rates)]
    aligned: list[list[Tensor]] = [[] for _ in streams]
    for b in range(len(streams[0])):
        lengths = [stream[b].shape[0] for stream in pooled]
        if max(lengths) - min(lengths) > MAX_FRAME_MISMATCH:
            raise ValueError(
                f"utterance {b}: streams have {lengths} frames at {coarsest} samples per frame; "
                f"more than {MAX_FRAME_MISMATCH} apart, so the downsample rates {list(rates)} are inconsistent"
            )
        for s, stream in enumerate(pooled):
            aligned[s].append(stream[b][: min(lengths)])
    return aligned


def _pad(frames: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([f.shape[0] for f in frames], device=frames[0].device)
    return pad_sequence(list(frames), batch_first=True), lengths


def split_outputs(outputs: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """An :class:`EmotionClassifier`'s ``(B, C + A)`` outputs -> class logits ``(B, C)`` and normalised
    attribute predictions ``(B, A)`` (either may be empty: C = 0 without categories, A = 0 without attributes).

    Example:
        >>> logits, attributes = split_outputs(torch.arange(10.0).view(2, 5), num_classes=4)
        >>> logits.shape, attributes.tolist()
        (torch.Size([2, 4]), [[4.0], [9.0]])
    """
    if not 0 <= num_classes <= outputs.shape[-1]:
        raise ValueError(f"{num_classes} classes do not fit outputs of width {outputs.shape[-1]}")
    return outputs[..., :num_classes], outputs[..., num_classes:]


class EmotionClassifier(nn.Module):
    """Aggregator(s) + linear heads over one or several feature streams.

    The heads share the utterance embedding: C class logits and A attribute predictions (normalised to
    [0, 1] on the corpus's scale, unsquashed) are the rows of one linear layer, each row its own
    head, so ``forward`` returns ``(B, C + A)`` (:func:`split_outputs`). A categorical model (A = 0)
    is the paper's aggregator + linear classifier, unchanged.

    Args:
        input_sizes: feature dimension of each stream.
        rates: downsample rate of each stream (used by early fusion only).
        num_classes: C, number of emotion classes (0: attributes only).
        aggregator: ``"mean"`` or ``"ecapa"``; None: ``modelrc.aggregator`` of ``emotion_ecapa``'s
            ``config.yaml``.
        ecapa: ECAPA-TDNN keyword arguments.
        fusion: ``None`` for one stream, ``"early"`` or ``"late"`` for several.
        projector_dim: a frame-wise linear projection to this size before each aggregator
            (SUPERB's emotion downstream: 256); ``None``: none.
        num_attributes: A, number of continuous attributes regressed beside the classes.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> fbank = [torch.randn(40, 3), torch.randn(26, 3)]  # B=2 utterances, 160 samples per frame
        >>> hubert = [torch.randn(20, 5), torch.randn(13, 5)]  # the same utterances, 320 per frame
        >>> small = {"channels": (16, 16, 32), "kernel_sizes": (5, 3, 1), "dilations": (1, 2, 1),
        ...          "attention_channels": 8, "se_channels": 8, "lin_neurons": 12}  # a tiny ECAPA-TDNN
        >>> late = EmotionClassifier([3, 5], [160, 320], num_classes=4, ecapa=small, fusion="late")
        >>> late([fbank, hubert]).shape  # (B, num_classes)
        torch.Size([2, 4])
        >>> late.embed([fbank, hubert]).shape  # one ECAPA embedding per stream, concatenated
        torch.Size([2, 24])
        >>> early = EmotionClassifier([3, 5], [160, 320], num_classes=4, aggregator="mean", fusion="early")
        >>> emb = early.embed([fbank, hubert])  # frames aligned, then 3 + 5 features pooled together
        >>> emb.shape
        torch.Size([2, 8])
        >>> torch.allclose(emb[1], torch.cat([fbank[1].mean(0), hubert[1].mean(0)]))  # 26 fbank frames pool to 13
        True
        >>> multitask = EmotionClassifier([3], [160], num_classes=4, aggregator="mean", num_attributes=3)
        >>> [part.shape for part in split_outputs(multitask([fbank]), multitask.num_classes)]  # (B, C), (B, A)
        [torch.Size([2, 4]), torch.Size([2, 3])]
    """

    def __init__(
        self,
        input_sizes: Sequence[int],
        rates: Sequence[int],
        num_classes: int,
        aggregator: str | None = None,
        ecapa: Mapping[str, Any] | None = None,
        fusion: str | None = None,
        projector_dim: int | None = None,
        num_attributes: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 0 or num_attributes < 0 or num_classes + num_attributes == 0:
            raise ValueError(f"need classes or attributes to predict, got {num_classes} and {num_attributes}")
        if len(input_sizes) != len(rates) or not input_sizes:
            raise ValueError(f"need one rate per stream, got sizes {list(input_sizes)} and rates {list(rates)}")
        if len(input_sizes) > 1 and fusion not in FUSIONS:
            raise ValueError(f"{len(input_sizes)} feature streams need fusion 'early' or 'late', got {fusion!r}")
        if fusion == "early" and min(rates) <= 0:
            raise ValueError("a stream without a frame rate (text) can only be fused late: set fusion: late")
        if len(input_sizes) == 1 and fusion is not None:
            raise ValueError(f"fusion {fusion!r} needs several upstreams (-u NAME1,NAME2), got one")
        self.rates = list(rates)
        self.fusion = fusion
        if fusion == "late":
            self.aggregators = nn.ModuleList(build_aggregator(aggregator, d, ecapa, projector_dim) for d in input_sizes)
        else:
            self.aggregators = nn.ModuleList([build_aggregator(aggregator, sum(input_sizes), ecapa, projector_dim)])
        self.num_classes, self.num_attributes = num_classes, num_attributes
        self.classifier = nn.Linear(sum(a.output_size for a in self.aggregators), num_classes + num_attributes)
        if num_attributes:
            with torch.no_grad():  # start the attributes at the middle of their normalised scale
                self.classifier.bias[num_classes:] = 0.5

    def embed(self, streams: Sequence[Sequence[Tensor]]) -> Tensor:
        """S streams of B tensors ``(T_{s,b}, D_s)`` -> utterance embeddings ``(B, E)``."""
        if len(streams) != len(self.rates):
            raise ValueError(f"expected {len(self.rates)} feature streams, got {len(streams)}")
        if self.fusion == "late":
            return torch.cat([agg(*_pad(stream)) for agg, stream in zip(self.aggregators, streams)], dim=-1)
        if self.fusion == "early":
            streams = align_streams(streams, self.rates)
        frames = [torch.cat(parts, dim=-1) for parts in zip(*streams)]
        return self.aggregators[0](*_pad(frames))

    def forward(self, streams: Sequence[Sequence[Tensor]]) -> Tensor:
        """S streams of B tensors ``(T_{s,b}, D_s)`` -> ``(B, C + A)``: class logits, then attributes."""
        return self.classifier(self.embed(streams))
