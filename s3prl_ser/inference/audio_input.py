"""What an inference run reads: files, folders (recursive, by extension) and list files; and,
in Python, any input that ``transformers.pipeline("audio-classification")`` takes.

Reading them is :mod:`s3prl_ser.data.audio`'s (:func:`~s3prl_ser.data.audio.load_audio`,
:func:`~s3prl_ser.data.audio.decode_audio`, :func:`~s3prl_ser.data.audio.read_segment`): the
reader preparation and training use too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from torch import Tensor

from s3prl_ser.data.audio import (
    AUDIO_EXTENSIONS,
    AudioError,
    decode_audio,
    load_audio,
    prepare_waveform,
    refuse_url,
)

__all__ = ["LIST_EXTENSIONS", "AudioInput", "collect_audio_files", "load_input"]

# One audio input of EmotionRecognizer.predict / embed: a path, an encoded file's bytes, a binary
# file object, a waveform array (with a sample rate), or {"array" | "raw": waveform, "sampling_rate": Hz}.
AudioInput = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | np.ndarray | Tensor | Mapping[str, Any]


def load_input(audio: AudioInput, sample_rate: int | None = None, *, min_samples: int = 1) -> Tensor:
    """One audio input -> mono 16 kHz float32 ``(T,)``, at least ``min_samples`` long.

    Args:
        audio: a path (any format :func:`~s3prl_ser.data.audio.load_audio` reads; not a URL),
            an encoded file as ``bytes`` or a binary file object (read to its end), a waveform
            ``(T,)`` / ``(T, C)`` / ``(C, T)`` array or tensor, or a dict with ``"array"`` or
            ``"raw"`` (a waveform) and ``"sampling_rate"`` (what Hugging Face ``datasets`` and
            ``pipeline`` use).
        sample_rate: the rate of a waveform array, in Hz; files, bytes and dicts carry their own.

    Raises:
        AudioError: the input cannot be decoded or used (see :func:`~s3prl_ser.data.audio.prepare_waveform`),
            is a URL, or is an array without ``sample_rate``, a dict without its keys, a dict
            whose ``sampling_rate`` contradicts ``sample_rate``, or of another type.
        FileNotFoundError: a path that does not exist.

    Example:
        >>> load_input({"array": np.zeros(8000, dtype="float32"), "sampling_rate": 8000}).shape
        torch.Size([16000])
    """
    if isinstance(audio, (str, os.PathLike)):
        return load_audio(audio, min_samples=min_samples)
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return decode_audio(audio, min_samples=min_samples)
    if hasattr(audio, "read"):
        return decode_audio(audio, source=str(getattr(audio, "name", "<file object>")), min_samples=min_samples)
    if isinstance(audio, Mapping):
        waveform = next((audio[key] for key in ("raw", "array") if audio.get(key) is not None), None)
        if waveform is None or audio.get("sampling_rate") is None:
            raise AudioError(
                f"<dict>: an audio dict needs 'array' (or 'raw') and 'sampling_rate', got keys {sorted(audio)}"
            )
        rate = int(audio["sampling_rate"])
        if sample_rate is not None and sample_rate != rate:
            raise AudioError(f"<dict>: its sampling_rate {rate} contradicts sample_rate={sample_rate}")
        return prepare_waveform(waveform, rate, source="<dict>", min_samples=min_samples)
    if isinstance(audio, (np.ndarray, Tensor)):
        if sample_rate is None:
            raise AudioError(
                "<array>: a waveform array needs its rate: pass sample_rate=..., "
                "or {'array': ..., 'sampling_rate': ...}"
            )
        return prepare_waveform(audio, sample_rate, min_samples=min_samples)
    raise AudioError(
        f"unsupported audio input of type {type(audio).__name__}: pass a path, bytes, a binary file object, "
        "an array with sample_rate, or {'array': ..., 'sampling_rate': ...}"
    )


LIST_EXTENSIONS = (".txt", ".lst", ".list", ".scp")


def collect_audio_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files, folders (recursive, by audio extension) and list files (one path a line,
    ``#`` comments; relative paths are relative to the list) into audio paths, in order,
    without duplicates. A path that does not exist is kept: reading it gives its error row; so
    is a dangling or looping symbolic link with an audio extension found in a folder (links to
    folders are not followed). A URL raises :class:`~s3prl_ser.data.audio.AudioError` (audio
    is read from local files only).

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
        refuse_url(item)
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
                    refuse_url(line)
                    entry = Path(line)
                    seen[entry if entry.is_absolute() else path.parent / entry] = None
        else:
            seen[path] = None
    return list(seen)
