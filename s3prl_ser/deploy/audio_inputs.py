"""Audio inputs for inference: which files (files, folders, list files) and how to read them.

Reading goes through :func:`s3prl_ser.data.audio.load_audio` (soundfile: WAV, FLAC, OGG/Vorbis,
Opus, and MP3 with libsndfile >= 1.1) and falls back to ``ffmpeg`` for what soundfile cannot
decode (M4A/AAC, ...) when an ``ffmpeg`` executable is on ``PATH``. Long files are read a
window at a time (:func:`read_segment`): soundfile seeks to the frame, ffmpeg to the time.
Soundfile's audio is resampled by :func:`s3prl_ser.data.audio.resample`; ffmpeg converts to
16 kHz itself (its ``-ar``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from s3prl_ser.data.audio import (
    SAMPLE_RATE,
    AudioError,
    load_audio,
    prepare_waveform,
    require_file,
    resample_context,
    resampled_length,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioInfo",
    "collect_audio_files",
    "audio_info",
    "read_audio",
    "read_segment",
]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".wma", ".aiff", ".aif")
LIST_EXTENSIONS = (".txt", ".lst", ".list", ".scp")


@dataclass(frozen=True)
class AudioInfo:
    """Length of an audio file: ``frames`` at ``sample_rate``, and which reader opens it.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "a.wav"
        >>> soundfile.write(path, np.zeros((22050, 2), dtype="float32"), 44100)  # 0.5 s of stereo
        >>> info = audio_info(path)
        >>> info.frames, info.sample_rate, info.seconds, info.reader
        (22050, 44100, 0.5, 'soundfile')
        >>> read_segment(path, info, start=4000, stop=5600).shape  # 0.1 s from 0.25 s, mono 16 kHz
        torch.Size([1600])
    """

    frames: int
    sample_rate: int
    reader: str  # "soundfile" or "ffmpeg"

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    @property
    def samples(self) -> int:
        """Length at 16 kHz, after resampling."""
        return resampled_length(self.frames, self.sample_rate)


def collect_audio_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files, folders (recursive, by audio extension) and list files (one path a line,
    ``#`` comments; relative paths are relative to the list) into audio paths, in order,
    without duplicates. A path that does not exist is kept: reading it gives its error row; so
    is a dangling or looping symbolic link with an audio extension found in a folder (links to
    folders are not followed).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "b").mkdir(); _ = (root / "b" / "x.wav").write_bytes(b""); _ = (root / "a.flac").write_bytes(b"")
        >>> _ = (root / "notes.md").write_text("no audio")
        >>> [p.relative_to(root).as_posix() for p in collect_audio_files([root])]
        ['a.flac', 'b/x.wav']
        >>> _ = (root / "list.txt").write_text("# two files\\na.flac\\nmissing.wav\\n")
        >>> [p.name for p in collect_audio_files([root / "list.txt"])]
        ['a.flac', 'missing.wav']
    """
    seen: dict[Path, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in AUDIO_EXTENSIONS and (p.is_file() or (p.is_symlink() and not p.is_dir()))
            )
            seen.update(dict.fromkeys(found))
        elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    entry = Path(line)
                    seen[entry if entry.is_absolute() else path.parent / entry] = None
        else:
            seen[path] = None
    return list(seen)


def _ffmpeg() -> str | None:
    return shutil.which("ffmpeg")


def _ffprobe_frames(path: Path) -> AudioInfo:
    """Duration through ffprobe (ffmpeg's companion), at 16 kHz after conversion."""
    probe = shutil.which("ffprobe")
    if probe is None:
        raise AudioError(f"{path}: soundfile cannot read it and ffprobe is not installed")
    result = subprocess.run(
        [probe, "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
    )
    try:
        seconds = float(result.stdout.strip())
    except ValueError as error:
        raise AudioError(f"{path}: ffprobe cannot read it ({result.stderr.strip()[-200:]})") from error
    return AudioInfo(int(round(seconds * SAMPLE_RATE)), SAMPLE_RATE, "ffmpeg")


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Frames and rate of an audio file, from its header (ffprobe when soundfile cannot open it).

    Raises:
        FileNotFoundError: no such file.
        AudioError: neither soundfile nor ffmpeg can read it.
    """
    path = Path(path)
    require_file(path)
    try:
        info = soundfile.info(str(path))
        return AudioInfo(int(info.frames), int(info.samplerate), "soundfile")
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        reason = getattr(error, "error_string", None) or str(error)
        if _ffmpeg() is None:
            raise AudioError(
                f"{path}: cannot decode audio (soundfile: {reason}); "
                "install ffmpeg to read formats soundfile does not (MP3 on old libsndfile, M4A/AAC)"
            ) from error
        try:
            return _ffprobe_frames(path)
        except AudioError as ffmpeg_error:
            raise AudioError(
                f"{path}: cannot decode audio (soundfile: {reason}; {str(ffmpeg_error).removeprefix(f'{path}: ')})"
            ) from ffmpeg_error


def _ffmpeg_decode(path: Path, start: float = 0.0, seconds: float | None = None) -> np.ndarray:
    """Mono 16 kHz float32 samples of ``path`` from ``start`` seconds (``seconds`` long) via ffmpeg."""
    command = [_ffmpeg() or "ffmpeg", "-v", "error", "-nostdin"]
    if start > 0:
        command += ["-ss", f"{start:.6f}"]
    command += ["-i", str(path)]
    if seconds is not None:
        command += ["-t", f"{seconds:.6f}"]
    command += ["-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        raise AudioError(f"{path}: ffmpeg cannot decode it ({result.stderr.decode(errors='replace').strip()[-300:]})")
    return np.frombuffer(result.stdout, dtype=np.float32).copy()


def read_audio(path: str | os.PathLike, *, min_samples: int = 1) -> torch.Tensor:
    """The whole file as mono 16 kHz float32 ``(T,)``: soundfile, else ffmpeg when installed.

    Raises:
        FileNotFoundError: no such file.
        AudioError: undecodable (by both), truncated WAV, empty, non-finite, or shorter than
            ``min_samples`` after resampling; the message names the file.
    """
    path = Path(path)
    if audio_info(path).reader == "soundfile":
        return load_audio(path, min_samples=min_samples)
    return prepare_waveform(_ffmpeg_decode(path), SAMPLE_RATE, source=str(path), min_samples=min_samples)


def read_segment(path: str | os.PathLike, info: AudioInfo, start: int, stop: int) -> torch.Tensor:
    """Samples ``start``..``stop`` of the file at 16 kHz, mono float32 ``(stop - start,)``: the
    same samples as reading the whole file and slicing it (no seams between windows), but only
    the segment and :data:`~s3prl_ser.data.audio.RESAMPLE_MARGIN_SECONDS` around it are read
    from disk (soundfile seeks; :func:`~s3prl_ser.data.audio.resample_context`).

    Raises:
        AudioError: the segment is empty, cannot be decoded, holds non-finite samples, or the
            file ends before ``stop`` (a header that claims more than the file holds).
    """
    path = Path(path)
    source = f"{path}@{start / SAMPLE_RATE:.2f}s"
    if stop <= start:
        raise AudioError(f"{source}: an empty segment ({start}..{stop} at {SAMPLE_RATE} Hz)")
    if info.reader == "ffmpeg":  # ffmpeg's output is already at 16 kHz: info.frames are samples
        data = _ffmpeg_decode(path, start / SAMPLE_RATE, (stop - start) / SAMPLE_RATE)
        return prepare_waveform(data, SAMPLE_RATE, source=source)
    first, last, offset = resample_context(start, stop, info.sample_rate, info.frames)
    try:
        data, rate = soundfile.read(str(path), start=first, stop=last, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
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
