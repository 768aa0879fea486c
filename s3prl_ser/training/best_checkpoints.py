"""Keep the k best checkpoints of a run by a validation score (paper 2.3: the 5 best by dev accuracy).

The record lives in ``<directory>/<prefix>.json`` beside the files ``<prefix>-step<N>.ckpt``;
the caller (s3prl's runner) writes the checkpoint files. Only dev scores ever enter here:
the test set plays no part in which checkpoints are kept.

A resumed run re-evaluates the steps after its last saved state; a re-evaluated step replaces
its own entry, so the record stays consistent with the checkpoint files on disk.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from s3prl_ser.fileio import atomic_write_json, read_json

__all__ = ["Entry", "BestCheckpoints"]


@dataclass(frozen=True)
class Entry:
    step: int
    score: float
    name: str


class BestCheckpoints:
    """The ``k`` highest-scoring checkpoints; ties keep the earlier step.

    Args:
        directory: experiment directory holding the checkpoints and the record.
        k: how many to keep (>= 1).
        prefix: file-name prefix of the kept checkpoints and the record.
    """

    def __init__(self, directory: str | os.PathLike, k: int, prefix: str = "dev-top") -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.directory = Path(directory)
        self.k = k
        self.prefix = prefix
        self.record = self.directory / f"{prefix}.json"

    def _read(self) -> list[Entry]:
        if not self.record.is_file():
            return []
        return [Entry(**e) for e in read_json(self.record)]

    def _write(self, entries: list[Entry]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.record, [asdict(e) for e in entries], indent=1)

    def offer(self, step: int, score: float) -> list[str]:
        """Record ``score`` at ``step``; return ``[file name]`` to save if it is among the k best.

        The displaced checkpoint file, if any, is deleted.
        """
        entries = [e for e in self._read() if e.step != step]
        candidate = Entry(step, float(score), f"{self.prefix}-step{step}.ckpt")
        ranked = sorted(entries + [candidate], key=lambda e: (-e.score, e.step))
        kept, dropped = ranked[: self.k], ranked[self.k :]
        self._write(kept)
        for entry in dropped:
            (self.directory / entry.name).unlink(missing_ok=True)
        return [candidate.name] if candidate in kept else []

    def entries(self) -> list[Entry]:
        """Kept entries, best first, whose checkpoint files exist."""
        return [e for e in self._read() if (self.directory / e.name).is_file()]

    def paths(self) -> list[Path]:
        return [self.directory / e.name for e in self.entries()]
