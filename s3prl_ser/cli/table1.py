"""``python -m s3prl_ser.cli.table1``: the paper's Table 1 (experiments 1-11, 5-fold CV each) beside its numbers.

    python -m s3prl_ser.cli.table1 --experiments 1-11 -p OUT_DIR --root IEMOCAP --meta META \\
        [--folds fold1,...] [-o overrides] [--base] [--wav2vec2 NAME] [--hubert NAME] [--bert BERT_DIR]
        [--targets categories|attributes|both] [--attributes arousal,valence,dominance]

What it runs and writes: :mod:`s3prl_ser.experiments.table1`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.cli.logs import add_verbosity_options, setup_logging
from s3prl_ser.config import parse_overrides
from s3prl_ser.data.attributes import DEFAULT_ATTRIBUTES
from s3prl_ser.data.emotion_dataset import corpus_folds
from s3prl_ser.experiments.table1 import (
    BASE_UPSTREAMS,
    PAPER_UPSTREAMS,
    TARGET_KINDS,
    Table1Spec,
    parse_experiments,
    run_table1,
    table1_targets,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """``python -m s3prl_ser.cli.table1``'s command line."""
    parser = argparse.ArgumentParser(prog="python -m s3prl_ser.cli.table1", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", default="1-11", help="Table 1 rows, e.g. 1-4,7 or none (default: %(default)s)")
    parser.add_argument("-p", "--out", type=Path, required=True, help="output directory")
    parser.add_argument("--root", type=Path, required=True, help="IEMOCAP release root")
    parser.add_argument("--meta", type=Path, required=True, help="META_DIR of s3prl_ser.data.corpora.iemocap")
    parser.add_argument("--folds", help="comma-separated folds (default: every fold of --meta)")
    parser.add_argument("-o", "--override", default="", help="run_downstream.py overrides for every experiment")
    parser.add_argument("--ft-override", default="", help="python -m upstream_ft overrides for stage 1")
    parser.add_argument(
        "--base", action="store_true", help="Base models (wav2vec2, hubert) instead of the paper's Large ones"
    )
    parser.add_argument(
        "--wav2vec2",
        help=f"W2V2 hub entry, NAME or NAME:CKPT (default {PAPER_UPSTREAMS['wav2vec2']}; --base: wav2vec2)",
    )
    parser.add_argument(
        "--hubert", help=f"HuBERT hub entry, NAME or NAME:CKPT (default {PAPER_UPSTREAMS['hubert']}; --base: hubert)"
    )
    parser.add_argument("--bert", help="base text encoder directory (Hugging Face format)")
    parser.add_argument("--base-config", help="runner/optimizer/sizes for every experiment (model keys kept)")
    parser.add_argument("--ft-config", help="upstream_ft config for stage 1")
    parser.add_argument(
        "--superb", default="", help="stock upstreams (NAME or NAME:CKPT) to run with SUPERB's ER protocol"
    )
    parser.add_argument(
        "--targets",
        choices=TARGET_KINDS,
        default="categories",
        help="what every run learns, both stages: the paper's categories, --attributes alone (test CCC per "
        "attribute), or both (multi-task) (default: %(default)s)",
    )
    parser.add_argument(
        "--attributes",
        default=",".join(DEFAULT_ATTRIBUTES),
        help="the attributes --targets attributes|both regresses (default: %(default)s)",
    )
    parser.add_argument("--device", default="cpu", help="torch device of every run (default: %(default)s)")
    add_verbosity_options(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    defaults = BASE_UPSTREAMS if args.base else PAPER_UPSTREAMS
    with exit_on_error():
        folds = args.folds.split(",") if args.folds else corpus_folds(args.meta)
        spec = Table1Spec(
            out_dir=args.out,
            experiments=tuple(parse_experiments(args.experiments)),
            folds=tuple(folds),
            root=args.root,
            meta=args.meta,
            overrides=tuple(parse_overrides(args.override)),
            ft_overrides=tuple(parse_overrides(args.ft_override)),
            wav2vec2=args.wav2vec2 or defaults["wav2vec2"],
            hubert=args.hubert or defaults["hubert"],
            bert=args.bert,
            base_config=args.base_config,
            ft_config=args.ft_config,
            device=args.device,
            note=f"Folds: {','.join(folds)}.",
            superb=tuple(s for s in args.superb.split(",") if s),
            targets=table1_targets(args.targets, [a for a in args.attributes.split(",") if a]),
        )
        run_table1(spec)
    print((args.out / "table1.md").read_text())


if __name__ == "__main__":
    main()
