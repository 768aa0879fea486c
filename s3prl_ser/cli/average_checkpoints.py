"""``python -m s3prl_ser.cli.average_checkpoints CKPT... -o OUT``: average checkpoints into one.

Runner checkpoints (``dev-top-step*.ckpt``) or s3prl converted upstream checkpoints, by the
rules of :mod:`s3prl_ser.training.checkpoint_averaging`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.cli.logs import add_verbosity_options, setup_logging
from s3prl_ser.training.checkpoint_averaging import RUNNER_SECTIONS, average_checkpoint_files

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """``python -m s3prl_ser.cli.average_checkpoints``'s command line."""
    parser = argparse.ArgumentParser(
        prog="python -m s3prl_ser.cli.average_checkpoints",
        description="Average model checkpoints (paper 2.3: the 5 best by dev accuracy).",
    )
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint files to average")
    parser.add_argument("-o", "--output", type=Path, required=True, help="averaged checkpoint")
    add_verbosity_options(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    # Unreadable or incompatible files: torch.load raises RuntimeError/TypeError on corrupt ones.
    with exit_on_error(OSError, RuntimeError, ValueError, TypeError):
        averaged = average_checkpoint_files(args.checkpoints, args.output)

    sections = [s for s in (*RUNNER_SECTIONS, "model_weight") if s in averaged]
    steps = averaged["Averaged"]["steps"]
    known = any(step is not None for step in steps)
    shown_steps = ", ".join(str(step) for step in steps) if known else "unknown"
    print(
        f"averaged {len(steps)} checkpoint(s) (steps: {shown_steps}; sections: {', '.join(sections)}) -> {args.output}"
    )


if __name__ == "__main__":
    main()
