"""Score a trained model on any prepared corpus.

    s3prl-ser score MODEL --root CORPUS_ROOT --meta-data META_DIR -o OUT_DIR [--split all|test]

``MODEL`` is an exported model directory (one fold, an ensemble or the deployment model), a
run's fold directory, or a cross-validation directory with ``--fold``. The corpus is any
prepared one (s3prl meta data, a manifest, EmoBox lists). Labels are compared through a label
map (the defaults, or ``--label-map FILE``); utterances without a counterpart are dropped and
counted. A model trained on attributes scored on a corpus carrying them gets each one's CCC,
Pearson r and RMSE on the corpus's scale. Scoring on audio the model learnt from is refused.
``OUT_DIR`` gets ``score.json``, ``score.md`` (printed), ``confusion.png`` and a
``scatter_<attribute>.png`` per attribute (:mod:`s3prl_ser.experiments.cross_corpus`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.cli.logs import add_verbosity_options, setup_logging
from s3prl_ser.data.label_maps import read_label_map_file
from s3prl_ser.experiments.cross_corpus import SPLITS, Corpus, load_scoring_model, score

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3prl-ser score", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model", type=Path, help="a model directory, a run's fold directory, or a cross-validation directory"
    )
    parser.add_argument("--fold", help="with a cross-validation directory: the fold whose model to score")
    parser.add_argument("--root", required=True, help="the scored corpus's audio root (datarc.root)")
    parser.add_argument("--meta-data", required=True, help="the scored corpus's META_DIR (datarc.meta_data)")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="all",
        help="all: every utterance of the corpus (default); test: its test lists (the official test set where it has one)",
    )
    parser.add_argument("--test-fold", help="with --split test: only this fold's test list")
    parser.add_argument("--label-map", type=Path, help="a YAML/JSON label map overriding the defaults")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="directory for score.json, score.md, confusion.png and the attributes' scatter_<name>.png",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per forward pass (default 8)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--allow-unrecorded",
        action="store_true",
        help="score a model directory that records no training audio (exported before the record existed): "
        "leakage is then NOT checked",
    )
    add_verbosity_options(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    with exit_on_error():
        label_map = read_label_map_file(args.label_map) if args.label_map else None
        model = load_scoring_model(args.model, args.fold, args.device)
        score(
            model,
            Corpus(args.root, args.meta_data),
            args.output,
            split=args.split,
            fold=args.test_fold,
            label_map=label_map,
            batch_size=args.batch_size,
            allow_unrecorded=args.allow_unrecorded,
        )
        print((args.output / "score.md").read_text())


if __name__ == "__main__":
    main()
