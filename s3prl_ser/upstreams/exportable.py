"""Build an s3prl upstream from its hub entry and find out how a fine-tuned copy can be exported.

An upstream can be exported in s3prl's converted format when its expert is s3prl's HuBERT or
wav2vec 2.0 ``UpstreamExpert`` (every hub entry of those families: ``hubert``,
``hubert_large_ll60k``, ``wav2vec2``, ``xlsr_53``, ``*_local -k FILE``, ...). Such an expert
keeps the fairseq-style model as ``expert.model``; its ``state_dict()`` is the converted
checkpoint's ``model_weight``, and the checkpoint's configs come from the file s3prl read.

s3prl's baseline feature extractors (``fbank``, ``fbank_no_cmvn``, ``mfcc``, ...) have no weights;
:func:`front_end_description` records what they compute (runnable with torchaudio), and
:class:`KaldiFbankGraph` computes the ``fbank`` family on a padded batch in ONNX-exportable ops.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from s3prl_ser.data.protocol import FoldSpec

__all__ = [
    "CONVERTED_LOADERS",
    "UnsupportedUpstreamError",
    "LoadedUpstream",
    "load_upstream",
    "export_loader",
    "front_end_description",
    "KaldiFbankGraph",
]

CONVERTED_LOADERS = ("hubert_local", "wav2vec2_local")
"""The hub entries that load an exported upstream from a converted checkpoint file (no download)."""


class UnsupportedUpstreamError(ValueError):
    """The upstream cannot be exported as an s3prl converted checkpoint."""


@dataclass(frozen=True)
class LoadedUpstream:
    """An upstream expert and where its weights came from.

    Attributes:
        expert: the s3prl upstream (``expert(wavs)`` -> dict of features).
        name: the hub entry, e.g. ``hubert`` or ``hubert_local``.
        ckpt: the ``-k`` argument, if any.
        source_file: the converted checkpoint file s3prl built the model from (HuBERT and
            wav2vec 2.0 families), else None.
    """

    expert: nn.Module
    name: str
    ckpt: str | None
    source_file: Path | None


def _converted_expert_modules() -> dict[str, object]:
    import s3prl.upstream.hubert.expert as hubert_expert
    import s3prl.upstream.wav2vec2.expert as wav2vec2_expert

    return dict(zip(CONVERTED_LOADERS, (hubert_expert, wav2vec2_expert)))


@contextlib.contextmanager
def _recording_converted_loads() -> Iterator[list[Path]]:
    """Collect the files s3prl's HuBERT / wav2vec 2.0 experts read while the block runs.

    Entries such as ``hubert`` resolve a URL to a cached file inside s3prl, so the expert's
    call to ``load_converted_model`` is the one place that sees the path.
    """
    seen: list[Path] = []
    originals = {}
    for module in _converted_expert_modules().values():
        original = module.load_converted_model
        originals[module] = original

        def recording(ckpt, _original=original):
            seen.append(Path(ckpt))
            return _original(ckpt)

        module.load_converted_model = recording
    try:
        yield seen
    finally:
        for module, original in originals.items():
            module.load_converted_model = original


def load_upstream(
    name: str, ckpt: str | None = None, fold: FoldSpec | None = None, model_config: str | None = None
) -> LoadedUpstream:
    """Instantiate the s3prl hub entry ``name`` (with ``ckpt=`` and ``model_config=`` when given), on CPU.

    ``fold`` is the fold about to be fine-tuned, or its protocol: an ``upstream_ft`` export
    of another fold as the starting point (or a ``*_ft_avg`` entry's) would carry that fold's
    training data, which include this fold's test session; one of another split, this
    fold's dev utterances.

    Raises:
        ValueError: ``name`` is not an s3prl hub entry (close names are suggested).
        FoldMismatchError: ``ckpt`` was fine-tuned for another fold, or records none.
        ProtocolMismatchError: ``ckpt`` was fine-tuned on another corpus or split.
    """
    from s3prl_ser.upstreams.build import build_upstream

    with _recording_converted_loads() as seen:
        expert = build_upstream(name, ckpt, model_config, fold=fold)
    return LoadedUpstream(expert, name, ckpt, seen[-1] if seen else None)


def export_loader(loaded: LoadedUpstream) -> str:
    """The hub entry that loads an exported copy of ``loaded``: ``hubert_local`` or ``wav2vec2_local``.

    Raises:
        UnsupportedUpstreamError: the upstream's checkpoints have no converted format.
    """
    for loader, module in _converted_expert_modules().items():
        if type(loaded.expert) is module.UpstreamExpert and loaded.source_file is not None:
            return loader
    kind = f"{type(loaded.expert).__module__}.{type(loaded.expert).__name__}"
    raise UnsupportedUpstreamError(
        f"cannot export a fine-tuned {loaded.name!r}: its expert ({kind}) has no s3prl converted "
        "checkpoint format; fine-tuning and export support the HuBERT and wav2vec 2.0 families "
        "(loaded by hubert_local / wav2vec2_local), e.g. -u hubert, -u wav2vec2, -u hubert_local -k FILE"
    )


# torchaudio.compliance.kaldi.fbank's options that KaldiFbankGraph computes; "value": only that one.
_FBANK_OPTIONS: dict[str, Any] = {
    "num_mel_bins": None,
    "frame_length": None,
    "frame_shift": None,
    "use_log_fbank": None,
    "use_power": None,
    "low_freq": None,
    "high_freq": None,
    "preemphasis_coefficient": None,
    "remove_dc_offset": None,
    "window_type": None,
    "blackman_coeff": None,
    "round_to_power_of_two": None,
    "vtln_low": None,
    "vtln_high": None,
    "vtln_warp": None,
    "energy_floor": None,  # only read with use_energy
    "raw_energy": None,  # only read with use_energy
    "dither": 0.0,
    "snip_edges": True,
    "use_energy": False,
    "subtract_mean": False,
    "min_duration": 0.0,
    "channel": -1,
    "htk_compat": None,  # only read with use_energy
}


def front_end_description(upstream: nn.Module) -> dict[str, Any] | None:
    """What s3prl's parameter-free baseline ``upstream`` computes from a 16 kHz waveform, as
    JSON; None for any other upstream.

    Kaldi features (``fbank``, ``mfcc``, ``spectrogram``): ``function``
    (``torchaudio.compliance.kaldi.fbank`` / ...) with ``kwargs`` on the ``(1, samples)`` float32
    waveform gives ``(frames, D)``; then ``delta``: ``order`` times
    ``torchaudio.functional.compute_deltas`` (``win_length``, ``mode``) on the last result,
    concatenated along features; then ``cmvn``: when ``use_cmvn``, per utterance
    ``(x - mean) / (eps + std)`` over frames (``std`` with ``N - 1``). The others (``mel``,
    ``linear``): ``function`` ``s3prl.upstream.baseline.preprocessor.get_preprocessor`` and its
    ``config`` (torchaudio transforms inside s3prl).

    Example:
        >>> from s3prl_ser.upstreams.build import build_upstream
        >>> described = front_end_description(build_upstream("fbank"))
        >>> described["function"], described["kwargs"]["num_mel_bins"], described["output_dim"]
        ('torchaudio.compliance.kaldi.fbank', 80, 240)
    """
    import s3prl.upstream.baseline.expert as baseline

    if type(upstream) is not baseline.UpstreamExpert:
        return None
    shape = {"output_dim": int(upstream.output_dim), "frame_rate": int(upstream.downsample_rate)}
    if "kaldi" not in upstream.config:
        config = json.loads(json.dumps(upstream.config))
        return {"function": "s3prl.upstream.baseline.preprocessor.get_preprocessor", "config": config, **shape}
    kaldi = upstream.config["kaldi"]
    kind = kaldi.get("feat_type", "fbank")
    delta = upstream.config.get("delta", {})
    cmvn = upstream.config.get("cmvn", {})
    return {
        "function": f"torchaudio.compliance.kaldi.{kind}",
        "kwargs": {**kaldi.get(kind, {}), "sample_frequency": 16000},
        "delta": {
            "order": int(delta.get("order", 2)),
            "win_length": int(delta.get("win_length", 5)),
            "mode": delta.get("mode", "replicate"),
        },
        "cmvn": {"use_cmvn": bool(cmvn["use_cmvn"]), "eps": float(cmvn.get("eps", 1e-10))},
        **shape,
    }


def kaldi_fbank_unsupported(upstream: nn.Module) -> str | None:
    """None when :class:`KaldiFbankGraph` computes ``upstream``'s features, else why not."""
    described = front_end_description(upstream)
    if described is None:
        return f"{type(upstream).__module__}.{type(upstream).__name__} is not a baseline feature extractor"
    if described["function"] != "torchaudio.compliance.kaldi.fbank":
        return f"{described['function']} features are not in the graph"
    if described["delta"]["mode"] != "replicate":
        return f"deltas with mode={described['delta']['mode']!r} are not in the graph"
    for key, value in described["kwargs"].items():
        if key == "sample_frequency":
            continue
        if key not in _FBANK_OPTIONS:
            return f"fbank option {key}={value!r} is not in the graph"
        if _FBANK_OPTIONS[key] is not None and value != _FBANK_OPTIONS[key]:
            return f"fbank option {key}={value!r} is not in the graph (only {_FBANK_OPTIONS[key]!r})"
    return None


class KaldiFbankGraph(nn.Module):
    """s3prl's kaldi ``fbank`` upstream (``torchaudio.compliance.kaldi.fbank``, deltas,
    per-utterance CMVN) on a zero-padded batch, in ops ONNX opset 17 exports.

    ``forward(wavs (B, S), lengths (B,))`` -> features ``(B, T, D)`` and each waveform's
    frame count ``(B,)`` (``1 + (samples - window) // shift``, kaldi's ``snip_edges``); frames
    past a waveform's count are zeros. Each waveform gets its features alone: framing,
    DC removal, pre-emphasis, window and the DFT are one linear map of each frame (a strided
    convolution with the map's rows as kernels), deltas replicate each waveform's own last
    frame, and CMVN takes its statistics over its own frames.

    Example:
        >>> from s3prl_ser.upstreams.build import build_upstream
        >>> fbank = build_upstream("fbank")
        >>> wavs = [torch.randn(16000), torch.randn(8000)]
        >>> padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
        >>> features, frames = KaldiFbankGraph(fbank)(padded, torch.tensor([16000, 8000]))
        >>> features.shape, frames.tolist()
        (torch.Size([2, 98, 240]), [98, 48])
        >>> alone = fbank([wavs[1]])["hidden_states"][0][0]  # (48, 240)
        >>> bool((features[1, :48] - alone).abs().max() < 1e-3)
        True
    """

    def __init__(self, upstream: nn.Module) -> None:
        super().__init__()
        reason = kaldi_fbank_unsupported(upstream)
        if reason is not None:
            raise UnsupportedUpstreamError(reason)
        from torchaudio.compliance.kaldi import _feature_window_function, get_mel_banks

        described = front_end_description(upstream)
        assert described is not None  # checked above
        options = {"preemphasis_coefficient": 0.97, "remove_dc_offset": True, "window_type": "povey"}
        options |= {"blackman_coeff": 0.42, "round_to_power_of_two": True, "use_log_fbank": True}
        options |= {"use_power": True, "low_freq": 20.0, "high_freq": 0.0, "num_mel_bins": 23}
        options |= {"frame_length": 25.0, "frame_shift": 10.0, "vtln_low": 100.0, "vtln_high": -500.0}
        options |= {"vtln_warp": 1.0, **described["kwargs"]}
        self.window = int(16000 * options["frame_length"] * 0.001)
        self.shift = int(16000 * options["frame_shift"] * 0.001)
        padded = 2 ** math.ceil(math.log2(self.window)) if options["round_to_power_of_two"] else self.window
        # one frame (window,) -> real and imaginary DFT bins (padded // 2,), in float64 then float32
        frame_map = torch.eye(self.window, dtype=torch.float64)
        if options["remove_dc_offset"]:
            frame_map = frame_map - 1.0 / self.window
        if options["preemphasis_coefficient"] != 0.0:
            previous = torch.diag(torch.ones(self.window - 1, dtype=torch.float64), -1)
            previous[0, 0] = 1.0  # kaldi: the first sample is its own predecessor
            emphasis = torch.eye(self.window, dtype=torch.float64) - options["preemphasis_coefficient"] * previous
            frame_map = emphasis @ frame_map
        window = _feature_window_function(
            options["window_type"], self.window, options["blackman_coeff"], torch.device("cpu"), torch.float64
        )
        frame_map = window.unsqueeze(1) * frame_map
        bins = padded // 2  # kaldi's mel banks give the Nyquist bin no weight
        angle = 2 * math.pi / padded * torch.outer(torch.arange(bins), torch.arange(self.window)).double()
        dft = torch.cat([torch.cos(angle), -torch.sin(angle)]) @ frame_map  # (2 * bins, window)
        self.register_buffer("dft", dft.float().unsqueeze(1), persistent=False)  # conv1d kernels
        mel, _ = get_mel_banks(
            options["num_mel_bins"],
            padded,
            16000.0,
            options["low_freq"],
            options["high_freq"],
            options["vtln_low"],
            options["vtln_high"],
            options["vtln_warp"],
        )
        self.register_buffer("mel", mel.float().T.contiguous(), persistent=False)  # (bins, M)
        self.use_power, self.use_log = bool(options["use_power"]), bool(options["use_log_fbank"])
        self.order, self.delta_width = described["delta"]["order"], (described["delta"]["win_length"] - 1) // 2
        self.use_cmvn, self.cmvn_eps = described["cmvn"]["use_cmvn"], described["cmvn"]["eps"]

    def _deltas(self, x: Tensor, frames: Tensor) -> Tensor:
        """``torchaudio.functional.compute_deltas`` (replicate) along time of each ``x[b]``'s
        first ``frames[b]`` frames: ``(B, T, D)`` -> ``(B, T, D)``."""
        steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        last = (frames - 1).clamp(min=0).unsqueeze(1)
        out = torch.zeros_like(x)
        for k in range(1, self.delta_width + 1):
            ahead = torch.minimum(steps + k, last).unsqueeze(-1).expand_as(x)
            behind = (steps - k).clamp(min=0).unsqueeze(-1).expand_as(x)
            out = out + k * (torch.gather(x, 1, ahead) - torch.gather(x, 1, behind))
        n = self.delta_width
        return out / (n * (n + 1) * (2 * n + 1) / 3)

    def forward(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        frames = (torch.div(lengths - self.window, self.shift, rounding_mode="floor") + 1).clamp(min=0)
        spectrum = nn.functional.conv1d(wavs.unsqueeze(1), self.dft, stride=self.shift)  # (B, 2 * bins, T)
        real, imaginary = spectrum.transpose(1, 2).chunk(2, dim=-1)
        power = real * real + imaginary * imaginary
        energies = (power if self.use_power else power.sqrt()) @ self.mel  # (B, T, M)
        if self.use_log:
            energies = energies.clamp(min=torch.finfo(torch.float32).eps).log()
        valid = (torch.arange(energies.shape[1], device=wavs.device).unsqueeze(0) < frames.unsqueeze(1)).unsqueeze(-1)
        parts = [energies]
        for _ in range(self.order):
            parts.append(self._deltas(parts[-1], frames))
        features = torch.cat(parts, dim=-1).masked_fill(~valid, 0.0)
        if self.use_cmvn:  # s3prl's CMVN: unbiased std over the utterance's frames
            count = frames.view(-1, 1, 1).to(features.dtype)
            mean = features.sum(dim=1, keepdim=True) / count
            var = ((features - mean).masked_fill(~valid, 0.0) ** 2).sum(dim=1, keepdim=True) / (count - 1)
            features = ((features - mean) / (self.cmvn_eps + var.sqrt())).masked_fill(~valid, 0.0)
        return features, frames
