"""Train on each of N corpora and score on every other: the cross-corpus matrix in one command.

    s3prl-ser cross-corpus -p OUT --corpus iemocap=ROOT,META_DIR --corpus crema=ROOT,META_DIR \\
        -u fbank -d emotion_ecapa [-c CONFIG] [-o OVERRIDES]

Each corpus is cross-validated in ``OUT/NAME`` with the training options (``-u``, ``-d``, ``-c``,
``-o`` and any other ``run_downstream.py`` option), its deployment model trained (or, with
``--model FOLD``, that fold's model taken) and scored on every other corpus; ``OUT`` gets
``matrix.md`` (printed), ``matrix.json`` and ``matrix.png``; ``--pool NAME=A,B`` adds a row
trained on A and B together, scored on the other corpora. With a recipe trained on attributes
the cells carry their mean CCC too (``--metric ccc_mean`` draws it). A killed matrix resumes:
finished folds, deployment runs and cells are reused (:mod:`s3prl_ser.experiments.cross_corpus`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from s3prl_ser.cli import run_downstream
from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.cli.logs import add_verbosity_options, setup_logging
from s3prl_ser.experiments.cross_corpus import MATRIX_METRICS, SPLITS, MatrixCorpus, Pool, cross_corpus_matrix
from s3prl_ser.experiments.launch import RunRequest

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The matrix's own options; the others are ``run_downstream.py``'s, given to every training."""
    parser = argparse.ArgumentParser(
        prog="s3prl-ser cross-corpus",
        description=__doc__.split("\n\n")[0],
        epilog="Any other run_downstream.py option (e.g. -c, -f, --seed) is given to every training.",
    )
    parser.add_argument("-p", "--expdir", type=Path, required=True, help="the matrix's root directory")
    parser.add_argument(
        "--corpus",
        action="append",
        required=True,
        metavar="NAME=ROOT,META_DIR",
        help="a prepared corpus (give two or more); NAME names its directory and table row",
    )
    parser.add_argument(
        "--pool",
        action="append",
        metavar="NAME=CORPUS,CORPUS",
        help="one more row: a model trained on these corpora together (each fold's test lists never trained on), "
        "scored on the other corpora",
    )
    parser.add_argument(
        "--folds", help="comma-separated folds cross-validated on every corpus (default: each one's own)"
    )
    parser.add_argument(
        "--model",
        default="deploy",
        help="deploy: each corpus's deployment model, trained on every utterance (default); or a fold: that fold's model",
    )
    parser.add_argument(
        "--split", choices=SPLITS, default="all", help="what of the other corpora is scored (default: all)"
    )
    parser.add_argument("--label-map", type=Path, help="a YAML/JSON label map overriding the defaults")
    parser.add_argument(
        "--metric",
        choices=MATRIX_METRICS,
        help="the heatmap's metric (default: ua when the recipe trains categories, else ccc_mean, the mean CCC "
        "over attributes)",
    )
    parser.add_argument("--workers", type=int, default=0, help="train folds in N single-thread processes (default 0)")
    parser.add_argument(
        "-o",
        "--override",
        default="",
        help='run_downstream.py overrides for every training, e.g. "config.x=1,,config.y=2"',
    )
    add_verbosity_options(parser, short_verbose=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    args, rest = build_parser().parse_known_args(argv)
    setup_logging(args)
    passed_on = run_downstream.build_parser().parse_args(["-m", "train", *rest])
    passed_on.override = args.override
    with exit_on_error():
        corpora = [MatrixCorpus.parse(text) for text in args.corpus]
        cross_corpus_matrix(
            args.expdir,
            corpora,
            RunRequest.from_arguments(passed_on),
            folds=args.folds.split(",") if args.folds else None,
            model=args.model,
            split=args.split,
            label_map=args.label_map,
            workers=args.workers,
            pools=[Pool.parse(text) for text in args.pool or ()],
            metric=args.metric,
        )
        print((args.expdir / "matrix.md").read_text())


if __name__ == "__main__":
    main()
