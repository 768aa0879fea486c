"""The deployment model: the cross-validated procedure trained once more, on all the data.

A cross-validation (``python -m s3prl_ser.cli.cross_validate -p CV_DIR ...``) scores a training
procedure on held-out folds; none of its fold models has seen the whole corpus. The deployment
run is the same procedure (same ``run_downstream.py`` arguments and overrides, same runner,
same training loop, same locks) with ``datarc.test_fold: deploy``:

* **data**: every utterance of the corpus (the union of all folds; for a corpus with an official
  test set, its train and dev lists only, never the test set), see
  :mod:`s3prl_ser.data.full_data_pool`;
* **checkpoint selection**: still on dev, a dev set carved out of that pool by the run's own
  rule (``datarc.split``: ``superb`` 80/20, or ``speaker`` held-out speakers/session), and the
  k best dev checkpoints averaged as in the folds;
* **schedule** (the "fold-averaged schedule"): ``config.runner.total_steps`` is the mean over
  the finished folds of the steps each fold trained for, rounded to a whole step; the rest of
  the runner section is the folds' own. Why total steps, not the mean step at which the folds'
  kept checkpoints were chosen: selection on dev still happens inside the deployment run, and
  the learning-rate schedule is a function of ``total_steps``, so keeping it makes the
  deployment run the very procedure whose scores the folds report (a shorter schedule would
  decay the learning rate earlier than any scored run did). The folds' selected steps are
  recorded beside it (``deployment.json``, the model card) for reference. Steps, not epochs:
  the pool is larger than a fold's training list, so the same steps are fewer epochs;
* **no test set**: nothing is scored. ``final.json`` has ``test_metrics: null``; the exported
  model card and ``config.json`` state that there is no held-out score (the cross-validation's
  scores estimate the procedure, not this model).

The run lives in ``CV_DIR/deploy`` (:data:`DEPLOY_DIR`); :func:`train_deployment` trains it (the
same run as a fold, :class:`~s3prl_ser.experiments.cross_validation.FoldRun`, with the run locks), and it resumes when killed and is reused when finished with the same settings, like a fold. Its checkpoints record the fold ``deploy``,
and the fold guard (:func:`s3prl_ser.data.protocol.check_protocol_record`) refuses them, and the
model directory exported from them, for any cross-validation fold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from s3prl_ser.config import ConfigError
from s3prl_ser.data.folds import DEPLOY_FOLD, check_fold
from s3prl_ser.experiments.cross_validation import FoldRun, check_unfinished
from s3prl_ser.experiments.launch import RunRequest, launch, requested_run
from s3prl_ser.fileio import safe_torch_load
from s3prl_ser.training.run_dir import RunDir
from s3prl_ser.training.run_identity import describe, run_identity
from s3prl_ser.training.run_lock import leader_lock

__all__ = [
    "DEPLOY_DIR",
    "SCHEDULE_RULE",
    "deployment_schedule",
    "deployment_finished",
    "train_deployment",
]

logger = logging.getLogger(__name__)

DEPLOY_DIR = DEPLOY_FOLD  # CV_DIR/deploy
SCHEDULE_RULE = (
    "config.runner.total_steps = the mean over the cross-validation folds of their total_steps; "
    "checkpoints selected on a dev set carved from the training pool by datarc.split, k best averaged"
)


def deployment_schedule(cv_dir: str | Path, folds: Sequence[str]) -> dict[str, Any]:
    """The fold-averaged schedule of the finished folds ``folds`` of ``cv_dir`` (module docstring).

    Returns:
        ``{"rule", "total_steps", "folds": {fold: {"total_steps", "selected_steps"}},
        "mean_selected_step"}``.

    Raises:
        ConfigError: no fold given, or a fold that has not finished (the command to finish it named).
    """
    if not folds:
        raise ConfigError("a deployment run needs the finished cross-validation folds to take its schedule from")
    per_fold: dict[str, dict[str, Any]] = {}
    for fold in folds:
        run = RunDir(Path(cv_dir) / check_fold(fold))
        final = run.final()
        if final is None:
            raise ConfigError(
                f"{run.path}: fold not finished; the deployment schedule is taken from the finished folds: "
                "run the cross-validation first (the same command without --deploy)"
            )
        runner = safe_torch_load(run.reported_checkpoint(), mmap=True)["Config"]["runner"]
        per_fold[fold] = {
            "total_steps": int(runner["total_steps"]),
            "selected_steps": sorted(int(entry["step"]) for entry in final.get("selected", [])),
        }
    selected = [step for info in per_fold.values() for step in info["selected_steps"]]
    return {
        "rule": SCHEDULE_RULE,
        "total_steps": round(sum(info["total_steps"] for info in per_fold.values()) / len(per_fold)),
        "folds": per_fold,
        "mean_selected_step": sum(selected) / len(selected) if selected else None,
    }


def deployment_finished(run_dir: Path, requested: dict[str, Any]) -> bool:
    """Whether the deployment run in ``run_dir`` finished with the ``requested`` identity.

    Raises:
        ConfigError: it finished with other settings.
    """
    changed = RunDir(run_dir).finished_differences(requested)
    if changed is None:
        return False
    if changed:
        raise ConfigError(
            f"{run_dir} holds a deployment run finished with other settings ({describe(changed)}): "
            "move it away to train the deployment model again"
        )
    return True


def train_deployment(cv_dir: str | Path, request: RunRequest, folds: Sequence[str]) -> Path:
    """Train (or resume, or reuse) the deployment run ``cv_dir/deploy``; its directory.

    Args:
        cv_dir: the cross-validation's root, whose finished ``folds`` give the schedule.
        request: the cross-validation's run (upstream, task, config, overrides), without a variant.
        folds: the folds the schedule is averaged over (all the cross-validation's).

    The run's ``deployment.json`` records the schedule and the folds it came from.

    Raises:
        ConfigError: unfinished folds, a ``-v``, a finished or stopped deployment run with other settings.
        DirectoryInUseError: another process holds ``cv_dir`` or ``cv_dir/deploy``.
    """
    from s3prl_ser.upstreams.registry import register

    register()
    if request.downstream_variant is not None:
        raise ConfigError("the deployment run sets its fold (deploy) itself; drop -v")
    cv_dir = Path(cv_dir)
    with ExitStack() as locks:
        cv_dir.mkdir(parents=True, exist_ok=True)
        locks.enter_context(leader_lock(cv_dir))
        for fold in folds:  # the schedule must come from folds trained with these very settings
            if FoldRun(cv_dir, request, fold).finished() is None:
                raise ConfigError(
                    f"{cv_dir / fold}: fold not finished; run the cross-validation first (the same command "
                    "without --deploy), the deployment schedule is taken from its folds"
                )
        schedule = deployment_schedule(cv_dir, folds)
        steps = ("config.runner.total_steps", schedule["total_steps"])
        run = FoldRun(cv_dir, request.with_overrides(steps), DEPLOY_FOLD)
        run.fold_dir.mkdir(parents=True, exist_ok=True)
        locks.enter_context(leader_lock(run.fold_dir))
        requested = run_identity(*requested_run(run.request_of_fold()))
        if deployment_finished(run.fold_dir, requested):
            logger.info(f"[deployment] - finished earlier, reusing {run.fold_dir}")
        else:
            check_unfinished(run.fold_dir, requested)
            logger.info(f"[deployment] - training on every fold's utterances in {run.fold_dir} ({steps[0]}={steps[1]})")
            launch(run.request_of_fold())
            if not deployment_finished(run.fold_dir, requested):
                raise RuntimeError(f"{run.fold_dir}: training ended without a reported model")
        RunDir(run.fold_dir).write_deployment_record({**schedule, "cv_dir": str(cv_dir.resolve())})
    return run.fold_dir
