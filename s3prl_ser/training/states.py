"""States files: everything a killed run needs to continue exactly where it was.

A run keeps ``states-<step>.ckpt`` files in its directory. :class:`StatesFiles` writes a new
one atomically *before* pruning older ones, so a kill at any moment leaves at least one
complete states file once the first save has finished; leftover ``.tmp`` files of an
interrupted save are removed when the run starts again.

Both stages store the same core (:func:`training_state`): the update count, the micro-batches
consumed (which fixes the epoch and the batch inside it, see :mod:`s3prl_ser.data.sampler`),
the optimizer, scheduler and AMP scaler, and every RNG (torch, CUDA, Python, NumPy), so the
resumed run draws the same dropout masks and SpecAugment masks as the uninterrupted one.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s3prl_ser.fileio import atomic_torch_save, remove_temporaries

__all__ = [
    "Progress",
    "StatesFiles",
    "seed_everything",
    "capture_rng",
    "restore_rng",
    "training_state",
    "restore_progress",
]

_STATES = re.compile(r"^states-(\d+)\.ckpt$")


@dataclass
class Progress:
    """How far a run is: optimizer updates done, global micro-batches consumed, and every
    process's RNG states (rank order) as the loop gathered them for the latest checkpoint."""

    step: int = 0
    micro: int = 0
    rng: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed every generator :func:`capture_rng` captures (torch, CUDA, Python, NumPy)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def capture_rng() -> dict[str, Any]:
    """The state of every random number generator training draws from."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # As plain values: a weights-only load refuses NumPy arrays.
        "numpy": _plain_numpy_state(np.random.get_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Undo :func:`capture_rng`: set every generator back to ``state``."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_python_state(state["python"]))
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain_numpy_state(state: tuple) -> tuple:
    name, keys, position, has_gauss, gauss = state
    return name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)


def _as_python_state(state: Any) -> tuple:
    """``random.getstate()`` after a save/load round trip (tuples may come back as lists)."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


def training_state(progress: Progress, optimizer_step: Any) -> dict[str, Any]:
    """The core of a states file: position, optimizer/scheduler/scaler and RNG states (one
    per process, this process's alone when the loop gathered none).

    ``optimizer_step`` is the run's :class:`~s3prl_ser.training.loop.OptimizerStep`.
    """
    rng = progress.rng or [capture_rng()]
    return {"Step": progress.step, "Micro": progress.micro, "RNG": rng, **optimizer_step.state_dict()}


def restore_progress(states: Mapping[str, Any], optimizer_step: Any, accumulate: int, rank: int = 0) -> Progress:
    """Load a states file's core into ``optimizer_step`` and process ``rank``'s RNGs; return
    the position.

    A states file of an earlier version (no ``Micro``, no ``RNG``) resumes at the start of the
    update after its ``Step``, with the RNG as it is.

    Raises:
        ValueError: ``states`` is no training state (an averaged model has no optimizer
            state), or holds the RNG states of fewer processes than ``rank + 1``.
    """
    if "Optimizer" not in states:
        raise ValueError("not a training state (no optimizer state): an averaged or exported model cannot be resumed")
    optimizer_step.load_state_dict(states)
    rng = states.get("RNG")
    if rng:
        if rank >= len(rng):
            raise ValueError(f"the states file holds the RNG states of {len(rng)} process(es), not of rank {rank}")
        restore_rng(rng[rank])
    step = int(states["Step"])
    return Progress(step=step, micro=int(states.get("Micro", step * accumulate)))


class StatesFiles:
    """The ``states-<step>.ckpt`` files of one run directory, the newest ``keep`` of them kept.

    Args:
        directory: the run directory.
        keep: how many states files to keep (>= 1).

    Example:
        >>> import tempfile
        >>> files = StatesFiles(tempfile.mkdtemp(), keep=1)
        >>> for step in (2, 4):
        ...     _ = files.save(step, {"Step": step})
        >>> files.latest().name
        'states-4.ckpt'
        >>> len(list(files.directory.glob("states-*.ckpt")))
        1
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 1) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory, self.keep = Path(directory), keep

    def _all(self) -> list[tuple[int, Path]]:
        found = [(int(m.group(1)), p) for p in self.directory.glob("states-*.ckpt") if (m := _STATES.match(p.name))]
        return sorted(found)

    def latest(self) -> Path | None:
        """The states file with the highest step, or None."""
        found = self._all()
        return found[-1][1] if found else None

    def remove_leftovers(self) -> None:
        """Delete the temporary files of writes a kill interrupted (states, k-best checkpoints and
        record, ``final.json``, ...; never a complete file)."""
        remove_temporaries(self.directory)

    def save(self, step: int, states: Mapping[str, Any]) -> Path:
        """Write ``states-<step>.ckpt`` atomically, then prune to the newest ``keep`` files."""
        path = self.directory / f"states-{step}.ckpt"
        atomic_torch_save(dict(states), path)
        for _, older in self._all()[: -self.keep]:
            older.unlink(missing_ok=True)
        return path
