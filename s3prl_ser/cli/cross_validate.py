"""Leave-one-session-out cross-validation in one command.

    python -m s3prl_ser.cli.cross_validate -u fbank -d emotion_ecapa -n NAME \\
        -o "config.downstream_expert.datarc.root=IEMOCAP_ROOT,,config.downstream_expert.datarc.meta_data=META_DIR"

trains every fold of the corpus (IEMOCAP: fold1..fold5; a manifest's or EmoBox's own folds;
``--folds`` picks some) one after the other (each in ``<expdir>/<fold>``, a normal
``run_downstream.py`` experiment), skips folds that already finished, resumes a killed fold
from its last checkpoint (refusing either if the fold was run with other settings), then writes ``results.md``, ``results.json`` and ``confusion.png``
into the experiment directory (:mod:`s3prl_ser.experiments.cross_validation`). The training
options (``-u``, ``-k``, ``-d``, ``-c``, ``-f``, ``--seed``, ``--device`` and any other
``run_downstream.py`` option) are every fold's.

``--deploy`` then trains the deployment model in ``<expdir>/deploy`` (every utterance of the
corpus, the folds' schedule, no held-out score: :mod:`s3prl_ser.experiments.deployment`), and
``--export MODEL_DIR`` exports it as a self-contained model directory. An existing MODEL_DIR is
refused before any training unless ``--overwrite`` is given (then the export replaces it).

``--report-only`` trains nothing: it writes the same report from folds trained elsewhere (one
job per fold, e.g. a Slurm array of ``run_downstream.py`` trainings into ``<expdir>/<fold>``),
and refuses, naming them, folds that are missing, unfinished, still running, or finished with
other settings than this command's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from s3prl_ser.cli import run_downstream
from s3prl_ser.cli.errors import EXPECTED_ERRORS, exit_on_error
from s3prl_ser.cli.logs import add_verbosity_options, setup_logging
from s3prl_ser.experiments.cross_validation import corpus_folds, cross_validate, report
from s3prl_ser.experiments.deployment import train_deployment
from s3prl_ser.experiments.launch import RUN_DEFAULTS, RunRequest, default_device
from s3prl_ser.inference.export import export_run
from s3prl_ser.inference.model_dir import check_writable

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """``python -m s3prl_ser.cli.cross_validate``'s command line; options it does not list are
    ``run_downstream.py``'s, given to every fold."""
    parser = argparse.ArgumentParser(
        prog="python -m s3prl_ser.cli.cross_validate",
        description=__doc__.split("\n\n")[0],
        epilog="Any other run_downstream.py option (e.g. -g, -s, -l, --no_feature_cache) is given to every fold.",
    )
    parser.add_argument("-n", "--expname", help="experiment name: result/downstream/<expname>")
    parser.add_argument("-p", "--expdir", help="experiment root directory (overrides -n)")
    parser.add_argument("--folds", help="comma-separated folds (default: every fold the corpus's meta data define)")
    parser.add_argument(
        "-o", "--override", default="", help='run_downstream.py overrides for every fold, e.g. "config.x=1,,config.y=2"'
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="train the folds in N single-thread processes at once (default 0: one after the other, here)",
    )
    training = parser.add_argument_group("training (every fold's, as in run_downstream.py)")
    training.add_argument("-u", "--upstream", help="an s3prl hub entry, e.g. fbank, hubert, hubert_local")
    training.add_argument("-k", "--upstream_ckpt", metavar="PATH", help="checkpoint for *_local upstreams")
    training.add_argument("-d", "--downstream", help="downstream task, e.g. emotion_ecapa")
    training.add_argument(
        "-c", "--config", help="yaml config merged over downstream/<task>/config.yaml (may hold only what differs)"
    )
    training.add_argument("-f", "--upstream_trainable", action="store_true", help="fine-tune the upstream")
    training.add_argument("--seed", type=int, help=f"random seed (default: {RUN_DEFAULTS['seed']})")
    training.add_argument("--device", help=f"torch device (default: {default_device()})")
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
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the results of folds already trained in <expdir>/<fold> with these "
        "settings (e.g. one job per fold); missing, unfinished or differently trained folds are an error",
    )
    add_verbosity_options(parser, short_verbose=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    setup_logging(args)
    if not (args.expdir or args.expname):
        parser.error("name the experiment with -n NAME or -p EXPDIR")
    if args.export and not args.deploy:
        parser.error(
            "--export MODEL_DIR exports the deployment model: add --deploy (folds: python -m s3prl_ser.export)"
        )
    if args.report_only and (args.deploy or args.workers):
        parser.error("--report-only trains nothing: drop --deploy and --workers")
    if args.overwrite and not args.export:
        parser.error("--overwrite replaces the --export MODEL_DIR: add --export")
    # The rest are run_downstream.py's options (its parser names an unknown one).
    passed_on = run_downstream.build_parser().parse_args(["-m", "train", *rest])
    for name in ("upstream", "upstream_ckpt", "downstream", "config", "upstream_trainable", "seed", "device"):
        setattr(passed_on, name, getattr(args, name))
    passed_on.override = args.override
    expdir = Path(args.expdir or f"result/downstream/{args.expname}")
    with exit_on_error(*EXPECTED_ERRORS, FileExistsError):  # --export names an existing directory
        request = RunRequest.from_arguments(passed_on)
        if args.export:
            check_writable(args.export, args.overwrite)  # before hours of training, not after
        folds = args.folds.split(",") if args.folds else corpus_folds(request)
        if args.report_only:
            report(expdir, request, folds)
            print((expdir / "results.md").read_text())
            return
        cross_validate(expdir, request, folds, workers=args.workers)
        print((expdir / "results.md").read_text())
        if args.deploy:
            deploy_dir = train_deployment(expdir, request, folds)
            print(f"[cross_validate] - deployment model (no held-out score): {deploy_dir}")
            if args.export:
                print(f"[cross_validate] - wrote {export_run(deploy_dir, args.export, overwrite=args.overwrite)}")


if __name__ == "__main__":
    main()
