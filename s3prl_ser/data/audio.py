"""Audio loading for every dataset and inference path: soundfile, mono, 16 kHz, validated.

Another sample rate or channel count is not an error: audio is averaged to mono and resampled
to 16 kHz by design, by :func:`resample` (soxr, whose memory does not depend on the rate pair)
in training, corpus checks and inference alike. What cannot be used is: a file soundfile
cannot open, no samples, a WAV shorter than its header says (a cut-off copy, which soundfile
reads silently as a shorter clip), fewer than ``min_samples`` samples after resampling, and
non-finite samples.
:func:`audio_file_problem` finds all but the last from the header, without decoding;
:func:`load_audio` checks everything when it decodes.
"""

from __future__ import annotations

import errno
import math
import os
import struct
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

__all__ = [
    "SAMPLE_RATE",
    "SILENCE_DBFS",
    "AudioError",
    "load_audio",
    "prepare_waveform",
    "audio_file_problem",
    "resample",
    "resampled_length",
    "resample_context",
    "level_dbfs",
    "is_silent",
    "require_file",
]

SAMPLE_RATE = 16000
# soxr's default preset, "high quality" (libsoxr's SOXR_HQ: 20-bit precision).
RESAMPLE_QUALITY = "HQ"
# Input context read on each side of a segment so that resampling it alone gives the same
# samples as resampling the whole file: 20 ms already does at 8-44.1 kHz (measured), 0.1 s
# leaves room (tests/test_audio.py checks windows against the whole file).
RESAMPLE_MARGIN_SECONDS = 0.1
# Audio whose RMS level is below this (dB relative to full scale, 1.0) is reported as silence:
# a model still outputs a class for it, which means nothing.
SILENCE_DBFS = -60.0


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
    wav = resample(wav, sample_rate)
    if wav.numel() < min_samples:
        raise AudioError(f"{source}: {_too_short(wav.numel(), min_samples, sample_rate != SAMPLE_RATE)}")
    return wav.contiguous()


def resample(wav: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Resample mono audio ``(T,)`` at ``sample_rate`` to ``(resampled_length(T, sample_rate),)``
    float32 at :data:`SAMPLE_RATE` with soxr (the same tensor back when the rate is already 16 kHz).

    The one resampler of the project. Its memory is the input and output plus a filter of a few
    kB, whatever the rate pair; torchaudio's kernel grows with ``rate / gcd(rate, 16000)``
    (gigabytes at 16001 Hz).

    Raises:
        AudioError: a rate soxr cannot convert from.

    Example:
        >>> resample(np.ones(44100, dtype="float32"), 44100).shape  # 1 s at 44.1 kHz
        torch.Size([16000])
    """
    if sample_rate == SAMPLE_RATE:
        return torch.as_tensor(wav, dtype=torch.float32)
    data = np.ascontiguousarray(torch.as_tensor(wav).numpy(), dtype=np.float32)
    try:
        out = soxr.resample(data, sample_rate, SAMPLE_RATE, quality=RESAMPLE_QUALITY)
    except (ValueError, RuntimeError) as error:
        raise AudioError(f"cannot resample from {sample_rate} Hz ({error})") from error
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def resampled_length(frames: int, sample_rate: int) -> int:
    """Samples :func:`resample` makes of ``frames`` at ``sample_rate``: ``frames * 16000 / rate``
    rounded, halves up (soxr's rule), in exact integer arithmetic.

    Example:
        >>> resampled_length(44100, 44100), resampled_length(1000, 44100), resampled_length(3, 96000)
        (16000, 363, 1)
    """
    return (2 * frames * SAMPLE_RATE + sample_rate) // (2 * sample_rate)


def resample_context(start: int, stop: int, sample_rate: int, frames: int) -> tuple[int, int, int]:
    """Which input frames to resample for output samples ``start``..``stop`` of a recording of
    ``frames`` frames at ``sample_rate``, so that they equal those of the whole file resampled at
    once (no seams between windows; equal within float rounding, ~1e-6).

    The read starts :data:`RESAMPLE_MARGIN_SECONDS` early, at a frame where input and output
    sample grids meet (a multiple of ``rate / gcd(rate, 16000)`` frames, at most 1 s apart), and
    ends the margin late.

    Returns:
        ``(first, last, offset)``: read frames ``first``..``last``, resample them, and keep
        samples ``offset``..``offset + stop - start`` of the result.

    Example:
        >>> resample_context(64000, 112000, 44100, 441000)  # 4-7 s of a 10 s file at 44.1 kHz
        (171990, 313110, 1600)
    """
    step = math.gcd(sample_rate, SAMPLE_RATE)
    period, out_period = sample_rate // step, SAMPLE_RATE // step
    margin = int(RESAMPLE_MARGIN_SECONDS * SAMPLE_RATE)
    periods = max(0, start - margin) // out_period
    first = periods * period
    last = min(frames, -(-(stop + margin) * sample_rate // SAMPLE_RATE))
    return first, last, start - periods * out_period


def level_dbfs(wav: torch.Tensor | None = None, *, mean_square: float | None = None) -> float:
    """RMS level in dB relative to full scale (1.0) of ``wav`` ``(T,)``, or of a ``mean_square``
    computed elsewhere; ``-inf`` for digital silence.

    Example:
        >>> round(level_dbfs(torch.full((100,), 0.1)), 6), level_dbfs(torch.zeros(100)), level_dbfs(mean_square=1e-4)
        (-20.0, -inf, -40.0)
    """
    if mean_square is None:
        mean_square = float(wav.double().square().mean()) if wav is not None and wav.numel() else 0.0
    return 10 * math.log10(mean_square) if mean_square > 0 else -math.inf


def is_silent(wav: torch.Tensor) -> bool:
    """Whether ``wav`` ``(T,)`` is quieter than :data:`SILENCE_DBFS` (RMS): no speech to classify."""
    return level_dbfs(wav) < SILENCE_DBFS


def require_file(path: Path) -> None:
    """Raise unless ``path`` is a readable regular file (checked before opening: a FIFO would block).

    Raises:
        FileNotFoundError: no such file (or a dangling symbolic link).
        AudioError: a symbolic link loop, a directory or another kind of file.
    """
    try:
        if path.is_file():
            return
        os.stat(path)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FileNotFoundError(f"audio file not found: {path}") from error
        if error.errno == errno.ELOOP:
            raise AudioError(f"{path}: symbolic link loop ({error.strerror})") from error
        raise AudioError(f"{path}: cannot read ({error.strerror})") from error
    raise AudioError(f"{path}: not an audio file ({'a directory' if path.is_dir() else 'not a regular file'})")


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
    require_file(path)
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
    samples = resampled_length(frames, info.samplerate)
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
