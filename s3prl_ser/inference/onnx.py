"""ONNX export of a recognizer: padded batch + lengths in, class probabilities and embeddings out.

Two graphs, chosen by what the upstream allows (the choice and its reason are returned and
recorded in ``config.json``'s ``onnx``):

* ``full`` -- upstream + featurizer + aggregator + classifier. Inputs ``wavs`` ``(B, S)``
  float32 at 16 kHz, zero-padded, and ``lengths`` ``(B,)`` int64 samples; outputs
  ``probabilities`` ``(B, C)`` (members averaged) and ``embeddings`` ``(B, E)`` (what each
  member's linear head reads, concatenated in member order, as
  :meth:`~s3prl_ser.inference.recognizer.EmotionRecognizer.embeddings`). Each clip gets what it
  gets alone:

  - HuBERT and wav2vec 2.0 (s3prl's ``hubert``/``wav2vec2`` experts, every entry of those
    families): the fairseq-style model runs on the padded batch, the hidden states come from
    the expert's own hooks, and padding is kept out of the GroupNorm statistics and the frame
    mask (:meth:`FullGraph._hidden_states`);
  - s3prl's kaldi ``fbank`` baselines (``fbank``, ``fbank_no_cmvn``):
    :class:`~s3prl_ser.upstreams.exportable.KaldiFbankGraph` (framing, DC removal,
    pre-emphasis, window and DFT as one strided convolution, mel matrix, log, deltas and CMVN
    over each clip's own frames).
* ``downstream`` -- featurizer + aggregator + classifier. Inputs ``hidden_states``
  ``(L, B, T, D)``: the upstream's L hidden states, zero-padded, and ``frame_lengths``
  ``(B,)`` int64; the same outputs. Used for the other parameter-free baselines
  (``mfcc``, ``mel``, ...); the caller computes the upstream's features itself, each clip alone,
  from the ``front_end`` the note records (:func:`~s3prl_ser.upstreams.exportable.front_end_description`),
  and ``frame_lengths`` holds its own frame count (kaldi: ``1 + (samples - 400) // 160``, not
  s3prl's ``round(samples / 160)``).

A model trained with attributes has a third output, ``attributes`` ``(B, A)``: their values on
the corpus's scale (the graph denormalises them; the note records ``attribute_names`` and
``attribute_scale``), members averaged, as ``Prediction.attributes``; a model of attributes only
has no ``probabilities`` output (outputs ``embeddings``, ``attributes``).

Fused models (several upstreams) are refused. An ensemble whose members share one upstream
exports as one graph averaging their probabilities. Export uses ``torch.onnx.export``'s
TorchScript exporter (``dynamo=False``, no ``onnxscript`` needed), opset 17, with dynamic batch
and time axes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from s3prl_ser.upstreams.exportable import KaldiFbankGraph, front_end_description, kaldi_fbank_unsupported
from s3prl_ser.upstreams.multi_upstream import MultiUpstream

if TYPE_CHECKING:
    from s3prl_ser.inference.recognizer import EmotionRecognizer

__all__ = [
    "OPSET",
    "OnnxExportError",
    "onnx_graph_kind",
    "output_names",
    "FullGraph",
    "DownstreamGraph",
    "export_onnx",
]

OPSET = 17


class OnnxExportError(ValueError):
    """The recognizer cannot be exported to ONNX; the message says why."""


def _ssl_unsupported(upstream: nn.Module) -> str | None:
    """None when :meth:`FullGraph._hidden_states` computes ``upstream`` (s3prl's HuBERT or
    wav2vec 2.0 expert in its hub setting), else why not."""
    import s3prl.upstream.hubert.expert as hubert
    import s3prl.upstream.wav2vec2.expert as wav2vec2
    from s3prl.upstream.wav2vec2.wav2vec2_model import TransformerSentenceEncoderLayer

    name = f"{type(upstream).__module__}.{type(upstream).__name__}"
    if type(upstream) is wav2vec2.UpstreamExpert:
        model = upstream.model
        if upstream.feature_selection is not None or not upstream.apply_padding_mask:
            return f"{name} with feature_selection/apply_padding_mask changed is not traced here"
        if upstream.wav_normalize and upstream.numpy_wav_normalize:
            return f"{name} normalising waveforms with numpy is not traced here"
        if model.input_quantizer is not None or model.crop_seq_to_multiple != 1:
            return f"{name} with an input quantizer or crop_seq_to_multiple is not traced here"
    elif type(upstream) is not hubert.UpstreamExpert:
        return f"{name} has no padded-batch graph here"
    if not all(isinstance(layer, TransformerSentenceEncoderLayer) for layer in upstream.model.encoder.layers):
        return f"{name} with conformer layers is not traced here"
    return None


def _full_graph_unsupported(upstream: nn.Module) -> str | None:
    """None when :class:`FullGraph` computes ``upstream``'s hidden states, else why not."""
    if front_end_description(upstream) is not None:
        return kaldi_fbank_unsupported(upstream)
    return _ssl_unsupported(upstream)


def onnx_graph_kind(recognizer: EmotionRecognizer) -> tuple[str, str]:
    """``("full" | "downstream", reason)`` for ``recognizer``.

    Raises:
        OnnxExportError: fused upstreams, or an ensemble over several upstreams not all in the full graph.
    """
    if any(isinstance(u, MultiUpstream) for u in recognizer.upstreams):
        raise OnnxExportError("fused models (several upstreams per member) have no ONNX export: export each alone")
    reasons = sorted({r for r in map(_full_graph_unsupported, recognizer.upstreams) if r is not None})
    if not reasons:
        return "full", "the whole model, from the waveform, is one graph"
    reason = "; ".join(reasons) + "; the ONNX graph starts at its hidden states"
    if len(recognizer.upstreams) > 1:
        raise OnnxExportError(f"ensemble over several upstreams, not all exportable: {reason}")
    return "downstream", reason


class _Head(nn.Module):
    """One member's featurizer (weighted sum or layer selection) + aggregator + classifier on padded tensors."""

    def __init__(self, member: nn.Module) -> None:
        super().__init__()
        self.featurizer = member.featurizer
        self.classifier = member.classifier
        self.rate = int(member.featurizer.downsample_rate)

    def forward(self, hidden_states: list[Tensor], frame_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """L tensors ``(B, T, D)`` and ``(B,)`` valid frames -> the classifier's outputs ``(B, C + A)``
        (logits, then normalised attributes) and the embedding the linear head reads ``(B, E_m)``."""
        outputs = {"hidden_states": hidden_states, "last_hidden_state": hidden_states[-1]}
        for index, hidden in enumerate(hidden_states):
            outputs[f"hidden_state_{index}"] = hidden
        feature = self.featurizer._select_feature(outputs)
        if isinstance(feature, (list, tuple)):
            feature = self.featurizer._weighted_sum(list(feature))
        steps = torch.arange(feature.shape[1], device=feature.device)
        valid = (steps.unsqueeze(0) < frame_lengths.unsqueeze(1)).unsqueeze(-1).to(feature.dtype)
        lengths = torch.minimum(frame_lengths, torch.full_like(frame_lengths, feature.shape[1]))
        embedding = self.classifier.aggregators[0](feature * valid, lengths)
        return self.classifier.classifier(embedding), embedding


def output_names(recognizer: EmotionRecognizer) -> list[str]:
    """The graph's outputs: ``probabilities`` (with classes), ``embeddings``, ``attributes`` (with attributes)."""
    return (
        ["probabilities"] * bool(recognizer.class_names)
        + ["embeddings"]
        + ["attributes"] * bool(recognizer.attribute_names)
    )


class _Combine(nn.Module):
    """The members' (outputs ``(B, C + A)``, embedding) -> the graph's outputs (:func:`output_names`),
    as :meth:`EmotionRecognizer.outputs` gives them: probabilities averaged ``(B, C)``, embeddings
    concatenated in member order ``(B, E)``, attribute values averaged, on the corpus's scale ``(B, A)``."""

    def __init__(self, recognizer: EmotionRecognizer) -> None:
        super().__init__()
        self.num_classes = len(recognizer.class_names)
        self.names = output_names(recognizer)
        bounds = torch.tensor(list(recognizer.attribute_scale.values()), dtype=torch.float32).view(-1, 2)
        self.register_buffer("low", bounds[:, 0].clone(), persistent=False)
        self.register_buffer("span", (bounds[:, 1] - bounds[:, 0]).clone(), persistent=False)

    def forward(self, outputs: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, ...]:
        heads, embeddings = zip(*outputs)
        found = {"embeddings": torch.cat(embeddings, dim=-1)}
        if "probabilities" in self.names:
            found["probabilities"] = torch.stack([h[:, : self.num_classes].softmax(dim=-1) for h in heads]).mean(dim=0)
        if "attributes" in self.names:
            found["attributes"] = (
                self.low + torch.stack([h[:, self.num_classes :] for h in heads]).mean(dim=0) * self.span
            )
        return tuple(found[name] for name in self.names)


class DownstreamGraph(nn.Module):
    """``hidden_states (L, B, T, D)``, ``frame_lengths (B,)`` -> ``probabilities (B, C)`` (members
    averaged) and ``embeddings (B, E)`` (concatenated), and ``attributes (B, A)`` for a model with them.

    Example:
        >>> from s3prl_ser.upstreams.build import build_upstream
        >>> from s3prl_ser.inference.recognizer import EmotionRecognizer, RecognizerMember
        >>> from s3prl_ser.upstreams.multi_upstream import build_featurizer
        >>> from s3prl_ser.models.fusion import EmotionClassifier
        >>> mfcc = build_upstream("mfcc")
        >>> featurizer = build_featurizer(mfcc, "hidden_states", None, "cpu", False)
        >>> head = EmotionClassifier([featurizer.output_dim], [160], 2, aggregator="mean")
        >>> recognizer = EmotionRecognizer([mfcc], [RecognizerMember(featurizer, head)], ["calm", "angry"])
        >>> wavs = [torch.randn(16000), torch.randn(8000)]
        >>> hidden = torch.nn.utils.rnn.pad_sequence([mfcc([w])["hidden_states"][0][0] for w in wavs], batch_first=True)
        >>> hidden = hidden.unsqueeze(0)  # (L=1, B, T, D), each clip's features computed alone
        >>> frames = torch.tensor([98, 48])  # each clip's own frames: 1 + (samples - 400) // 160
        >>> probabilities, embeddings = DownstreamGraph(recognizer)(hidden, frames)
        >>> torch.allclose(probabilities, recognizer.probabilities(wavs), atol=1e-6), embeddings.shape  # mean of 39 MFCCs
        (True, torch.Size([2, 39]))
    """

    def __init__(self, recognizer: EmotionRecognizer) -> None:
        super().__init__()
        self.heads = nn.ModuleList(_Head(member) for member in recognizer.members)
        self.combine = _Combine(recognizer)

    def forward(self, hidden_states: Tensor, frame_lengths: Tensor) -> tuple[Tensor, ...]:
        layers = list(hidden_states.unbind(0))
        return self.combine([head(layers, frame_lengths) for head in self.heads])


class FullGraph(nn.Module):
    """``wavs (B, S)``, ``lengths (B,)`` -> ``probabilities (B, C)`` and ``embeddings (B, E)`` (and
    ``attributes (B, A)`` for a model with them) for HuBERT, wav2vec 2.0 and kaldi fbank upstreams.

    Example:
        >>> import tempfile
        >>> from s3prl_ser.upstreams.build import build_upstream
        >>> from s3prl_ser.inference.recognizer import EmotionRecognizer, RecognizerMember
        >>> from s3prl_ser.upstreams.multi_upstream import build_featurizer
        >>> from s3prl_ser.models.fusion import EmotionClassifier
        >>> from s3prl_ser.toy.tiny_upstream import write_tiny_upstream
        >>> hubert = build_upstream("hubert_local", str(write_tiny_upstream("hubert", Path(tempfile.mkdtemp()) / "t.pt")))
        >>> featurizer = build_featurizer(hubert, "hidden_states", None, "cpu", False)
        >>> head = EmotionClassifier([featurizer.output_dim], [320], 2, aggregator="mean")
        >>> recognizer = EmotionRecognizer([hubert], [RecognizerMember(featurizer, head)], ["calm", "angry"])
        >>> wavs = [torch.randn(16000), torch.randn(8000)]
        >>> padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)  # (B, S), zeros after each clip
        >>> probabilities, embeddings = FullGraph(recognizer)(padded, torch.tensor([16000, 8000]))
        >>> torch.allclose(probabilities, recognizer.probabilities(wavs), atol=1e-5)
        True
        >>> torch.allclose(embeddings, recognizer.embeddings(wavs), atol=1e-4)
        True
    """

    def __init__(self, recognizer: EmotionRecognizer) -> None:
        super().__init__()
        self.upstreams = recognizer.upstreams
        self.fbanks = nn.ModuleDict(
            {str(i): KaldiFbankGraph(u) for i, u in enumerate(self.upstreams) if front_end_description(u) is not None}
        )
        self.heads = nn.ModuleList(_Head(member) for member in recognizer.members)
        self.combine = _Combine(recognizer)
        self.reads = [member.upstream_index for member in recognizer.members]

    @staticmethod
    def _hidden_states(expert: nn.Module, wavs: Tensor, lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        """What s3prl's HuBERT or wav2vec 2.0 expert computes for each waveform alone, on the padded batch.

        ``wavs`` ``(B, S)``, ``lengths`` ``(B,)`` -> L hidden states ``(B, T, D)`` and each
        waveform's frame count ``(B,)``. The models' ``forward`` feature path, with two
        changes that keep padding out of valid frames: the feature encoder's GroupNorm (Base's
        ``default`` mode) takes its statistics over each waveform's own frames, not over the
        padding too, and the frame mask counts the frames the convolutions compute from valid
        samples alone (HuBERT's ``forward_padding_mask`` marks a frame valid when any sample of
        its 320 is, so attention would see frames computed from padding; wav2vec 2.0 counts as
        here)."""
        model = expert.model
        steps = torch.arange(wavs.shape[1], device=wavs.device).unsqueeze(0)
        padding = steps >= lengths.unsqueeze(1)  # (B, S), True at padding
        wavs = wavs.masked_fill(padding, 0.0)
        # s3prl: F.layer_norm of each unpadded waveform (HuBERT's task_cfg, wav2vec 2.0's expert says)
        normalise = expert.wav_normalize if hasattr(expert, "wav_normalize") else expert.task_cfg.normalize
        if normalise:
            count = lengths.unsqueeze(1).to(wavs.dtype)
            mean = wavs.sum(dim=1, keepdim=True) / count
            var = ((wavs - mean).masked_fill(padding, 0.0) ** 2).sum(dim=1, keepdim=True) / count
            wavs = ((wavs - mean) / torch.sqrt(var + 1e-5)).masked_fill(padding, 0.0)
        x, frames = wavs.unsqueeze(1), lengths  # (B, 1, S), (B,)
        for block in model.feature_extractor.conv_layers:
            conv = block[0]
            x = conv(x)
            frames = torch.div(frames - conv.kernel_size[0], conv.stride[0], rounding_mode="floor") + 1
            for module in block[1:]:
                x = _masked_group_norm(module, x, frames) if isinstance(module, nn.GroupNorm) else module(x)
        features = model.layer_norm(x.transpose(1, 2))  # (B, T, C)
        if model.post_extract_proj is not None:
            features = model.post_extract_proj(features)
        frame_padding = torch.arange(features.shape[1], device=wavs.device).unsqueeze(0) >= frames.unsqueeze(1)
        expert._hook_hiddens.clear()
        model.encoder(model.dropout_input(features), padding_mask=frame_padding, layer=None)
        hiddens = expert.hook_postprocess(expert._hook_hiddens.copy())
        expert._hook_hiddens.clear()
        return [hidden for _, hidden in hiddens], frames

    def _states(self, index: int, wavs: Tensor, lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        if str(index) in self.fbanks:
            features, frames = self.fbanks[str(index)](wavs, lengths)
            return [features], frames
        return self._hidden_states(self.upstreams[index], wavs, lengths)

    def forward(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
        states = [self._states(index, wavs, lengths) for index in range(len(self.upstreams))]
        return self.combine([head(*states[read]) for head, read in zip(self.heads, self.reads)])


def _masked_group_norm(norm: nn.GroupNorm, x: Tensor, frames: Tensor) -> Tensor:
    """``norm`` (fairseq's ``Fp32GroupNorm``: float32 inside) over the first ``frames[b]`` frames
    of each ``x[b]``: ``(B, C, T)``, ``(B,)`` -> ``(B, C, T)``; later frames are normalised with
    the same statistics (and never read by a valid frame)."""
    batch, channels, steps = x.shape
    groups = norm.num_groups
    valid = (torch.arange(steps, device=x.device).unsqueeze(0) < frames.unsqueeze(1)).view(batch, 1, 1, steps)
    grouped = x.float().view(batch, groups, channels // groups, steps)
    count = (frames * (channels // groups)).view(batch, 1, 1, 1).to(torch.float32)
    mean = grouped.masked_fill(~valid, 0.0).sum(dim=(2, 3), keepdim=True) / count
    var = ((grouped - mean).masked_fill(~valid, 0.0) ** 2).sum(dim=(2, 3), keepdim=True) / count
    out = ((grouped - mean) / torch.sqrt(var + norm.eps)).view(batch, channels, steps)
    if norm.affine:
        out = out * norm.weight.float().view(1, channels, 1) + norm.bias.float().view(1, channels, 1)
    return out.type_as(x)


def _masked_fill(tensor: Tensor, indices: Tensor, value: Any) -> Tensor:
    """s3prl's ``index_put`` (``tensor[indices] = value``) for a ``(B, T)`` mask of a ``(B, T, D)`` tensor."""
    if indices.dtype == torch.bool and indices.dim() == tensor.dim() - 1 and not isinstance(value, Tensor):
        return tensor.masked_fill(indices.unsqueeze(-1), value)
    tensor[indices] = value
    return tensor


@contextlib.contextmanager
def _traceable_encoder() -> Iterator[None]:
    """While tracing, two helpers of s3prl's fairseq-style encoder get traceable equivalents:

    * ``pad_to_multiple`` pads the frames to a multiple of ``required_seq_len_multiple`` (a GPU
      speed-up) after a Python ``float.is_integer`` test the tracer cannot record; the padded
      frames are masked keys and are cut off after the layers, so not padding gives the same
      valid frames;
    * ``index_put`` zeroes padded frames by boolean indexing, which the exporter turns into a
      ``Where`` with a wrong broadcast; ``masked_fill`` does the same.

    The parity test checks the graph against PyTorch on variable-length batches."""
    import s3prl.upstream.wav2vec2.wav2vec2_model as model

    originals = model.pad_to_multiple, model.index_put
    model.pad_to_multiple = lambda x, multiple, dim=-1, value=0: (x, 0)
    model.index_put = _masked_fill
    try:
        yield
    finally:
        model.pad_to_multiple, model.index_put = originals


@contextlib.contextmanager
def _explicit_same_padding(graph: nn.Module) -> Iterator[None]:
    """While tracing: ``padding="same"`` convolutions get the equal explicit padding (onnxruntime
    has no dilated ``auto_pad=SAME_*``): odd kernels pad ``dilation * (k - 1) / 2`` zeros on each
    side either way. Restored afterwards (in place: a copy would lose s3prl's hidden-state hooks)."""
    changed = [conv for conv in graph.modules() if isinstance(conv, nn.Conv1d) and conv.padding == "same"]
    for conv in changed:
        if conv.dilation[0] * (conv.kernel_size[0] - 1) % 2 or conv.padding_mode != "zeros":
            raise OnnxExportError(f"{conv}: asymmetric or non-zero 'same' padding has no ONNX equivalent here")
    for conv in changed:
        conv.padding = (conv.dilation[0] * (conv.kernel_size[0] - 1) // 2,)
    try:
        yield
    finally:
        for conv in changed:
            conv.padding = "same"


def export_onnx(recognizer: EmotionRecognizer, path: str | os.PathLike) -> dict[str, Any]:
    """Write ``recognizer`` as an ONNX graph to ``path``; return what it is (kind, reason, inputs,
    outputs, and ``front_end``: each baseline upstream's :func:`~s3prl_ser.upstreams.exportable.front_end_description`,
    in the graph for ``full``, the caller's to compute for ``downstream``; with attributes their
    names and scale, the ``attributes`` output being on that scale).

    Raises:
        OnnxExportError: see :func:`onnx_graph_kind`.
        ImportError: ``onnx`` is not installed (``pip install 's3prl-ser[onnx]'``).
    """
    import onnx  # noqa: F401  (torch.onnx.export needs it; fail early with the package's name)

    kind, reason = onnx_graph_kind(recognizer)
    if recognizer.device.type != "cpu":
        raise OnnxExportError(f"export a recognizer on the CPU (this one is on {recognizer.device})")
    recognizer.eval()
    batch, samples = 2, 16000 * 2
    lengths = torch.tensor([samples, samples * 3 // 4])
    wavs = torch.randn(batch, samples) * 0.1
    if kind == "full":
        graph: nn.Module = FullGraph(recognizer)
        inputs: tuple[Tensor, Tensor] = (wavs, lengths)
        names, axes = ["wavs", "lengths"], {"wavs": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}}
    else:
        graph = DownstreamGraph(recognizer)
        upstream = recognizer.upstreams[0]
        with torch.no_grad():
            hidden = upstream([w[:n] for w, n in zip(wavs, lengths)])["hidden_states"]
        stacked = torch.stack(list(hidden)) if isinstance(hidden, (list, tuple)) else hidden.unsqueeze(0)
        rate = int(recognizer.members[0].featurizer.downsample_rate)
        inputs = (stacked, torch.round(lengths.float() / rate).long())
        names = ["hidden_states", "frame_lengths"]
        axes = {"hidden_states": {1: "batch", 2: "frames"}, "frame_lengths": {0: "batch"}}
    path = Path(path)
    outputs = output_names(recognizer)
    with torch.no_grad(), _traceable_encoder(), _explicit_same_padding(graph):
        torch.onnx.export(
            graph.eval(),
            inputs,
            str(path),
            input_names=names,
            output_names=outputs,
            dynamic_axes={**axes, **{name: {0: "batch"} for name in outputs}},
            opset_version=OPSET,
            dynamo=False,
        )
    note = {
        "kind": kind,
        "reason": reason,
        "inputs": names,
        "outputs": outputs,
        "embedding_dim": recognizer.embedding_dim,
        "opset": OPSET,
        "class_names": list(recognizer.class_names),
        "sample_rate": 16000,
        "front_end": [front_end_description(upstream) for upstream in recognizer.upstreams],
    }
    if recognizer.attribute_names:  # the attributes output is on this scale (denormalised in the graph)
        note["attribute_names"] = list(recognizer.attribute_names)
        note["attribute_scale"] = {name: list(bounds) for name, bounds in recognizer.attribute_scale.items()}
    return note
