"""The one audio reader of the project: preparation, training and inference all read audio here.

Files are decoded by soundfile (WAV, FLAC, OGG/Vorbis, Opus, and MP3 with libsndfile >= 1.1)
and, for what soundfile cannot decode (M4A/AAC, ...), by ``ffmpeg`` when an ``ffmpeg``
executable (with its ``ffprobe``) is on ``PATH``. A VBR MP3 without a Xing/VBRI header goes
to ffmpeg too (:func:`_untagged_vbr_mp3`): libsndfile stops decoding it at the length the first
frame's bitrate predicts. Another sample rate or channel count is not
an error: audio is averaged to mono and resampled to 16 kHz by design, by :func:`resample`
(soxr, whose memory does not depend on the rate pair); ffmpeg converts to 16 kHz itself (its
``-ar``). What cannot be used is: a file neither reader can open, no samples, a WAV shorter
than its header says (a cut-off copy, which soundfile reads silently as a shorter clip), fewer
than ``min_samples`` samples after resampling, and non-finite samples.
:func:`audio_file_problem` finds all but the last from the header, decoding only to count the
frames of files whose header length is an estimate (MP3, what ffmpeg reads; :func:`audio_info`);
:func:`load_audio` checks everything when it decodes; :func:`read_segment` reads one window
of a long file without decoding the rest.
"""

from __future__ import annotations

import errno
import io
import math
import mmap
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
import soxr
import torch

__all__ = [
    "AUDIO_EXTENSIONS",
    "SAMPLE_RATE",
    "SILENCE_DBFS",
    "AudioError",
    "AudioInfo",
    "audio_info",
    "load_audio",
    "decode_audio",
    "read_segment",
    "prepare_waveform",
    "audio_file_problem",
    "resample",
    "resampled_length",
    "resample_context",
    "level_dbfs",
    "is_silent",
    "require_file",
    "refuse_url",
]

SAMPLE_RATE = 16000
# File extensions taken for audio when a folder is searched (corpus preparation, inference).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".wma", ".aiff", ".aif")
# soxr's default preset, "high quality" (libsoxr's SOXR_HQ: 20-bit precision).
RESAMPLE_QUALITY = "HQ"
# Input context read on each side of a segment so that resampling it alone gives the same
# samples as resampling the whole file: 20 ms already does at 8-44.1 kHz (measured), 0.1 s
# leaves room (tests/test_audio.py checks windows against the whole file).
RESAMPLE_MARGIN_SECONDS = 0.1
# Audio ffmpeg decodes before a window of a file it reads, then drops: a window then equals the
# whole file's samples (0.4 s did not always for a VBR MP3, 0.5 s did at every start tested).
FFMPEG_LEAD_SECONDS = 0.5
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


# "scheme://": a URL, which Path() would turn into a local path ("https:/host/a.wav")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def refuse_url(path: str | os.PathLike) -> None:
    """Raise for a URL given as a path: audio is read from local files only, never the network.

    Raises:
        AudioError: ``path`` is a string that starts with ``scheme://``.

    Example:
        >>> refuse_url("https://example.org/a.wav")
        Traceback (most recent call last):
        ...
        s3prl_ser.data.audio.AudioError: https://example.org/a.wav: a URL; audio is read from local files only (download it first)
    """
    if isinstance(path, str) and _URL.match(path):
        raise AudioError(f"{path}: a URL; audio is read from local files only (download it first)")


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


# soundfile's errors for a file it cannot open or decode
_SOUNDFILE_ERRORS = (soundfile.LibsndfileError, RuntimeError, TypeError)


@dataclass(frozen=True)
class AudioInfo:
    """Length of an audio file: ``frames`` at ``sample_rate``, its ``channels``, and which reader
    opens it (``"soundfile"``, or ``"ffmpeg"``: then ``frames`` are samples at 16 kHz, ffmpeg's output).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "a.wav"
        >>> soundfile.write(path, np.zeros((22050, 2), dtype="float32"), 44100)  # 0.5 s of stereo
        >>> info = audio_info(path)
        >>> info.frames, info.sample_rate, info.channels, info.seconds, info.reader
        (22050, 44100, 2, 0.5, 'soundfile')
        >>> read_segment(path, info, start=4000, stop=5600).shape  # 0.1 s from 0.25 s, mono 16 kHz
        torch.Size([1600])
    """

    frames: int
    sample_rate: int
    channels: int
    reader: str  # "soundfile" or "ffmpeg"

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    @property
    def samples(self) -> int:
        """Length at 16 kHz, after resampling."""
        return resampled_length(self.frames, self.sample_rate)


def _soundfile_reason(error: BaseException) -> str:
    return getattr(error, "error_string", None) or str(error)


def _ffprobe_info(path: Path) -> AudioInfo:
    """Channels of the first audio stream through ffprobe (ffmpeg's companion), and its length
    decoded by ffmpeg (:func:`_ffmpeg_samples`): the duration ffprobe reports is an estimate."""
    probe = shutil.which("ffprobe")
    if probe is None:
        raise AudioError(f"{path}: ffprobe is not installed")
    result = subprocess.run(
        [probe, "-v", "error", "-select_streams", "a:0", "-show_entries", "stream=channels"]
        + ["-of", "default=noprint_wrappers=1", str(path)],
        capture_output=True,
        text=True,
    )
    fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    try:
        channels = int(fields["channels"])
    except (KeyError, ValueError) as error:
        reason = result.stderr.strip()[-200:] or "no audio stream"
        raise AudioError(f"{path}: ffprobe cannot read it ({reason})") from error
    return AudioInfo(_ffmpeg_samples(path), SAMPLE_RATE, channels, "ffmpeg")


# Frames decoded per block when a file's length is counted by decoding it (constant memory).
_COUNT_BLOCK = 1 << 16


def _ffmpeg_samples(path: Path) -> int:
    """Mono samples at 16 kHz that ffmpeg decodes from the first audio stream of ``path``,
    counted as its output streams through a pipe (memory of one block, whatever the length)."""
    command = [shutil.which("ffmpeg") or "ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0"]
    command += ["-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    # stderr goes to a file: a damaged file's many error lines would fill a pipe and stall ffmpeg
    with tempfile.TemporaryFile() as errors:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors) as process:
            size = 0
            while block := process.stdout.read(4 * _COUNT_BLOCK):
                size += len(block)
        errors.seek(0)
        stderr = errors.read().decode(errors="replace").strip()
    if process.returncode != 0:
        raise AudioError(f"{path}: ffmpeg cannot decode it ({stderr[-300:]})")
    return size // 4


# MPEG audio Layer III frame headers: bitrates (kbit/s) by index for MPEG-1 and for MPEG-2/2.5,
# and sample rates by version bits (3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5) and index.
_MP3_KBPS = {
    True: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    False: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_UNTAGGED_VBR = (
    "a VBR MP3 without a Xing/VBRI header, which libsndfile decodes only up to the length "
    "its first frame's bitrate predicts"
)


def _mp3_frame(data: bytes | mmap.mmap, pos: int) -> tuple[int, int, int] | None:
    """``(kbit/s, frame bytes, bytes before a Xing tag)`` of the MPEG Layer III frame header at
    ``pos`` of ``data``, or None when none is there (free-format bitrate included)."""
    if pos + 4 > len(data):
        return None
    b0, b1, b2, b3 = data[pos : pos + 4]
    version, layer, bitrate, rate = (b1 >> 3) & 3, (b1 >> 1) & 3, b2 >> 4, (b2 >> 2) & 3
    if b0 != 0xFF or b1 & 0xE0 != 0xE0 or version == 1 or layer != 1 or bitrate in (0, 15) or rate == 3:
        return None
    mpeg1, mono = version == 3, b3 >> 6 == 3
    kbps = _MP3_KBPS[mpeg1][bitrate]
    size = (144000 if mpeg1 else 72000) * kbps // _MP3_RATES[version][rate] + ((b2 >> 1) & 1)
    side_info = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    return kbps, size, 4 + side_info


def _untagged_vbr_mp3(source: Path | bytes) -> bool:
    """Whether ``source`` (a file, or a file's bytes) is an MP3 whose frames change bitrate and
    whose first frame holds no Xing/Info/VBRI header (the table of contents that gives the
    length). libsndfile (1.2.2) then takes the length from the first frame's bitrate and stops
    decoding there: 2.34 s of a 10 s file (measured), silently.

    Walks the frame headers from the first (after an ID3v2 tag) until the bitrate changes or
    no header follows (an ID3v1 tag, the end): a few ms per minute of a CBR file.
    """
    if isinstance(source, bytes):
        return _untagged_vbr_in(source)
    with open(source, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return False
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _untagged_vbr_in(data)


def _untagged_vbr_in(data: bytes | mmap.mmap) -> bool:
    pos = 0
    if data[:3] == b"ID3" and len(data) >= 10:  # ID3v2: a 10-byte header, a synchsafe size, maybe a footer
        pos = 10 + sum((byte & 0x7F) << (7 * (3 - i)) for i, byte in enumerate(data[6:10]))
        pos += 10 if data[5] & 0x10 else 0
    first = _mp3_frame(data, pos)
    if first is None:
        return False
    kbps, _, tag = first
    if data[pos + tag : pos + tag + 4] in (b"Xing", b"Info") or data[pos + 36 : pos + 40] == b"VBRI":
        return False
    while (frame := _mp3_frame(data, pos)) is not None:
        if frame[0] != kbps:
            return True
        pos += frame[1]
    return False


def _soundfile_frames(path: Path, info: soundfile._SoundFileInfo) -> int:
    """Frames soundfile decodes from ``path``: the header's count where it is exact; for MP3,
    whose header count is an estimate (601.42 s for 600.03 s decoded, measured on a CBR file
    without a Xing tag), counted by decoding block by block (memory of one block)."""
    if info.format != "MP3":
        return int(info.frames)
    frames = 0
    with soundfile.SoundFile(str(path)) as handle:
        block = np.empty((_COUNT_BLOCK, handle.channels), dtype=np.float32)
        while read := len(handle.read(out=block)):
            frames += read
    return frames


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Frames, rate and channels of an audio file (ffprobe when soundfile cannot open it).

    ``frames`` are the frames the reader decodes: from the header where it is exact (WAV, FLAC,
    OGG), counted by decoding the file once, in blocks, where it is an estimate (MP3, and every
    file ffmpeg reads), so that nothing placed by this length lies past the audio.

    Raises:
        FileNotFoundError: no such file.
        AudioError: neither soundfile nor ffmpeg can read it (the message names the file, both
            readers' reasons, and ffmpeg when it is not installed), or a URL.
    """
    refuse_url(path)
    path = Path(path)
    require_file(path)
    error: BaseException | None = None
    try:
        info = soundfile.info(str(path))
        if info.format != "MP3" or not _untagged_vbr_mp3(path):
            return AudioInfo(_soundfile_frames(path, info), int(info.samplerate), int(info.channels), "soundfile")
        reason = _UNTAGGED_VBR
    except _SOUNDFILE_ERRORS as caught:
        error, reason = caught, _soundfile_reason(caught)
    if shutil.which("ffmpeg") is None:
        raise AudioError(
            f"{path}: cannot decode audio (soundfile: {reason}); "
            "install ffmpeg to read formats soundfile does not (MP3 on old libsndfile, M4A/AAC)"
        ) from error
    try:
        return _ffprobe_info(path)
    except AudioError as ffmpeg_error:
        raise AudioError(
            f"{path}: cannot decode audio (soundfile: {reason}; {str(ffmpeg_error).removeprefix(f'{path}: ')})"
        ) from ffmpeg_error


def _ffmpeg_decode(path: Path, channels: int, start: float = 0.0, seconds: float | None = None) -> np.ndarray:
    """``(T, channels)`` float32 samples at 16 kHz of the first audio stream of ``path``, from
    ``start`` seconds (``seconds`` long, else to the end), via ffmpeg."""
    command = [shutil.which("ffmpeg") or "ffmpeg", "-v", "error", "-nostdin"]
    if start > 0:
        command += ["-ss", f"{start:.6f}"]
    command += ["-i", str(path), "-map", "0:a:0"]
    if seconds is not None:
        command += ["-t", f"{seconds:.6f}"]
    command += ["-f", "f32le", "-ac", str(channels), "-ar", str(SAMPLE_RATE), "-"]
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        raise AudioError(f"{path}: ffmpeg cannot decode it ({result.stderr.decode(errors='replace').strip()[-300:]})")
    data = np.frombuffer(result.stdout, dtype=np.float32)
    return data[: len(data) // channels * channels].reshape(-1, channels).copy()


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
        path: any format soundfile reads, at any sample rate; else any ffmpeg reads (when installed).
        min_samples: shortest accepted result after resampling.
        start, end: a segment in seconds (a long recording cut at load time); only the
            segment's frames are decoded.
        channel: 1-based channel to keep; ``None`` averages all channels.

    Raises:
        FileNotFoundError: the file does not exist.
        AudioError: the file cannot be decoded (by either reader), is a WAV shorter than its
            header says, is empty, has non-finite samples, is shorter than ``min_samples`` after
            resampling, or has no such segment or channel, or ``path`` is a URL. The message
            names the file.
    """
    refuse_url(path)
    path = Path(path)
    require_file(path)
    truncated = _truncation(path)
    if truncated:
        raise AudioError(f"{path}: {truncated}")
    source = (
        str(path) if start is None and end is None else f"{path} [{start or 0:g}-{end if end is not None else 'end'} s]"
    )
    try:
        if _untagged_vbr_mp3(path):  # libsndfile would cut it short: ffmpeg (audio_info says so without it)
            data, sample_rate = _ffmpeg_read(path, start, end), SAMPLE_RATE
        else:
            frames = {}
            if start is not None or end is not None:
                info = soundfile.info(str(path))
                problem = _segment_problem(info.frames / info.samplerate, start, end)
                if problem:
                    raise AudioError(f"{path}: {problem}")
                frames = {"start": int(round((start or 0) * info.samplerate))}
                if end is not None:
                    frames["stop"] = min(int(round(end * info.samplerate)), info.frames)
            data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True, **frames)
    except _SOUNDFILE_ERRORS as error:
        if shutil.which("ffmpeg") is None or _soundfile_opens(path):  # ffmpeg only for what soundfile cannot open
            raise AudioError(f"{path}: cannot decode audio ({error})") from error
        data, sample_rate = _ffmpeg_read(path, start, end), SAMPLE_RATE
    if channel is not None:
        if not 1 <= channel <= data.shape[1]:
            raise AudioError(f"{path}: channel {channel} requested, the file has {data.shape[1]}")
        data = data[:, channel - 1]
    return prepare_waveform(data, sample_rate, source=source, min_samples=min_samples)


def decode_audio(
    data: bytes | bytearray | memoryview | BinaryIO, *, source: str = "<bytes>", min_samples: int = 1
) -> torch.Tensor:
    """Decode an encoded audio file held in memory (``bytes``) or read from a binary file
    object (from its current position to its end) -> mono 16 kHz float32 ``(T,)``.

    What soundfile decodes is decoded in memory, with :func:`load_audio`'s checks; what it cannot
    (M4A/AAC, ...) or would cut short (a VBR MP3 without a Xing/VBRI header) goes through
    ffmpeg, from a temporary file (MP4's index may sit at the end, which ffmpeg cannot reach in
    a pipe), exactly as :func:`load_audio` reads a path.

    Raises:
        AudioError: as :func:`load_audio`, naming ``source``; a file object opened in text mode.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        data = data.read()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise AudioError(f"{source}: a file object must be opened in binary mode ('rb'), got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise AudioError(f"{source}: audio is empty (0 bytes)")
    truncated = _wav_truncation(io.BytesIO(data), len(data))
    if truncated:
        raise AudioError(f"{source}: {truncated}")
    if _untagged_vbr_mp3(data):  # libsndfile would cut it short
        return _load_bytes_from_file(data, source, min_samples)
    try:
        samples, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except _SOUNDFILE_ERRORS as error:
        if shutil.which("ffmpeg") is None or _soundfile_opens(io.BytesIO(data)):
            raise AudioError(f"{source}: cannot decode audio ({error})") from error
        return _load_bytes_from_file(data, source, min_samples)
    return prepare_waveform(samples, sample_rate, source=source, min_samples=min_samples)


def _load_bytes_from_file(data: bytes, source: str, min_samples: int) -> torch.Tensor:
    """:func:`load_audio` of ``data`` written to a temporary file, errors naming ``source``."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "audio"
        path.write_bytes(data)
        try:
            return load_audio(path, min_samples=min_samples)
        except AudioError as error:
            raise AudioError(str(error).replace(str(path), source)) from error


def _soundfile_opens(path: Path | BinaryIO) -> bool:
    """Whether soundfile reads the header of ``path`` (a file it then fails to decode is damaged,
    not a format for ffmpeg, which would decode what it can of it)."""
    try:
        soundfile.info(path if isinstance(path, io.IOBase) else str(path))
    except _SOUNDFILE_ERRORS:
        return False
    return True


def _ffmpeg_read(path: Path, start: float | None, end: float | None) -> np.ndarray:
    """``(T, C)`` samples at 16 kHz of what soundfile cannot decode: the whole file or ``start``..``end`` s."""
    info = audio_info(path)  # ffprobe: its channels and duration (an AudioError naming both readers)
    problem = _segment_problem(info.seconds, start, end) if start is not None or end is not None else None
    if problem:
        raise AudioError(f"{path}: {problem}")
    seconds = None if end is None else end - (start or 0.0)
    return _ffmpeg_decode(path, info.channels, start or 0.0, seconds)


def read_segment(path: str | os.PathLike, info: AudioInfo, start: int, stop: int) -> torch.Tensor:
    """Samples ``start``..``stop`` of the file at 16 kHz, mono float32 ``(stop - start,)``: the
    same samples as reading the whole file and slicing it (no seams between windows), but only
    the segment and :data:`RESAMPLE_MARGIN_SECONDS` around it are read from disk (soundfile
    seeks, :func:`resample_context`; ffmpeg seeks to :data:`FFMPEG_LEAD_SECONDS` before it).

    Raises:
        AudioError: the segment is empty, cannot be decoded, holds non-finite samples, or the
            file ends before ``stop`` (a header that claims more than the file holds).
    """
    path = Path(path)
    source = f"{path}@{start / SAMPLE_RATE:.2f}s"
    if stop <= start:
        raise AudioError(f"{source}: an empty segment ({start}..{stop} at {SAMPLE_RATE} Hz)")
    if info.reader == "ffmpeg":  # ffmpeg's output is already at 16 kHz: info.frames are samples
        # ffmpeg seeks to the sample, but decodes the first frames after a seek wrong (an MP3's
        # bit reservoir lies in earlier frames): start FFMPEG_LEAD_SECONDS early and drop them.
        lead = min(start, int(FFMPEG_LEAD_SECONDS * SAMPLE_RATE))
        data = _ffmpeg_decode(path, info.channels, (start - lead) / SAMPLE_RATE, (stop - start + lead) / SAMPLE_RATE)
        return prepare_waveform(data.mean(axis=1), SAMPLE_RATE, source=source)[lead:]
    first, last, offset = resample_context(start, stop, info.sample_rate, info.frames)
    try:
        data, rate = soundfile.read(str(path), start=first, stop=last, dtype="float32", always_2d=True)
    except _SOUNDFILE_ERRORS as error:
        raise AudioError(f"{path}: cannot decode audio at frame {first} ({error})") from error
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no audio at frame {first} (the header declares {info.frames} frames)")
    if data.shape[1] > 1:  # average channels here: prepare_waveform would guess the time axis of a 1-frame block
        data = data.mean(axis=1)
    wav = prepare_waveform(data.reshape(-1), rate, source=source)[offset : offset + stop - start]
    if wav.numel() < stop - start:
        raise AudioError(
            f"{path}: audio ends before {stop / SAMPLE_RATE:.2f} s (the header declares {info.seconds:.2f} s)"
        )
    return wav


def _segment_problem(duration: float, start: float | None, end: float | None) -> str | None:
    """Why ``start``..``end`` (seconds) is not a segment of a recording of ``duration`` seconds."""
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

    Reads the header (and, for a WAV, its chunk sizes), decoding only to count the frames of
    an MP3 or a file that ffmpeg reads (:func:`audio_info`), so every file of a corpus can be
    checked before training; a file soundfile cannot open is probed by ffprobe
    (:func:`audio_info`), so what :func:`load_audio` reads is accepted here too. Non-finite
    samples show only when decoding (:func:`load_audio`); a compressed file cut short (FLAC)
    only when decoding too.

    Returns:
        ``"cannot read: ..."``, ``"audio is empty (0 samples)"``, ``"truncated: ..."``,
        ``"segment ... lies outside the recording"``, ``"channel N requested ..."`` or
        ``"clip is N samples ..."`` (shorter than ``min_samples``, or longer than
        ``max_samples``, after resampling to 16 kHz).
    """
    try:
        info = audio_info(path)
    except (FileNotFoundError, AudioError) as error:
        return f"cannot read: {str(error).removeprefix(f'{path}: ')}"
    truncated = _truncation(Path(path))
    if truncated:
        return truncated
    if info.frames <= 0:
        return "audio is empty (0 samples)"
    if channel is not None and not 1 <= channel <= info.channels:
        return f"channel {channel} requested, the file has {info.channels}"
    frames = info.frames
    if start is not None or end is not None:
        problem = _segment_problem(info.seconds, start, end)
        if problem:
            return problem
        stop = info.frames if end is None else min(int(round(end * info.sample_rate)), info.frames)
        frames = stop - int(round((start or 0) * info.sample_rate))
    samples = resampled_length(frames, info.sample_rate)
    if samples < min_samples:
        return _too_short(samples, min_samples, info.sample_rate != SAMPLE_RATE)
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
        return _wav_truncation(handle, os.fstat(handle.fileno()).st_size)


def _wav_truncation(handle: BinaryIO, size: int) -> str | None:
    """:func:`_truncation` of the ``size`` bytes of a seekable binary ``handle``."""
    header = handle.read(12)
    if len(header) < 12 or header[:4] not in (b"RIFF", b"RIFX") or header[8:12] != b"WAVE":
        return None
    order = "<" if header[:4] == b"RIFF" else ">"
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
