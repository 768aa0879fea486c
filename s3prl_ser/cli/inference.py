"""``python -m s3prl_ser.inference MODEL AUDIO|DIR|LIST... [--output results.csv|.jsonl]``.

(``python -m s3prl_ser.cli.inference`` is the same command.) ``MODEL`` is a model directory
(``python -m s3prl_ser.export``), a run's fold directory or a runner checkpoint; inputs are
audio files, folders (searched recursively by audio extension) and list files (``.txt``,
``.lst``, ``.scp``: one path a line). Without ``--output`` rows are printed as JSON lines.

Exit status: 0 when every file was predicted, 1 on an error before any file (no such model),
2 on bad arguments, 3 when some files gave error rows (the others are still written).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.cli.logs import add_verbosity_options, setup_logging
from s3prl_ser.inference.files import predict_files
from s3prl_ser.inference.recognizer import EmotionRecognizer
from s3prl_ser.inference.rows import write_rows

__all__ = ["FILES_FAILED", "build_parser", "main"]

FILES_FAILED = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m s3prl_ser.inference", description="Predict the emotion of audio files, folders and lists."
    )
    parser.add_argument("model", help="model directory, experiment (fold) directory or final checkpoint")
    parser.add_argument("audio", nargs="+", help="audio files, folders (recursive) or list files")
    parser.add_argument("--output", "-O", help="write rows to this .csv or .jsonl file (default: JSON lines on stdout)")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="files or windows per forward pass (default: %(default)s)"
    )
    parser.add_argument(
        "--long-audio",
        type=float,
        default=60.0,
        help="seconds above which a file is read in windows (default: %(default)s)",
    )
    parser.add_argument(
        "--window", type=float, default=8.0, help="window length in seconds, long files (default: %(default)s)"
    )
    parser.add_argument(
        "--hop", type=float, default=4.0, help="window step in seconds, long files (default: %(default)s)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: %(default)s)"
    )
    add_verbosity_options(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    with exit_on_error():  # no such model, a bad option value
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        if not (args.window > 0 and 0 < args.hop <= args.window):
            raise ValueError(f"need 0 < --hop <= --window, got --window {args.window} --hop {args.hop}")
        recognizer = EmotionRecognizer.from_pretrained(args.model, device=args.device)
        rows = predict_files(
            recognizer,
            args.audio,
            batch_size=args.batch_size,
            long_audio=args.long_audio,
            window=args.window,
            hop=args.hop,
            progress=not (args.no_progress or args.quiet),
        )
        if args.output:
            failed = write_rows(rows, args.output, recognizer.class_names)
        else:
            failed = 0
            for row in rows:
                failed += row["status"] != "ok"
                print(json.dumps(row), flush=True)
    if failed:
        print(f"{failed} file(s) could not be predicted (status=error rows)", file=sys.stderr)
        sys.exit(FILES_FAILED)


if __name__ == "__main__":
    main()
