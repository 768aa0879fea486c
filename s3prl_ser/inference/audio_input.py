"""Which audio files an inference run reads: files, folders (recursive, by extension) and list files.

Reading them is :mod:`s3prl_ser.data.audio`'s (:func:`~s3prl_ser.data.audio.load_audio`,
:func:`~s3prl_ser.data.audio.read_segment`): the reader preparation and training use too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from s3prl_ser.data.audio import AUDIO_EXTENSIONS

__all__ = ["LIST_EXTENSIONS", "collect_audio_files"]

LIST_EXTENSIONS = (".txt", ".lst", ".list", ".scp")


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
