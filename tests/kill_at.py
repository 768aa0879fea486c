"""Run a training command in this process and SIGKILL it at a chosen moment: a real kill of a
real process, placed exactly, for the exact-resume and kill-loop tests.

    python tests/kill_at.py update N         run_downstream ARGS...  # dies right after update N
    python tests/kill_at.py save N           upstream_ft ARGS...     # dies halfway through writing states-N
    python tests/kill_at.py write NAME:K     run_downstream ARGS...  # dies halfway through the K-th write of NAME
    python tests/kill_at.py stop N           run_downstream ARGS...  # stops (SIGSTOP) right after update N
    python tests/kill_at.py rows N           inference ARGS...       # dies right after the N-th batch of rows written

``update N``: the process dies after the N-th optimizer update, before anything of that
update is evaluated or saved. ``save N``: it dies with half of ``states-N.ckpt`` written to
the temporary file that the atomic save would have renamed (``write states-N.ckpt:1``).
``write NAME:K``: the same for the K-th write of any file the run writes with
an atomic write (:mod:`s3prl_ser.fileio`: a checkpoint, ``dev-top.json``, ``final.json``,
metrics, ...). ``stop N``: the process stops after update N,
holding its files and locks, until it is killed. ``rows N``: the inference command dies right
after the N-th :meth:`~s3prl_ser.inference.rows.RowWriter.write` (a batch of rows) returns.

:func:`fork_run` runs the same in a forked child of a process that has run the command before
(its imports warm): about a second instead of a fresh interpreter's ten on a busy machine.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import s3prl_ser  # noqa: F401  (s3prl compatibility before anything imports s3prl)
from s3prl_ser import fileio
from s3prl_ser.training import loop

PROJECT_PACKAGES = frozenset({"s3prl_ser", "s3prl", "downstream", "upstream_ft", "tests", "helpers", "kill_at"})


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def after_update(n: int, then: Callable[[], None]) -> None:
    """Call ``then`` right after the ``n``-th optimizer update."""
    update = loop.OptimizerStep.update
    done = [0]

    def update_then(self: loop.OptimizerStep) -> loop.UpdateResult:
        result = update(self)
        done[0] += 1
        if done[0] == n:
            then()
        return result

    loop.OptimizerStep.update = update_then


def after_rows(n: int, then: Callable[[], None]) -> None:
    """Call ``then`` right after the ``n``-th batch of inference rows is written."""
    from s3prl_ser.inference.rows import RowWriter

    write = RowWriter.write
    done = [0]

    def write_then(self: RowWriter, rows: list) -> None:
        write(self, rows)
        done[0] += 1
        if done[0] == n:
            then()

    RowWriter.write = write_then


def stop() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGSTOP)


def intercept_writes(halfway: Callable[[str, int], bool]) -> Callable[[], None]:
    """Ask ``halfway(name, k)`` before the ``k``-th write of each file ``name`` (every file a run
    writes goes through :func:`s3prl_ser.fileio.atomic_write`); where it answers True, write
    half of the content to the temporary file the write would rename, then die. Returns the undo.

    ``fileio.atomic_write`` is replaced where it is looked up: in :mod:`s3prl_ser.fileio`, whose
    text, JSON and checkpoint writers call it, and in any module that imported it by name.
    """
    atomic_write = fileio.atomic_write
    counts: Counter[str] = Counter()

    def ask(path: Path) -> bool:
        counts[path.name] += 1
        return halfway(path.name, counts[path.name])

    def write_or_die(path: str | os.PathLike, write: Callable[[io.BytesIO], object]) -> None:
        path = Path(path)
        if not ask(path):
            return atomic_write(path, write)
        buffer = io.BytesIO()
        write(buffer)
        fd, _ = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # as atomic_write
        os.write(fd, buffer.getvalue()[: len(buffer.getvalue()) // 2])
        os.fsync(fd)
        die()

    def replace(old: Callable[..., None], new: Callable[..., None]) -> None:
        # Only the project's modules import atomic_write; others may be lazy modules that
        # import (and fail) on attribute access, e.g. speechbrain's.
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] in PROJECT_PACKAGES and getattr(module, "atomic_write", None) is old:
                module.atomic_write = new

    replace(atomic_write, write_or_die)

    def undo() -> None:
        replace(write_or_die, atomic_write)  # also in the modules imported since

    return undo


def arm(moment: str, at: str) -> None:
    """Set up the kill (or stop) of ``moment`` at ``at`` (see the module docstring)."""
    if moment == "update":
        after_update(int(at), die)
    elif moment == "stop":
        after_update(int(at), stop)
    elif moment == "rows":
        after_rows(int(at), die)
    else:
        target = f"states-{at}.ckpt:1" if moment == "save" else at
        name, k = target.rsplit(":", 1)
        intercept_writes(lambda written, count: (written, count) == (name, int(k)))


def run_command(command: str, argv: list[str]) -> None:
    if command == "run_downstream":
        from s3prl_ser.cli.run_downstream import main as run
    elif command == "inference":
        from s3prl_ser.cli.inference import main as run
    elif command == "cross_corpus":  # the matrix: several trainings in this one process
        from s3prl_ser.cli.cross_corpus import main as run
    else:
        from s3prl_ser.cli.finetune import main as run
    run(argv)


def fork_run(moment: str, at: str, command: str, argv: list[str]) -> int:
    """Run ``command argv`` with ``moment at`` armed in a forked child; return its pid.

    The child never returns to the caller: it dies at the kill point, or exits with status 3
    (the run ended first, or failed: the traceback goes to stderr). The kill points lie outside
    tqdm, whose inter-process lock the child shares with this process.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    try:
        arm(moment, at)
        run_command(command, argv)
        print("kill_at: the run finished before the kill point", file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(3)


def wait(pid: int, *, stopped: bool = False, timeout: float = 300) -> int:
    """Wait for child ``pid`` to end (or, with ``stopped``, to stop); return its wait status.
    A child still running after ``timeout`` seconds is killed and AssertionError raised."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG | (os.WUNTRACED if stopped else 0))
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} still running after {timeout} s")


def main() -> None:
    moment, at, command, *argv = sys.argv[1:]
    arm(moment, at)
    run_command(command, argv)
    sys.exit("the run finished before the kill point")


if __name__ == "__main__":
    main()
