"""One owner of a run's experiment directory: its file names, and reading and writing them.

A downstream run (one fold, or the deployment run) leaves in its directory:

* ``states-<step>.ckpt``: what a killed run resumes from (:class:`~s3prl_ser.training.states.StatesFiles`);
* ``final.json`` (:data:`FINAL_RECORD`): written last, atomically, so its presence marks the run
  finished. It names the reported checkpoint (``dev-avg.ckpt`` or ``dev-best.ckpt``), the dev
  checkpoints it was built from, the test metrics file (``null`` for a deployment run) and the
  run's identity (:func:`~s3prl_ser.training.run_identity.run_identity`);
* ``test_<fold>_metrics.json``: the reported model's test scores;
* ``deployment.json`` (:data:`DEPLOYMENT_RECORD`, deployment runs only): the schedule and the folds
  it came from.

:class:`RunDir` reads and writes these, and answers "finished, and with these settings?", in
the manner of SpeechBrain's ``Checkpointer``: one object per directory, so that no other module
parses ``final.json`` itself. The run lock stays in :mod:`s3prl_ser.training.run_lock`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3prl_ser.data.folds import DEPLOY_FOLD
from s3prl_ser.fileio import atomic_write_json, read_json, safe_torch_load
from s3prl_ser.training.run_identity import run_identity, significant_differences
from s3prl_ser.training.states import StatesFiles

__all__ = ["FINAL_RECORD", "DEPLOYMENT_RECORD", "NO_IDENTITY", "RunDir"]

FINAL_RECORD = "final.json"
DEPLOYMENT_RECORD = "deployment.json"
NO_IDENTITY = "no identity recorded"  # the difference reported for a run finished before identities


@dataclass(frozen=True)
class RunDir:
    """The experiment directory ``path`` of one run.

    Example:
        >>> import tempfile
        >>> run = RunDir(Path(tempfile.mkdtemp()))
        >>> run.final() is None, run.is_finished()
        (True, False)
        >>> run.write_final({"checkpoint": "dev-avg.ckpt", "test_metrics": None, "identity": None})
        >>> run.reported_checkpoint().name, run.is_deployment()
        ('dev-avg.ckpt', False)
    """

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def final_file(self) -> Path:
        """``final.json``: present once the run has finished."""
        return self.path / FINAL_RECORD

    @property
    def deployment_file(self) -> Path:
        """``deployment.json`` of a deployment run."""
        return self.path / DEPLOYMENT_RECORD

    def test_metrics_file(self, fold: str) -> Path:
        """``test_<fold>_metrics.json``: the reported model's test scores."""
        return self.path / f"test_{fold}_metrics.json"

    def is_finished(self) -> bool:
        """Whether ``final.json`` exists (it is written last, atomically)."""
        return self.final_file.is_file()

    def final(self) -> dict[str, Any] | None:
        """The ``final.json`` record, or None while the run is unfinished.

        Raises:
            ValueError: the file is not readable JSON (named).
        """
        return read_json(self.final_file) if self.is_finished() else None

    def write_final(self, record: Mapping[str, Any]) -> None:
        """Write ``final.json`` atomically: a kill mid-write leaves none, so the resumed run
        finalizes again."""
        atomic_write_json(self.final_file, dict(record), indent=1)

    def reported_checkpoint(self) -> Path:
        """The reported model's checkpoint named by ``final.json``.

        Raises:
            FileNotFoundError: the run has not finished.
        """
        final = self.final()
        if final is None:
            raise FileNotFoundError(f"{self.path}: no {FINAL_RECORD}; is training of this fold finished?")
        return self.path / final["checkpoint"]

    def test_metrics(self) -> dict[str, Any] | None:
        """The test metrics ``final.json`` names, or None (unfinished, untested, or the file gone)."""
        final = self.final()
        name = final.get("test_metrics") if final else None
        return read_json(self.path / name) if name and (self.path / name).is_file() else None

    def identity(self) -> dict[str, Any] | None:
        """The identity the finished run recorded (None: unfinished, or finished before runs recorded one)."""
        final = self.final()
        return final.get("identity") if final else None

    def is_deployment(self) -> bool:
        """Whether this is a finished deployment run (its identity records the fold ``deploy``)."""
        identity = self.identity() or {}
        datarc = ((identity.get("config") or {}).get("downstream_expert") or {}).get("datarc") or {}
        # as the expert resolves it: datarc.test_fold, else -v (run_downstream.py -v deploy)
        return (datarc.get("test_fold") or (identity.get("args") or {}).get("downstream_variant")) == DEPLOY_FOLD

    def deployment_record(self) -> dict[str, Any] | None:
        """``deployment.json`` (the schedule of a deployment run), or None if absent."""
        return read_json(self.deployment_file) if self.deployment_file.is_file() else None

    def write_deployment_record(self, record: Mapping[str, Any]) -> None:
        """Write ``deployment.json`` atomically."""
        atomic_write_json(self.deployment_file, dict(record), indent=1)

    def finished_differences(self, requested: Mapping[str, Any]) -> list[str] | None:
        """None if the run has not finished; else the settings in which it differs from the
        ``requested`` identity (``[]``: finished with these settings; :data:`NO_IDENTITY`: it
        recorded none)."""
        if not self.is_finished():
            return None
        recorded = self.identity()
        return [NO_IDENTITY] if recorded is None else significant_differences(recorded, requested)

    def latest_states(self) -> Path | None:
        """The newest states file a killed run would resume from, or None."""
        return StatesFiles(self.path).latest() if self.path.is_dir() else None

    def unfinished_differences(self, requested: Mapping[str, Any]) -> list[str]:
        """The settings in which the latest states file (a killed run) differs from the
        ``requested`` identity, as a resume judges them; ``[]`` when there is none."""
        states = self.latest_states()
        if states is None:
            return []
        ckpt = safe_torch_load(states)
        return significant_differences(run_identity(ckpt["Args"], ckpt["Config"]), requested, resuming=True)
