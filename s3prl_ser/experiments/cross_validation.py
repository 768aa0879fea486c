"""Cross-validation: one run per fold (each a normal ``run_downstream.py`` experiment in
``<expdir>/<fold>``), reused when finished with the same settings, resumed when killed, then
summarized into ``results.md``, ``results.json`` and ``confusion.png`` (with attributes: a
``scatter_<attribute>.png`` each, over all folds' test predictions).

Folds run one after the other in this process, or in single-thread worker processes
(:func:`train_in_workers`), or as independent jobs (one ``run_downstream.py`` training per
fold directory, e.g. a Slurm array) whose results :func:`report` gathers without training.
The deployment run that follows a cross-validation:
:mod:`s3prl_ser.experiments.deployment`.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from s3prl_ser.config import ConfigError
from s3prl_ser.data.folds import FOLDS, check_fold
from s3prl_ser.experiments.launch import RunRequest, launch, requested_run
from s3prl_ser.fileio import read_json
from s3prl_ser.training.cv_report import fold_headline, read_attribute_predictions, summarize, write_report
from s3prl_ser.training.run_dir import FINAL_RECORD, NO_IDENTITY, RunDir
from s3prl_ser.training.run_identity import describe, run_identity
from s3prl_ser.training.run_lock import DirectoryInUseError, check_free, leader_lock

__all__ = [
    "WORKER_LOG",
    "fold_finished",
    "check_unfinished",
    "FoldRun",
    "train_in_workers",
    "cross_validate",
    "report",
    "corpus_folds",
]

logger = logging.getLogger(__name__)

WORKER_LOG = "worker.log"
_FOLD_KEY = "config.downstream_expert.datarc.test_fold"


def fold_finished(fold_dir: Path, fold: str, identity: dict | None = None) -> dict | None:
    """The fold's test metrics if its run finished (final model tested), else None.

    Raises:
        ConfigError: ``identity`` is given and the finished run's (in ``final.json``) differs.
    """
    run = RunDir(fold_dir)
    metrics = run.test_metrics_file(fold)
    if not (run.is_finished() and metrics.is_file()):
        return None
    changed = run.finished_differences(identity) if identity is not None else []
    if changed == [NO_IDENTITY]:
        raise ConfigError(
            f"{fold_dir} finished before runs recorded their settings (no identity in "
            f"{FINAL_RECORD}); it cannot be checked against this command: move it away to retrain it"
        )
    if changed:
        raise ConfigError(
            f"{fold_dir} finished with other settings ({describe(changed)}): reusing it would mix "
            "two experiments; choose a new -n/-p, or move that fold away to retrain it"
        )
    return read_json(metrics)


def check_unfinished(fold_dir: Path, requested: dict) -> None:
    """Refuse to resume a killed run in ``fold_dir`` that was started with other settings than
    the identity ``requested`` (the resume itself only compares what the request states).

    Raises:
        ConfigError: the run's latest states record other settings.
    """
    changed = RunDir(fold_dir).unfinished_differences(requested)
    if changed:
        raise ConfigError(
            f"{fold_dir} holds an unfinished run with other settings ({describe(changed)}): "
            "choose a new -n/-p, or move that fold away"
        )


def _check_no_variant(request: RunRequest, who: str) -> None:
    if request.downstream_variant is not None:
        raise ConfigError(f"{who} sets each fold itself; drop -v")


@dataclass(frozen=True)
class FoldRun:
    """One fold of a cross-validation: a training of ``request`` in ``expdir/fold``.

    Args:
        expdir: the cross-validation's root.
        request: the run shared by every fold (upstream, task, config, overrides); its mode,
            directory and resume settings are set per fold.
        fold: the test fold.

    Example:
        >>> run = FoldRun(Path("exp"), RunRequest(upstream="fbank", downstream="emotion_ecapa"), "fold2")
        >>> run.request_of_fold().expdir, run.request_of_fold().overrides
        ('exp/fold2', (('config.downstream_expert.datarc.test_fold', 'fold2'),))
    """

    expdir: Path
    request: RunRequest
    fold: str

    @property
    def fold_dir(self) -> Path:
        return self.expdir / self.fold

    def request_of_fold(self) -> RunRequest:
        """The fold's training: in ``fold_dir``, resumed when it holds states, its fold set
        before the shared overrides (which may name another one on purpose)."""
        return dataclasses.replace(
            self.request,
            mode="train",
            expdir=str(self.fold_dir),
            expname=None,
            auto_resume=True,
            overrides=((_FOLD_KEY, self.fold), *self.request.overrides),
        )

    def finished(self) -> dict | None:
        """The fold's test metrics if it finished with these settings, else None.

        Raises:
            ConfigError: it finished, or stopped unfinished, with other settings.
        """
        requested = run_identity(*requested_run(self.request_of_fold()))
        done = fold_finished(self.fold_dir, self.fold, requested)
        if done is None:
            check_unfinished(self.fold_dir, requested)
        return done


def _train(run: FoldRun) -> dict:
    """Train (or resume, or reuse) one fold in this process; its test metrics."""
    done = run.finished()
    if done is not None:
        logger.info(f"[cross_validate] - {run.fold}: finished earlier, reusing {run.fold_dir}")
        return done
    logger.info(f"[cross_validate] - {run.fold}: training in {run.fold_dir}")
    launch(run.request_of_fold())
    done = fold_finished(run.fold_dir, run.fold)
    if done is None:
        raise RuntimeError(f"{run.fold_dir}: training ended without a tested final model")
    return done


def _train_in_worker(run: FoldRun) -> tuple[FoldRun, dict]:
    """A worker process's task: one fold on one thread, its output into ``fold_dir/worker.log``."""
    from s3prl_ser.upstreams.registry import register

    torch.set_num_threads(1)
    register()
    run.fold_dir.mkdir(parents=True, exist_ok=True)
    with open(run.fold_dir / WORKER_LOG, "a") as log:
        sys.stdout.flush(), sys.stderr.flush()
        # The descriptors, not only sys.stdout: progress bars and C-level output go there too.
        # The process serves this one task (maxtasksperchild=1), so nothing needs restoring.
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
        # A spawned process starts without log handlers: the fold's progress goes to its log.
        logging.basicConfig(format="%(message)s", stream=sys.stderr)
        logging.getLogger("s3prl_ser").setLevel(logging.INFO)
        return run, _train(run)


def train_in_workers(runs: Sequence[FoldRun], workers: int) -> dict[FoldRun, dict]:
    """Train ``runs`` in ``workers`` processes of one thread each; their test metrics.

    A fold trained on one thread computes the same floats whatever the machine's core count
    and however many workers run beside it, so the results depend on the seed and the CPU
    only (a multi-threaded run's reductions change with the thread count). Folds that
    finished with the same settings are reused without a worker; a killed run resumes as in
    :func:`cross_validate`. Each worker is a fresh ``spawn`` process per fold, writing its
    output to ``<fold_dir>/worker.log``; a bar counts the folds.

    Raises:
        DirectoryInUseError: another process holds a root or a fold's directory.
        ConfigError: a fold finished (or stopped) with other settings; a worker's own error
            (the first to end) is raised here too.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from s3prl_ser.upstreams.registry import register

    register()  # the settings check below reads emotion_ecapa's defaults
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    for run in runs:
        check_fold(run.fold)
    results: dict[FoldRun, dict] = {}
    with ExitStack() as locks:
        # The roots only: each worker takes its fold's lock itself.
        for root in dict.fromkeys(run.expdir for run in runs):
            root.mkdir(parents=True, exist_ok=True)
            locks.enter_context(leader_lock(root))
        pending = []
        for run in runs:
            done = run.finished()
            if done is None:
                pending.append(run)
            else:
                results[run] = done
        if not pending:
            return results
        logger.info(
            f"[cross_validate] - {len(pending)} folds to train in {min(workers, len(pending))} single-thread workers"
        )
        context = multiprocessing.get_context("spawn")  # fork would copy this process's threads and locks
        with context.Pool(min(workers, len(pending)), maxtasksperchild=1) as pool:
            start = time.monotonic()
            bar = tqdm(pool.imap_unordered(_train_in_worker, pending), total=len(pending), desc="folds", unit="fold")
            with logging_redirect_tqdm():  # log lines above the bar, not through it
                for done, (run, metrics) in enumerate(bar, 1):
                    results[run] = metrics
                    left = (time.monotonic() - start) / done * (len(pending) - done)
                    logger.info(
                        f"[cross_validate] - {done}/{len(pending)} folds done, about {left / 60:.0f} min left; "
                        f"{run.fold_dir}: {fold_headline(metrics)} (log: {WORKER_LOG})"
                    )
    return results


def cross_validate(
    expdir: str | Path,
    request: RunRequest,
    folds: Sequence[str] = FOLDS,
    title: str | None = None,
    workers: int = 0,
) -> dict:
    """Run (or resume) every fold of ``request``, then write and return the summary.

    The experiment root and the folds' directories are locked for the whole run
    (:mod:`s3prl_ser.training.run_lock`): another cross-validation into the same root, or a
    training in one of its folds, is refused, and so is this one while either runs.

    Args:
        expdir: experiment root; fold N lives in ``expdir/foldN``.
        request: the run shared by every fold (:class:`FoldRun` sets mode, directory, fold).
        folds: folds to run.
        title: report title (default: the experiment directory's name).
        workers: ``0``: the folds one after the other in this process; ``N``: in N
            single-thread processes (:func:`train_in_workers`).

    Raises:
        ConfigError: the request names a variant (``-v``), a fold is unknown, or a fold
            finished (or stopped) with other settings.
        DirectoryInUseError: another process holds the root or a fold's directory.
    """
    from s3prl_ser.upstreams.registry import register

    register()
    _check_no_variant(request, "cross_validate")
    folds = [check_fold(fold) for fold in folds]
    expdir = Path(expdir)
    runs = [FoldRun(expdir, request, fold) for fold in folds]
    with ExitStack() as locks:
        # The root first: a second cross-validation is refused before it touches any fold.
        expdir.mkdir(parents=True, exist_ok=True)
        locks.enter_context(leader_lock(expdir))
        if workers:
            train_in_workers(runs, workers)
        # Each fold's own training takes its fold's lock again, re-entrantly.
        for run in runs:
            run.fold_dir.mkdir(parents=True, exist_ok=True)
            locks.enter_context(leader_lock(run.fold_dir))
        return _write_summary({run.fold: _train(run) for run in runs}, expdir, title)


def _write_summary(fold_metrics: dict[str, dict], expdir: Path, title: str | None) -> dict:
    """Summarize the folds' test metrics into ``expdir``'s results; the summary."""
    points = _attribute_points(fold_metrics, expdir)
    summary = summarize(fold_metrics, points)
    paths = write_report(summary, expdir, title or expdir.name, points)
    logger.info(f"[cross_validate] - results: {', '.join(str(path) for path in paths.values())}")
    return summary


def _attribute_points(fold_metrics: dict[str, dict], expdir: Path) -> dict:
    """Every fold's test predictions of each attribute (``expdir/<fold>/test_<fold>_attributes.csv``,
    as the fold's metrics name it), pooled: ``{name: (N, 2) [true, predicted]}``; ``{}`` without attributes."""
    pooled: dict[str, list] = {}
    for fold, metrics in sorted(fold_metrics.items()):
        if not metrics.get("attribute_predictions"):
            continue
        points = read_attribute_predictions(
            expdir / fold / metrics["attribute_predictions"], list(metrics["attributes"])
        )
        for name, pairs in points.items():
            pooled.setdefault(name, []).append(pairs)
    return {name: np.concatenate(parts) for name, parts in pooled.items()}


def report(
    expdir: str | Path,
    request: RunRequest,
    folds: Sequence[str] = FOLDS,
    title: str | None = None,
) -> dict:
    """Write and return the summary of folds trained elsewhere (e.g. one job per fold), never
    training: what :func:`cross_validate` writes for the same finished folds.

    Each fold must have finished in ``expdir/<fold>`` with the settings of ``request`` (as
    :func:`cross_validate` would have trained it) and be held by no running process; the
    folds are only read (no fold lock is taken). The root is locked while the report is
    written, so a cross-validation writing there refuses it.

    Args:
        expdir: experiment root; fold N lives in ``expdir/foldN``.
        request: the run every fold was trained with (its fold aside).
        folds: the folds to report.
        title: report title (default: the experiment directory's name).

    Raises:
        ConfigError: the request names a variant (``-v``), a fold is unknown, or some folds are
            missing, unfinished, still running, or finished with other settings (all named).
        DirectoryInUseError: another process holds the root.
    """
    from s3prl_ser.upstreams.registry import register

    register()  # the settings check reads the task's defaults
    _check_no_variant(request, "the report")
    expdir = Path(expdir)
    fold_metrics, problems = {}, []
    for fold in (check_fold(fold) for fold in folds):
        run = FoldRun(expdir, request, fold)
        if not run.fold_dir.is_dir():
            problems.append(f"{fold} is missing (no {run.fold_dir})")
            continue
        try:
            check_free(run.fold_dir)
            done = fold_finished(run.fold_dir, fold, run_identity(*requested_run(run.request_of_fold())))
        except (DirectoryInUseError, ConfigError) as error:
            problems.append(str(error))
            continue
        if done is None:
            problems.append(f"{fold} is unfinished (no tested final model in {run.fold_dir}): train or resume it first")
        else:
            fold_metrics[fold] = done
    if problems:
        raise ConfigError(f"cannot report {expdir}: " + "; ".join(problems))
    with leader_lock(expdir):
        return _write_summary(fold_metrics, expdir, title)


def corpus_folds(request: RunRequest) -> list[str]:
    """Every fold of the corpus the run's config names (``datarc.meta_data``): 5 for IEMOCAP,
    the manifest's or EmoBox's own count otherwise; IEMOCAP's five when no meta data are set
    (or the request names a variant, which :func:`cross_validate` refuses with its own message)."""
    from s3prl_ser.data.emotion_dataset import corpus_folds as folds_of

    if request.downstream_variant is not None:
        return list(FOLDS)
    _, config = requested_run(dataclasses.replace(request, mode="train"))
    meta_data = (config.get("downstream_expert") or {}).get("datarc", {}).get("meta_data")
    return folds_of(meta_data) if meta_data else list(FOLDS)
