"""Audio loading for every dataset and inference path: soundfile, mono, 16 kHz, validated.

Another sample rate or channel count is not an error: audio is resampled to 16 kHz and
averaged to mono by design. What cannot be used is: a file soundfile cannot open, no samples,
a WAV shorter than its header says (a cut-off copy, which soundfile reads silently as a shorter
clip), fewer than ``min_samples`` samples after resampling, and non-finite samples.
:func:`audio_file_problem` finds all but the last from the header, without decoding;
:func:`load_audio` checks everything when it decodes.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

__all__ = ["SAMPLE_RATE", "AudioError", "load_audio", "prepare_waveform", "audio_file_problem"]

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
        raise AudioError(f"{source}: {_too_short(wav.numel(), min_samples, sample_rate != SAMPLE_RATE)}")
    return wav.contiguous()


def _too_short(samples: int, min_samples: int, resampled: bool) -> str:
    return (
        f"clip is {samples} samples ({samples / SAMPLE_RATE * 1000:.1f} ms) at {SAMPLE_RATE} Hz"
        f"{' after resampling' if resampled else ''}, shorter than the required {min_samples} samples "
        "(the upstream's receptive field)"
    )


def load_audio(
    path: str | os.PathLike,
    *,
    min_samples: int = 1,
    start: float | None = None,
    end: float | None = None,
    channel: int | None = None,
) -> torch.Tensor:
    """Read an audio file (or the ``start``..``end`` seconds of it) as a mono 16 kHz float32 tensor ``(T,)``.

    Args:
        path: WAV, FLAC, OGG or any format soundfile reads, at any sample rate.
        min_samples: shortest accepted result after resampling.
        start, end: a segment in seconds (a long recording cut at load time); only the
            segment's frames are decoded.
        channel: 1-based channel to keep; ``None`` averages all channels.

    Raises:
        FileNotFoundError: the file does not exist.
        AudioError: the file cannot be decoded, is a WAV shorter than its header says, is
            empty, has non-finite samples, is shorter than ``min_samples`` after
            resampling, or has no such segment or channel. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    truncated = _truncation(path)
    if truncated:
        raise AudioError(f"{path}: {truncated}")
    source = (
        str(path) if start is None and end is None else f"{path} [{start or 0:g}-{end if end is not None else 'end'} s]"
    )
    try:
        frames = {}
        if start is not None or end is not None:
            info = soundfile.info(str(path))
            problem = _segment_problem(info, start, end)
            if problem:
                raise AudioError(f"{path}: {problem}")
            frames = {"start": int(round((start or 0) * info.samplerate))}
            if end is not None:
                frames["stop"] = min(int(round(end * info.samplerate)), info.frames)
        data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True, **frames)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{path}: cannot decode audio ({error})") from error
    if channel is not None:
        if not 1 <= channel <= data.shape[1]:
            raise AudioError(f"{path}: channel {channel} requested, the file has {data.shape[1]}")
        data = data[:, channel - 1]
    return prepare_waveform(data, sample_rate, source=source, min_samples=min_samples)


def _segment_problem(info: soundfile._SoundFileInfo, start: float | None, end: float | None) -> str | None:
    """Why ``start``..``end`` (seconds) is not a segment of the file described by ``info``."""
    duration = info.frames / info.samplerate
    # Annotation times are rounded; half a 10 ms frame past the end is still the end.
    if (start or 0) >= duration or (end is not None and end > duration + 0.005):
        return f"segment {start or 0:g}-{end if end is not None else 'end'} s lies outside the recording ({duration:.3f} s)"
    return None


def audio_file_problem(
    path: str | os.PathLike,
    *,
    min_samples: int = 1,
    max_samples: int | None = None,
    start: float | None = None,
    end: float | None = None,
    channel: int | None = None,
) -> str | None:
    """Why an existing audio file (or its ``start``..``end`` segment, or its ``channel``) cannot
    be used, judged from its header alone, or None.

    Reads the header (and, for a WAV, its chunk sizes) without decoding, so every file of a
    corpus can be checked before training. Non-finite samples show only when decoding
    (:func:`load_audio`); a compressed file cut short (FLAC) only when decoding too.

    Returns:
        ``"cannot read: ..."``, ``"audio is empty (0 samples)"``, ``"truncated: ..."``,
        ``"segment ... lies outside the recording"``, ``"channel N requested ..."`` or
        ``"clip is N samples ..."`` (shorter than ``min_samples``, or longer than
        ``max_samples``, after resampling to 16 kHz).
    """
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        return f"cannot read: {getattr(error, 'error_string', error)}"
    truncated = _truncation(Path(path))
    if truncated:
        return truncated
    if info.frames <= 0:
        return "audio is empty (0 samples)"
    if channel is not None and not 1 <= channel <= info.channels:
        return f"channel {channel} requested, the file has {info.channels}"
    frames = info.frames
    if start is not None or end is not None:
        problem = _segment_problem(info, start, end)
        if problem:
            return problem
        stop = info.frames if end is None else min(int(round(end * info.samplerate)), info.frames)
        frames = stop - int(round((start or 0) * info.samplerate))
    # torchaudio's resampling yields ceil(frames * 16000 / rate) samples.
    samples = -(-frames * SAMPLE_RATE // info.samplerate)
    if samples < min_samples:
        return _too_short(samples, min_samples, info.samplerate != SAMPLE_RATE)
    if max_samples is not None and samples > max_samples:
        return (
            f"clip is {samples / SAMPLE_RATE:.1f} s, longer than the evaluation limit of "
            f"{max_samples / SAMPLE_RATE:g} s (datarc.max_eval_seconds; memory grows with the clip)"
        )
    return None


def _truncation(path: Path) -> str | None:
    """``"truncated: ..."`` for a RIFF WAV whose file ends before the data size its header
    declares (soundfile reads it silently as a shorter clip); None otherwise, for other
    formats, and for a streamed WAV (its writer could not seek back to fill the size in:
    0xFFFFFFFF)."""
    with open(path, "rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] not in (b"RIFF", b"RIFX") or header[8:12] != b"WAVE":
            return None
        order = "<" if header[:4] == b"RIFF" else ">"
        size = os.fstat(handle.fileno()).st_size
        offset = 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk, length = struct.unpack(f"{order}4sI", handle.read(8))
            if chunk == b"data":
                present = size - offset - 8
                if length == 0xFFFFFFFF or present >= length:
                    return None
                return f"truncated: its header declares {length} data bytes, the file holds {present}"
            offset += 8 + length + (length & 1)  # chunks are padded to an even size
    return None
