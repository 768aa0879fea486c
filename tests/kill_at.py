"""Run a training command in this process and SIGKILL it at a chosen moment: a real kill of a
real process, placed exactly, for the exact-resume tests.

    python tests/kill_at.py update N   run_downstream ARGS...   # dies right after update N
    python tests/kill_at.py save N     upstream_ft ARGS...      # dies halfway through writing states-N

``update N``: the process dies after the N-th optimizer update, before anything of that
update is evaluated or saved. ``save N``: it dies with half of ``states-N.ckpt`` written to
the temporary file that the atomic save would have renamed.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import tempfile
from pathlib import Path

import torch

import s3prl_ser  # noqa: F401  (s3prl compatibility before anything imports s3prl)
from s3prl_ser.training import loop, states


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_update(n: int) -> None:
    update = loop.OptimizerStep.update
    done = [0]

    def update_then_die(self: loop.OptimizerStep) -> loop.UpdateResult:
        result = update(self)
        done[0] += 1
        if done[0] == n:
            die()
        return result

    loop.OptimizerStep.update = update_then_die


def kill_while_saving(n: int) -> None:
    save = states.atomic_torch_save

    def save_half_then_die(obj: object, path: str | os.PathLike, **kwargs: object) -> None:
        path = Path(path)
        if path.name != f"states-{n}.ckpt":
            return save(obj, path, **kwargs)
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        fd, _ = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # as atomic_torch_save
        os.write(fd, buffer.getvalue()[: len(buffer.getvalue()) // 2])
        os.fsync(fd)
        die()

    states.atomic_torch_save = save_half_then_die


def main() -> None:
    moment, n, command, *argv = sys.argv[1:]
    {"update": kill_after_update, "save": kill_while_saving}[moment](int(n))
    if command == "run_downstream":
        from s3prl_ser.cli.run_downstream import main as run
    else:
        from s3prl_ser.cli.finetune import main as run
    run(argv)
    sys.exit("the run finished before the kill point")


if __name__ == "__main__":
    main()
