"""One run at a time in a directory: an exclusive lock on ``<directory>/.lock``.

Two commands writing into the same experiment directory mix their files (two
cross-validations each write their own results, two trainings interleave ``log.log``), so a
second one is refused while the first holds the directory. The lock is an ``flock`` on
``<directory>/.lock``, which the operating system releases when its process ends however it
ends: a SIGKILLed run leaves no stale lock (its file stays, unlocked, and the next run takes
it over). The file names its holder (pid, host, start, command) for the refusal, and is
removed when the holder lets go. POSIX only (Linux, macOS): ``fcntl.flock``; on NFS, Linux
emulates it with byte-range locks that the server sees.

Within one process the lock is re-entrant: a command that holds a directory runs nested
commands in it (cross-validation's folds) without refusing itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["DirectoryInUseError", "DirectoryLock", "check_free", "leader_lock"]

LOCK_FILE = ".lock"


class DirectoryInUseError(ValueError):
    """Another process holds the directory (a ValueError: the command lines report it as
    ``error: ...``).

    Attributes:
        directory: the directory asked for.
        holder: what the holder recorded (``pid``, ``host``, ``started``, ``command``), or
            empty if it had not written it yet.
    """

    def __init__(self, directory: Path, holder: dict[str, Any]) -> None:
        self.directory, self.holder = directory, holder
        if holder:
            who = (
                f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
                f"{holder.get('command')}"
            )
        else:
            who = "a process that has not recorded itself yet"
        super().__init__(
            f"{directory} is in use by another run ({who}); two runs in one directory would mix their "
            "files: wait for that run to end (or stop it), or choose another directory"
        )

    def __reduce__(self) -> tuple:
        # Rebuilt from its attributes, so it crosses from a worker process to its parent.
        return type(self), (self.directory, self.holder)


@dataclass
class _Held:
    fd: int
    depth: int


# The locks this process holds, by (pid, real path): a forked child inherits the table but
# not the parent's claim to the directories in it.
_HELD: dict[tuple[int, str], _Held] = {}


class DirectoryLock:
    """An exclusive, non-blocking lock of ``directory`` (which must exist) for a ``with`` block.

    Entering refuses at once with :class:`DirectoryInUseError` if another process holds it;
    the same process may enter it again (nested), and the directory is free once the
    outermost block exits or the process ends.

    Args:
        directory: the directory to hold.

    Example:
        >>> import tempfile
        >>> directory = tempfile.mkdtemp()
        >>> with DirectoryLock(directory) as lock:
        ...     with DirectoryLock(directory):  # the same process: re-entrant
        ...         print(json.loads(lock.path.read_text())["pid"] == os.getpid())
        True
        >>> lock.path.exists()  # free again
        False
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._key = (os.getpid(), os.path.realpath(self.directory))

    def __enter__(self) -> DirectoryLock:
        held = _HELD.get(self._key)
        if held is not None:
            held.depth += 1
            return self
        while True:
            # No O_TRUNC: opening must not erase the holder's record before the lock is tried.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise DirectoryInUseError(self.directory, holder) from None
            except BaseException:
                os.close(fd)
                raise
            if _is_file_at(fd, self.path):
                break
            # The holder removed the file between our open and flock: lock the current one.
            os.close(fd)
        os.ftruncate(fd, 0)  # a killed holder's record
        os.write(fd, json.dumps(_this_process()).encode())
        _HELD[self._key] = _Held(fd, 1)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        held = _HELD[self._key]
        held.depth -= 1
        if held.depth:
            return
        del _HELD[self._key]
        # Removed while still locked, so no other process holds it meanwhile; one that opened
        # it before sees it gone once it gets the lock, and retries (see __enter__).
        self.path.unlink(missing_ok=True)
        os.close(held.fd)  # releases the flock


def _this_process() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
    }


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder's record, or {} if it has not written it (yet) or it is unreadable."""
    text = os.pread(fd, 1 << 16, 0).decode(errors="replace")
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def check_free(directory: str | os.PathLike) -> None:
    """Refuse if a process holds ``directory`` (for a reader, such as a report, that must not
    read a run still writing); takes no lock and writes nothing.

    A shared ``flock`` is tried on ``<directory>/.lock`` and let go at once: it is refused
    exactly while a holder's exclusive lock is in place (in any process, this one included).

    Raises:
        DirectoryInUseError: the directory is held, naming its holder.
    """
    try:
        fd = os.open(Path(directory) / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return  # never locked, or its holder let go
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DirectoryInUseError(Path(directory), _read_holder(fd)) from None
    finally:
        os.close(fd)  # closing releases the shared lock if it was taken


def leader_lock(directory: str | os.PathLike) -> contextlib.AbstractContextManager[object]:
    """:class:`DirectoryLock` of ``directory`` in the leader process of a launch, a no-op in
    the others.

    The leader is global rank 0 (torchrun's ``RANK``; the only process without torchrun). The
    other processes of a launch share the leader's directory, so they must not lock it; if the
    leader is refused it exits, and torchrun stops the other processes.
    """
    if os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    return DirectoryLock(directory)
