"""Leave-one-session-out cross-validation in one command.

    python -m s3prl_ser.cli.cross_validate -u fbank -d emotion_ecapa -n NAME \\
        -o "config.downstream_expert.datarc.root=IEMOCAP_ROOT,,config.downstream_expert.datarc.meta_data=META_DIR"

trains every fold of the corpus (IEMOCAP: fold1..fold5; a manifest's or EmoBox's own folds;
``--folds`` picks some) one after the other (each in ``<expdir>/<fold>``, a normal
``run_downstream.py`` experiment), skips folds that already finished, resumes a killed fold
from its last checkpoint (refusing either if the fold was run with other settings), then writes ``results.md``, ``results.json`` and ``confusion.png``
into the experiment directory. Arguments not listed below are passed to ``run_downstream.py``
(e.g. ``-k CKPT``, ``-c CONFIG``, ``-f``, ``--seed``, ``--device``).

``--deploy`` then trains the deployment model in ``<expdir>/deploy`` (every utterance of the
corpus, the folds' schedule, no held-out score: :mod:`s3prl_ser.experiments.deployment`), and
``--export MODEL_DIR`` exports it as a self-contained model directory. An existing MODEL_DIR is
refused before any training unless ``--overwrite`` is given (then the export replaces it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from s3prl_ser.cli.errors import EXPECTED_ERRORS, exit_on_error
from s3prl_ser.compat import safe_torch_load
from s3prl_ser.config import ConfigError
from s3prl_ser.data.folds import FOLDS, check_fold
from s3prl_ser.training.cv_report import summarize, write_report
from s3prl_ser.training.run_identity import describe, run_identity, significant_differences
from s3prl_ser.training.run_lock import leader_lock
from s3prl_ser.training.runner import FINAL_RECORD

__all__ = ["fold_finished", "FoldRun", "train_in_workers", "cross_validate", "corpus_folds", "main"]


def fold_finished(fold_dir: Path, fold: str, identity: dict | None = None) -> dict | None:
    """The fold's test metrics if its run finished (final model tested), else None.

    Raises:
        ConfigError: ``identity`` is given and the finished run's (in ``final.json``) differs.
    """
    record = fold_dir / FINAL_RECORD
    metrics = fold_dir / f"test_{fold}_metrics.json"
    if not (record.is_file() and metrics.is_file()):
        return None
    if identity is not None:
        recorded = json.loads(record.read_text()).get("identity")
        if recorded is None:
            raise ConfigError(
                f"{fold_dir} finished before runs recorded their settings (no identity in "
                f"{record.name}); it cannot be checked against this command: move it away to retrain it"
            )
        changed = significant_differences(recorded, identity)
        if changed:
            raise ConfigError(
                f"{fold_dir} finished with other settings ({describe(changed)}): reusing it would mix "
                "two experiments; choose a new -n/-p, or move that fold away to retrain it"
            )
    return json.loads(metrics.read_text())


def _check_unfinished(fold_dir: Path, requested: dict) -> None:
    """Refuse to resume a killed fold that was started with other settings (the resume
    itself only sees what the command line states explicitly)."""
    from s3prl_ser.cli.run_downstream import latest_states

    states = latest_states(str(fold_dir)) if fold_dir.is_dir() else None
    if states is None:
        return
    ckpt = safe_torch_load(states)
    changed = significant_differences(run_identity(ckpt["Args"], ckpt["Config"]), requested, resuming=True)
    if changed:
        raise ConfigError(
            f"{fold_dir} holds an unfinished run with other settings ({describe(changed)}): "
            "choose a new -n/-p, or move that fold away"
        )


@dataclass(frozen=True)
class FoldRun:
    """One fold of a cross-validation: a ``run_downstream.py`` training in ``expdir/fold``.

    Args:
        expdir: the cross-validation's root.
        run_args: ``run_downstream.py`` arguments without ``-m``, ``-p``, ``-n`` and ``-o``.
        fold: the test fold.
        overrides: ``-o`` overrides (the fold's own is added).

    Example:
        >>> FoldRun(Path("exp"), ("-u", "fbank"), "fold2").argv()[-2:]
        ['-o', 'config.downstream_expert.datarc.test_fold=fold2']
    """

    expdir: Path
    run_args: tuple[str, ...]
    fold: str
    overrides: str = ""

    @property
    def fold_dir(self) -> Path:
        return self.expdir / self.fold

    def argv(self) -> list[str]:
        """The fold's ``run_downstream.py`` command line (training mode)."""
        fold_override = f"config.downstream_expert.datarc.test_fold={self.fold}"
        return [
            "-m",
            "train",
            "-p",
            str(self.fold_dir),
            *self.run_args,
            "-o",
            ",,".join(filter(None, [fold_override, self.overrides])),
        ]

    def finished(self) -> dict | None:
        """The fold's test metrics if it finished with these settings, else None.

        Raises:
            ConfigError: it finished, or stopped unfinished, with other settings.
        """
        from s3prl_ser.cli.run_downstream import requested_run

        requested = run_identity(*requested_run(self.argv()))
        done = fold_finished(self.fold_dir, self.fold, requested)
        if done is None:
            _check_unfinished(self.fold_dir, requested)
        return done


def _train(run: FoldRun) -> dict:
    """Train (or resume, or reuse) one fold in this process; its test metrics."""
    from s3prl_ser.cli.run_downstream import get_downstream_args
    from s3prl_ser.cli.run_downstream import run as run_downstream

    done = run.finished()
    if done is not None:
        print(f"[cross_validate] - {run.fold}: finished earlier, reusing {run.fold_dir}")
        return done
    print(f"[cross_validate] - {run.fold}: training in {run.fold_dir}")
    run_downstream(*get_downstream_args(["-a", *run.argv()]))
    done = fold_finished(run.fold_dir, run.fold)
    if done is None:
        raise RuntimeError(f"{run.fold_dir}: training ended without a tested final model")
    return done


WORKER_LOG = "worker.log"


def _train_in_worker(run: FoldRun) -> tuple[FoldRun, dict]:
    """A worker process's task: one fold on one thread, its output into ``fold_dir/worker.log``."""
    from s3prl_ser.hub.registry import register

    torch.set_num_threads(1)
    register()
    run.fold_dir.mkdir(parents=True, exist_ok=True)
    with open(run.fold_dir / WORKER_LOG, "a") as log:
        sys.stdout.flush(), sys.stderr.flush()
        # The descriptors, not only sys.stdout: progress bars and C-level output go there too.
        # The process serves this one task (maxtasksperchild=1), so nothing needs restoring.
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
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

    from s3prl_ser.hub.registry import register

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
        print(f"[cross_validate] - {len(pending)} folds to train in {min(workers, len(pending))} single-thread workers")
        context = multiprocessing.get_context("spawn")  # fork would copy this process's threads and locks
        with context.Pool(min(workers, len(pending)), maxtasksperchild=1) as pool:
            bar = tqdm(pool.imap_unordered(_train_in_worker, pending), total=len(pending), desc="folds", unit="fold")
            for run, metrics in bar:
                results[run] = metrics
                bar.write(f"[cross_validate] - {run.fold_dir}: UA {100 * metrics['ua']:.2f} (log: {WORKER_LOG})")
    return results


def cross_validate(
    expdir: str | Path,
    run_args: list[str],
    folds: Sequence[str] = FOLDS,
    overrides: str = "",
    title: str | None = None,
    workers: int = 0,
) -> dict:
    """Run (or resume) every fold, then write and return the summary.

    The experiment root and the folds' directories are locked for the whole run
    (:mod:`s3prl_ser.training.run_lock`): another cross-validation into the same root, or a
    training in one of its folds, is refused, and so is this one while either runs.

    Args:
        expdir: experiment root; fold N lives in ``expdir/foldN``.
        run_args: ``run_downstream.py`` arguments (``-u``, ``-d``, ``-k``, ...) without
            ``-m``, ``-p``, ``-n`` and ``-o``.
        folds: folds to run.
        overrides: ``-o`` overrides applied to every fold (the fold is set here).
        title: report title (default: the experiment directory's name).
        workers: ``0``: the folds one after the other in this process; ``N``: in N
            single-thread processes (:func:`train_in_workers`).

    Raises:
        DirectoryInUseError: another process holds the root or a fold's directory.
    """
    from s3prl_ser.hub.registry import register

    register()
    if any(arg in ("-v", "--downstream_variant") or arg.startswith("--downstream_variant=") for arg in run_args):
        raise ConfigError("cross_validate sets each fold itself; drop -v")
    folds = [check_fold(fold) for fold in folds]
    expdir = Path(expdir)
    runs = [FoldRun(expdir, tuple(run_args), fold, overrides) for fold in folds]
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
        return _report({run.fold: _train(run) for run in runs}, expdir, title)


def _report(results: dict[str, dict], expdir: Path, title: str | None) -> dict:
    """Summarize the folds' test metrics and write the report files."""
    summary = summarize(results)
    paths = write_report(summary, expdir, title or expdir.name)
    print(Path(paths["md"]).read_text())
    print(f"[cross_validate] - results: {paths['md']}, {paths['json']}, {paths['png']}")
    return summary


def corpus_folds(run_args: Sequence[str], overrides: str = "") -> list[str]:
    """Every fold of the corpus the run's config names (``datarc.meta_data``): 5 for IEMOCAP,
    the manifest's or EmoBox's own count otherwise; IEMOCAP's five when no meta data are set."""
    from s3prl_ser.cli.run_downstream import requested_run
    from s3prl_ser.data.emotion_dataset import corpus_folds as folds_of

    if any(arg in ("-v", "--downstream_variant") or arg.startswith("--downstream_variant=") for arg in run_args):
        return list(FOLDS)  # refused by cross_validate with its own message
    _, config = requested_run(["-m", "train", *run_args, *(["-o", overrides] if overrides else [])])
    meta_data = (config.get("downstream_expert") or {}).get("datarc", {}).get("meta_data")
    return folds_of(meta_data) if meta_data else list(FOLDS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m s3prl_ser.cli.cross_validate",
        description=__doc__.split("\n\n")[0],
        epilog="Other arguments go to run_downstream.py.",
    )
    parser.add_argument("-n", "--expname", help="experiment name: result/downstream/<expname>")
    parser.add_argument("-p", "--expdir", help="experiment root directory (overrides -n)")
    parser.add_argument("--folds", help="comma-separated folds (default: every fold the corpus's meta data define)")
    parser.add_argument("-o", "--override", default="", help="run_downstream.py overrides for every fold")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="train the folds in N single-thread processes at once (default 0: one after the other, here)",
    )
    parser.add_argument(
        "--deploy",
        action="store_true",
        help="then train the deployment model in <expdir>/deploy: every utterance of the corpus (never an "
        "official test set), dev carved by datarc.split, the folds' schedule; no held-out score "
        "(s3prl_ser.experiments.deployment)",
    )
    parser.add_argument(
        "--export", metavar="MODEL_DIR", type=Path, help="with --deploy: export it (python -m s3prl_ser.export)"
    )
    parser.add_argument("--overwrite", action="store_true", help="with --export: replace an existing model directory")
    args, run_args = parser.parse_known_args(argv)
    if not (args.expdir or args.expname):
        parser.error("name the experiment with -n NAME or -p EXPDIR")
    if args.export and not args.deploy:
        parser.error(
            "--export MODEL_DIR exports the deployment model: add --deploy (folds: python -m s3prl_ser.export)"
        )
    if args.overwrite and not args.export:
        parser.error("--overwrite replaces the --export MODEL_DIR: add --export")
    expdir = Path(args.expdir or f"result/downstream/{args.expname}")
    with exit_on_error(*EXPECTED_ERRORS, FileExistsError):  # --export names an existing directory
        if args.export:
            from s3prl_ser.deploy.model_dir import check_writable

            check_writable(args.export, args.overwrite)  # before hours of training, not after
        folds = args.folds.split(",") if args.folds else corpus_folds(run_args, args.override)
        cross_validate(expdir, run_args, folds, args.override, workers=args.workers)
        if args.deploy:
            from s3prl_ser.cli.deploy_run import train_deployment

            deploy_dir = train_deployment(expdir, run_args, folds, args.override)
            print(f"[cross_validate] - deployment model (no held-out score): {deploy_dir}")
            if args.export:
                from s3prl_ser.deploy.export_run import export_run

                print(f"[cross_validate] - wrote {export_run(deploy_dir, args.export, overwrite=args.overwrite)}")


if __name__ == "__main__":
    main()
