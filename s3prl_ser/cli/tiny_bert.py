"""``python -m s3prl_ser.cli.tiny_bert DIR [--seed N]``: a tiny random-init BERT for tests and demos.

Writes :func:`s3prl_ser.toy.tiny_bert.write_tiny_bert`'s model and tokenizer, usable as
``python -m upstream_ft -u text -k DIR`` or ``config.downstream_expert.text.encoder=DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from s3prl_ser.cli.logs import add_verbosity_options, setup_logging
from s3prl_ser.toy.tiny_bert import write_tiny_bert

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """``python -m s3prl_ser.cli.tiny_bert``'s command line."""
    parser = argparse.ArgumentParser(
        prog="python -m s3prl_ser.cli.tiny_bert", description="Write a tiny random-init BERT for tests and demos."
    )
    parser.add_argument("path", type=Path, help="output directory (save_pretrained layout)")
    parser.add_argument("--seed", type=int, default=0, help="initialization seed (default: %(default)s)")
    add_verbosity_options(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    print(f"wrote tiny BERT to {write_tiny_bert(args.path, seed=args.seed)}")


if __name__ == "__main__":
    main()
