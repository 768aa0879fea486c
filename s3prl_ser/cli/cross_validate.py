"""Leave-one-session-out cross-validation in one command.

    python -m s3prl_ser.cli.cross_validate -u fbank -d emotion_ecapa -n NAME \\
        -o "config.downstream_expert.datarc.root=IEMOCAP_ROOT,,config.downstream_expert.datarc.meta_data=META_DIR"

trains fold1..fold5 one after the other (each in ``<expdir>/<fold>``, a normal
``run_downstream.py`` experiment), skips folds that already finished, resumes a killed fold
from its last checkpoint (refusing either if the fold was run with other settings), then writes ``results.md``, ``results.json`` and ``confusion.png``
into the experiment directory. Arguments not listed below are passed to ``run_downstream.py``
(e.g. ``-k CKPT``, ``-c CONFIG``, ``-f``, ``--seed``, ``--device``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.compat import safe_torch_load
from s3prl_ser.config import ConfigError
from s3prl_ser.data.folds import FOLDS, check_fold
from s3prl_ser.training.cv_report import summarize, write_report
from s3prl_ser.training.run_identity import describe, run_identity, significant_differences
from s3prl_ser.training.run_lock import leader_lock
from s3prl_ser.training.runner import FINAL_RECORD

__all__ = ["fold_finished", "cross_validate", "main"]


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


def cross_validate(
    expdir: str | Path,
    run_args: list[str],
    folds: Sequence[str] = FOLDS,
    overrides: str = "",
    title: str | None = None,
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

    Raises:
        DirectoryInUseError: another process holds the root or a fold's directory.
    """
    from s3prl_ser.hub.registry import register

    register()
    if any(arg in ("-v", "--downstream_variant") or arg.startswith("--downstream_variant=") for arg in run_args):
        raise ConfigError("cross_validate sets each fold itself; drop -v")
    folds = [check_fold(fold) for fold in folds]
    expdir = Path(expdir)
    with ExitStack() as locks:
        # The root first: a second cross-validation is refused before it touches any fold.
        # Each fold's own training takes its fold's lock again, re-entrantly.
        for directory in [expdir, *(expdir / fold for fold in folds)]:
            directory.mkdir(parents=True, exist_ok=True)
            locks.enter_context(leader_lock(directory))
        return _run_folds(expdir, run_args, folds, overrides, title)


def _run_folds(expdir: Path, run_args: list[str], folds: list[str], overrides: str, title: str | None) -> dict:
    """:func:`cross_validate`'s work, with the directories locked."""
    from s3prl_ser.cli.run_downstream import get_downstream_args, requested_run, run

    results: dict[str, dict] = {}
    for fold in folds:
        fold_dir = expdir / fold
        fold_override = f"config.downstream_expert.datarc.test_fold={fold}"
        argv = [
            "-m",
            "train",
            "-p",
            str(fold_dir),
            *run_args,
            "-o",
            ",,".join(filter(None, [fold_override, overrides])),
        ]
        requested = run_identity(*requested_run(argv))
        done = fold_finished(fold_dir, fold, requested)
        if done is None:
            _check_unfinished(fold_dir, requested)
            print(f"[cross_validate] - {fold}: training in {fold_dir}")
            run(*get_downstream_args(["-a", *argv]))
            done = fold_finished(fold_dir, fold)
            if done is None:
                raise RuntimeError(f"{fold_dir}: training ended without a tested final model")
        else:
            print(f"[cross_validate] - {fold}: finished earlier, reusing {fold_dir}")
        results[fold] = done
    summary = summarize(results)
    paths = write_report(summary, expdir, title or expdir.name)
    print(Path(paths["md"]).read_text())
    print(f"[cross_validate] - results: {paths['md']}, {paths['json']}, {paths['png']}")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m s3prl_ser.cli.cross_validate",
        description=__doc__.split("\n\n")[0],
        epilog="Other arguments go to run_downstream.py.",
    )
    parser.add_argument("-n", "--expname", help="experiment name: result/downstream/<expname>")
    parser.add_argument("-p", "--expdir", help="experiment root directory (overrides -n)")
    parser.add_argument("--folds", default=",".join(FOLDS), help="comma-separated folds")
    parser.add_argument("-o", "--override", default="", help="run_downstream.py overrides for every fold")
    args, run_args = parser.parse_known_args(argv)
    if not (args.expdir or args.expname):
        parser.error("name the experiment with -n NAME or -p EXPDIR")
    expdir = Path(args.expdir or f"result/downstream/{args.expname}")
    with exit_on_error():
        cross_validate(expdir, run_args, args.folds.split(","), args.override)


if __name__ == "__main__":
    main()
