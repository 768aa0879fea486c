"""``python -m s3prl_ser.cli.tiny_upstream {hubert,wav2vec2} PATH``: a tiny random-init upstream.

Writes :func:`s3prl_ser.toy.tiny_upstream.write_tiny_upstream`'s checkpoint, loadable with
``-u hubert_local -k PATH`` (or ``wav2vec2_local``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.cli.logs import add_verbosity_options, setup_logging
from s3prl_ser.toy.tiny_upstream import write_tiny_upstream

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """``python -m s3prl_ser.cli.tiny_upstream``'s command line."""
    parser = argparse.ArgumentParser(
        prog="python -m s3prl_ser.cli.tiny_upstream",
        description="Write a tiny random-init HuBERT / wav2vec 2.0 checkpoint in s3prl's converted format.",
    )
    parser.add_argument("arch", choices=["hubert", "wav2vec2"], help="architecture")
    parser.add_argument("path", type=Path, help="output checkpoint file")
    parser.add_argument("--layers", type=int, default=2, help="transformer layers (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=48, help="model width (default: %(default)s)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="initialization seed (default: %(default)s)")
    add_verbosity_options(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    with exit_on_error(ValueError):  # e.g. dim not divisible by heads
        path = write_tiny_upstream(
            args.arch, args.path, layers=args.layers, dim=args.dim, heads=args.heads, seed=args.seed
        )
    print(f"wrote tiny {args.arch} checkpoint to {path} (load with -u {args.arch}_local -k {path})")


if __name__ == "__main__":
    main()
