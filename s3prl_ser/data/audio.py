"""Audio loading for every dataset and inference path: soundfile, mono, 16 kHz, validated."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

__all__ = ["SAMPLE_RATE", "AudioError", "load_audio", "prepare_waveform"]

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """An audio file or array that cannot be used; the message names the source."""


def prepare_waveform(
    waveform: np.ndarray | torch.Tensor,
    sample_rate: int,
    *,
    source: str = "<array>",
    min_samples: int = 1,
) -> torch.Tensor:
    """Validate and convert a waveform to mono float32 at 16 kHz.

    Args:
        waveform: ``(T,)`` mono, or ``(T, C)`` / ``(C, T)`` multi-channel (the longer axis is
            taken as time). Integer PCM is scaled to [-1, 1].
        sample_rate: sampling rate of ``waveform`` in Hz.
        source: name used in error messages (a file path for files).
        min_samples: minimum length *after* resampling, e.g. an upstream's receptive field
            (400 samples for wav2vec 2.0 / HuBERT); shorter clips raise :class:`AudioError`.

    Returns:
        ``(T',)`` float32 tensor at :data:`SAMPLE_RATE`.
    """
    wav = torch.as_tensor(np.asarray(waveform))
    if not wav.dtype.is_floating_point:
        if wav.dtype == torch.bool:
            raise AudioError(f"{source}: boolean array is not audio")
        wav = wav.float() / float(torch.iinfo(wav.dtype).max)
    wav = wav.float()
    if wav.numel() == 0:
        raise AudioError(f"{source}: audio is empty (0 samples)")
    if wav.dim() == 2:
        time_axis = 0 if wav.shape[0] >= wav.shape[1] else 1
        wav = wav.mean(dim=1 - time_axis)
    elif wav.dim() != 1:
        raise AudioError(f"{source}: expected a 1-D or 2-D waveform, got shape {tuple(wav.shape)}")
    if not torch.isfinite(wav).all():
        raise AudioError(f"{source}: audio contains NaN or infinite samples")
    if sample_rate <= 0:
        raise AudioError(f"{source}: invalid sample rate {sample_rate}")
    if sample_rate != SAMPLE_RATE:
        wav = AF.resample(wav, sample_rate, SAMPLE_RATE)
    if wav.numel() < min_samples:
        raise AudioError(
            f"{source}: clip is {wav.numel()} samples ({wav.numel() / SAMPLE_RATE * 1000:.1f} ms) "
            f"at {SAMPLE_RATE} Hz, shorter than the required {min_samples} samples "
            "(the upstream's receptive field)"
        )
    return wav.contiguous()


def load_audio(path: str | os.PathLike, *, min_samples: int = 1) -> torch.Tensor:
    """Read an audio file as a mono 16 kHz float32 tensor ``(T,)``.

    Raises:
        FileNotFoundError: the file does not exist.
        AudioError: the file cannot be decoded, is empty, has non-finite samples, or is
            shorter than ``min_samples`` after resampling. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{path}: cannot decode audio ({error})") from error
    return prepare_waveform(data, sample_rate, source=str(path), min_samples=min_samples)
