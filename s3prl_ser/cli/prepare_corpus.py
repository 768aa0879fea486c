"""``python -m s3prl_ser.cli.prepare_corpus CORPUS ROOT OUT``: a corpus's manifest and folds.

CORPUS is one of ``iemocap`` (s3prl's meta data, exactly as ``prepare_iemocap`` writes them),
``msp_podcast``, ``cremad``, ``ravdess``, ``emodb``, ``esd``, or ``table`` (any CSV/JSONL listing:
``--table FILE --columns path=file,label=emotion,speaker=actor``). Prints the per-fold,
per-class count table; errors name the offending file. Then train with
``-o config.downstream_expert.datarc.root=ROOT,,config.downstream_expert.datarc.meta_data=OUT``.
"""

from __future__ import annotations

import argparse
import importlib
import warnings
from pathlib import Path

from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.cli.logs import add_verbosity_options, setup_logging
from s3prl_ser.data.corpora import CORPORA
from s3prl_ser.data.corpora.common import PreparationError
from s3prl_ser.data.corpora.iemocap import count_table
from s3prl_ser.data.corpora.table import parse_columns, parse_scale_option

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """``python -m s3prl_ser.cli.prepare_corpus``'s command line."""
    parser = argparse.ArgumentParser(
        prog="python -m s3prl_ser.cli.prepare_corpus", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("corpus", choices=CORPORA, help="which corpus ROOT holds")
    parser.add_argument("root", type=Path, help="the corpus as released (its root directory)")
    parser.add_argument("out", type=Path, help="output META_DIR (manifest.json)")
    parser.add_argument("--num-folds", type=int, help="speaker-independent folds (cremad, ravdess, emodb, table)")
    parser.add_argument(
        "--language", default="all", choices=["all", "en", "zh"], help="ESD speakers (default: %(default)s)"
    )
    parser.add_argument(
        "--test-set", default="Test1", help="MSP-Podcast's official test set: Test1, Test2, ... (default: %(default)s)"
    )
    parser.add_argument(
        "--skip-bad-audio", action="store_true", help="leave unreadable files out (warned) instead of stopping"
    )
    parser.add_argument("--table", type=Path, help="table: the CSV or JSONL listing")
    parser.add_argument("--columns", default="", help="table: FIELD=COLUMN,... (path, label, speaker, id, start, ...)")
    parser.add_argument("--name", help="table: the corpus's name (default: the listing's file name)")
    parser.add_argument("--split-column", help="table: a column of train/dev/test (one official fold)")
    parser.add_argument("--fold-column", help="table: a column holding each row's test fold number")
    parser.add_argument(
        "--allow-outside-root", action="store_true", help="table: accept absolute paths and paths .. leads out of ROOT"
    )
    parser.add_argument(
        "--attributes",
        choices=["summary", "evaluators", "none"],
        default="summary",
        help="iemocap: arousal/valence/dominance from each turn's [V, A, D] summary or the evaluators' mean; "
        "msp_podcast: none leaves EmoAct/EmoVal/EmoDom (and the X/O utterances) out (default: %(default)s)",
    )
    parser.add_argument(
        "--attribute-columns", default="", help="table: NAME=COLUMN,... continuous attributes, e.g. arousal=act"
    )
    parser.add_argument(
        "--attribute-scale", default="", help="table: the attributes' scale, LO:HI for all or NAME=LO:HI,..."
    )
    add_verbosity_options(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    with exit_on_error(), warnings.catch_warnings():
        warnings.simplefilter("always")
        module = importlib.import_module(f"s3prl_ser.data.corpora.{args.corpus}")
        if args.corpus == "iemocap":
            attributes = None if args.attributes == "none" else args.attributes
            table = count_table(module.prepare(args.root, args.out, attributes=attributes))
        elif args.corpus == "table":
            if args.table is None:
                raise PreparationError("table: name the listing with --table FILE.csv|FILE.jsonl")
            attribute_columns = parse_columns(args.attribute_columns)
            table = module.prepare(
                args.table,
                args.root,
                args.out,
                columns=parse_columns(args.columns),
                corpus=args.name,
                split_column=args.split_column,
                fold_column=args.fold_column,
                num_folds=args.num_folds or 5,
                skip_bad_audio=args.skip_bad_audio,
                allow_outside_root=args.allow_outside_root,
                attributes=attribute_columns,
                attribute_scale=parse_scale_option(args.attribute_scale, list(attribute_columns)),
            ).count_table()
        else:
            options: dict = {"skip_bad_audio": args.skip_bad_audio}
            if args.corpus in ("cremad", "ravdess", "emodb") and args.num_folds:
                options["num_folds"] = args.num_folds
            if args.corpus == "esd":
                options["language"] = args.language
            if args.corpus == "msp_podcast":
                options["test_set"] = args.test_set
                options["attributes"] = args.attributes != "none"
            table = module.prepare(args.root, args.out, **options).count_table()
    print(table)
    print(f"meta data written to {args.out}")


if __name__ == "__main__":
    main()
