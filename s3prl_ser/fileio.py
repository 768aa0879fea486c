"""The project's file writes and checked reads: every write is atomic and durable.

Named ``fileio`` so that it neither shadows the standard library's ``io`` inside the package
nor collides with :mod:`s3prl_ser.inference.files` (prediction over audio files).

A write goes to a temporary file with a unique name (``.NAME.XXXXXXXX.tmp``, from
:func:`tempfile.mkstemp`) in the target's directory, is flushed and ``fsync``-ed, then renamed
over the target with :func:`os.replace`, and the directory is ``fsync``-ed so that the rename
itself survives a power cut. A writer killed midway leaves the previous file (or none), never a
truncated one; a writer that raises also removes its temporary file. Two writers to the same
target never share a temporary file: the last rename wins, whole.

* :func:`atomic_write` (a callback writing to a binary handle) underlies :func:`atomic_write_bytes`,
  :func:`atomic_write_text`, :func:`atomic_write_json` and :func:`atomic_torch_save`;
  :class:`AtomicFile` is the same for a file written piece by piece over time.
* :func:`replace` renames a file or directory durably (directory swaps of model directories and
  the built-in corpus); :func:`sync_directory` makes a directory written in place durable first.
* :func:`read_json` reads a JSON file and names the file in its error; :func:`safe_torch_load`
  loads a checkpoint weights-only.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from s3prl_ser.compat import UnsafeCheckpointError
from s3prl_ser.evaluated_strings import UnsafeConfigError

__all__ = [
    "AtomicFile",
    "sha256_file",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "read_json",
    "remove_temporaries",
    "replace",
    "safe_torch_load",
    "sync_directory",
]


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory: the rename stands regardless
        pass
    finally:
        os.close(fd)


def sync_directory(directory: str | os.PathLike) -> None:
    """``fsync`` every file directly in ``directory``, then the directory: a directory written in
    place (a model directory's staging copy) is on disk before :func:`replace` swaps it in."""
    directory = Path(directory)
    for path in directory.iterdir():
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_directory(directory)


def replace(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``os.replace(source, target)`` (a file or a directory), then fsync of the target's directory."""
    os.replace(source, target)
    _fsync_directory(Path(target).parent)


class AtomicFile:
    """A binary file written piece by piece, appearing at ``path`` whole on :meth:`commit`.

    Until then it is a temporary file with a unique name next to ``path``; :meth:`discard`
    (or a kill) leaves ``path`` as it was.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "data.bin"
        >>> out = AtomicFile(target)
        >>> _ = out.handle.write(b"ab"); _ = out.handle.write(b"c")
        >>> target.exists()
        False
        >>> out.commit(); target.read_bytes()
        b'abc'
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.tmp = Path(tmp)
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results and models from other users
        self.handle: IO[bytes] = os.fdopen(fd, "wb")

    def commit(self) -> None:
        """Flush, fsync and rename the temporary file over ``path``."""
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Close and delete the temporary file; ``path`` is left as it was."""
        try:
            self.handle.close()  # a full disk can fail the final flush here
        finally:
            self.tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(handle)`` on a temporary file next to ``path``, then make it ``path`` atomically.

    If ``write`` raises (or the process is killed), ``path`` keeps its previous content and the
    temporary file is removed (a kill leaves it behind: ``.NAME.*.tmp``).
    """
    out = AtomicFile(path)
    try:
        write(out.handle)
    except BaseException:
        out.discard()
        raise
    out.commit()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write_text(target, "one"); atomic_write_text(target, "two"); target.read_text()
        'two'
        >>> sorted(p.name for p in target.parent.iterdir())  # no temporary file left
        ['a.txt']
    """
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
    """Write ``json.dumps(obj, **dump_kwargs)`` to ``path`` atomically (UTF-8)."""
    atomic_write_text(path, json.dumps(obj, **dump_kwargs))


def atomic_torch_save(obj: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """``torch.save`` to ``path`` atomically; a file-like ``path`` is written directly."""
    if not isinstance(path, (str, os.PathLike)):  # file-like objects: nothing to make atomic
        torch.save(obj, path, **kwargs)
        return
    atomic_write(path, lambda handle: torch.save(obj, handle, **kwargs))


def remove_temporaries(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporary files that killed atomic writes left in ``directory`` (``.NAME.*.tmp``;
    of ``name`` only, if given); return them. Call it only while no other process writes there
    (under the directory's lock): a live writer's temporary file looks the same.
    """
    pattern = f".{glob.escape(name)}.*.tmp" if name is not None else ".*.*.tmp"
    found = sorted(Path(directory).glob(pattern))
    for path in found:
        path.unlink(missing_ok=True)
    return found


def read_json(path: str | os.PathLike) -> Any:
    """The JSON content of ``path``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not readable as UTF-8 JSON; the message names the file.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from error


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", **kwargs: Any) -> Any:
    """Weights-only ``torch.load`` that also accepts the ``argparse.Namespace`` s3prl stores."""
    kwargs.pop("weights_only", None)  # never let a caller turn code execution back on
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True, **kwargs)
    except (FileNotFoundError, UnsafeCheckpointError, UnsafeConfigError):
        raise
    except Exception as error:  # unpickling errors come in many types; name the file
        raise RuntimeError(f"cannot load checkpoint {path}: {error}") from error


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (memory stays flat for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
