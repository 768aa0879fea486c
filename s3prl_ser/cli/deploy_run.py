"""Train the deployment model of a cross-validation: ``cross_validate ... --deploy`` (its command line).

What the deployment run is, and why its schedule is what it is: :mod:`s3prl_ser.experiments.deployment`.
This is the driver: the same ``run_downstream.py`` run as a fold (:class:`~s3prl_ser.cli.cross_validate.FoldRun`,
``-a`` to resume, the run locks), with ``datarc.test_fold: deploy`` and the folds' schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from s3prl_ser.config import ConfigError
from s3prl_ser.data.folds import DEPLOY_FOLD
from s3prl_ser.data.manifest import write_json_atomic
from s3prl_ser.experiments.deployment import DEPLOYMENT_RECORD, deployment_finished, deployment_schedule
from s3prl_ser.training.run_lock import leader_lock

__all__ = ["train_deployment"]


def train_deployment(cv_dir: str | Path, run_args: Sequence[str], folds: Sequence[str], overrides: str = "") -> Path:
    """Train (or resume, or reuse) the deployment run ``cv_dir/deploy``; its directory.

    Args:
        cv_dir: the cross-validation's root, whose finished ``folds`` give the schedule.
        run_args: the cross-validation's ``run_downstream.py`` arguments (``-u``, ``-k``, ...),
            without ``-m``, ``-p``, ``-n``, ``-o`` and ``-v``.
        folds: the folds the schedule is averaged over (all the cross-validation's).
        overrides: the cross-validation's ``-o`` overrides.

    The run's ``deployment.json`` records the schedule and the folds it came from.

    Raises:
        ConfigError: unfinished folds, a ``-v``, a finished or stopped deployment run with other settings.
        DirectoryInUseError: another process holds ``cv_dir`` or ``cv_dir/deploy``.
    """
    from s3prl_ser.cli.cross_validate import FoldRun, _check_unfinished  # cross_validate imports this module
    from s3prl_ser.cli.run_downstream import get_downstream_args, requested_run
    from s3prl_ser.cli.run_downstream import run as run_downstream
    from s3prl_ser.hub.registry import register
    from s3prl_ser.training.run_identity import run_identity

    register()
    if any(arg in ("-v", "--downstream_variant") or arg.startswith("--downstream_variant=") for arg in run_args):
        raise ConfigError("the deployment run sets its fold (deploy) itself; drop -v")
    cv_dir = Path(cv_dir)
    with ExitStack() as locks:
        cv_dir.mkdir(parents=True, exist_ok=True)
        locks.enter_context(leader_lock(cv_dir))
        for fold in folds:  # the schedule must come from folds trained with these very settings
            if FoldRun(cv_dir, tuple(run_args), fold, overrides).finished() is None:
                raise ConfigError(
                    f"{cv_dir / fold}: fold not finished; run the cross-validation first (the same command "
                    "without --deploy), the deployment schedule is taken from its folds"
                )
        schedule = deployment_schedule(cv_dir, folds)
        steps = f"config.runner.total_steps={schedule['total_steps']}"
        run = FoldRun(cv_dir, tuple(run_args), DEPLOY_FOLD, ",,".join(filter(None, [overrides, steps])))
        run.fold_dir.mkdir(parents=True, exist_ok=True)
        locks.enter_context(leader_lock(run.fold_dir))
        requested = run_identity(*requested_run(run.argv()))
        if deployment_finished(run.fold_dir, requested):
            print(f"[deployment] - finished earlier, reusing {run.fold_dir}")
        else:
            _check_unfinished(run.fold_dir, requested)
            print(f"[deployment] - training on every fold's utterances in {run.fold_dir} ({steps})")
            run_downstream(*get_downstream_args(["-a", *run.argv()]))
            if not deployment_finished(run.fold_dir, requested):
                raise RuntimeError(f"{run.fold_dir}: training ended without a reported model")
        write_json_atomic({**schedule, "cv_dir": str(cv_dir.resolve())}, run.fold_dir / DEPLOYMENT_RECORD, indent=1)
    return run.fold_dir
