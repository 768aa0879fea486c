"""``python -m s3prl_ser.cli.prepare_iemocap IEMOCAP_ROOT --out META_DIR``: IEMOCAP's fold meta data.

Writes what :func:`s3prl_ser.data.corpora.iemocap.prepare` writes and prints a per-fold,
per-class count table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.cli.logs import add_verbosity_options, setup_logging
from s3prl_ser.data.corpora.iemocap import count_table, prepare

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """``python -m s3prl_ser.cli.prepare_iemocap``'s command line."""
    parser = argparse.ArgumentParser(
        prog="python -m s3prl_ser.cli.prepare_iemocap",
        description="Write s3prl emotion meta data (leave-one-session-out folds) for IEMOCAP.",
    )
    parser.add_argument("root", type=Path, help="IEMOCAP release root (contains Session1..5)")
    parser.add_argument("--out", type=Path, required=True, help="output META_DIR")
    parser.add_argument(
        "--sessions", default="1,2,3,4,5", help="comma-separated session numbers (default: %(default)s)"
    )
    parser.add_argument(
        "--file-order",
        choices=["sorted", "listdir"],
        default="sorted",
        help="label-file order; 'listdir' reproduces stock s3prl on this machine (default: %(default)s)",
    )
    parser.add_argument(
        "--attributes",
        choices=["summary", "evaluators", "none"],
        default="summary",
        help="where each utterance's arousal/valence/dominance (1-5) come from: the [V, A, D] triple of its "
        "summary line, the mean of the evaluators' A-E lines, or none (default: %(default)s)",
    )
    add_verbosity_options(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    with exit_on_error():  # PreparationError is a ValueError
        sessions = [int(s) for s in args.sessions.split(",")]
        attributes = None if args.attributes == "none" else args.attributes
        per_session = prepare(args.root, args.out, sessions=sessions, order=args.file_order, attributes=attributes)
    print(count_table(per_session))
    print(f"meta data written to {args.out}")


if __name__ == "__main__":
    main()
