"""``python -m s3prl_ser.cli.demo``: the main job on the built-in data (corpus -> meta data -> 5-fold
emotion_ecapa -> results).

    python -m s3prl_ser.cli.demo [--out result/demo] [--pipeline fbank|finetune|table1]

What each pipeline runs and reports: :mod:`s3prl_ser.experiments.main_job`. Re-running resumes:
finished folds are reused, a killed fold continues from its checkpoint.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from s3prl_ser.cli.errors import EXPECTED_ERRORS, exit_on_error
from s3prl_ser.cli.logs import add_verbosity_options, setup_logging
from s3prl_ser.experiments.main_job import MAIN_JOB_SEEDS, PIPELINES, MainJob, main_job_seeds, run_main_job
from s3prl_ser.toy.builtin_corpus import BuiltinCorpusError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """``python -m s3prl_ser.cli.demo``'s command line."""
    parser = argparse.ArgumentParser(prog="python -m s3prl_ser.cli.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("result/demo"), help="output directory (default: %(default)s)")
    parser.add_argument("--corpus", type=Path, default=None, help="built-in corpus location (default: cache)")
    parser.add_argument(
        "--folds", default="fold1,fold2,fold3,fold4,fold5", help="comma-separated folds (default: %(default)s)"
    )
    parser.add_argument("--pipeline", choices=PIPELINES, default="fbank", help="what to run (default: %(default)s)")
    parser.add_argument(
        "--steps", type=int, default=150, help="training steps per stage (table1 only; default: %(default)s)"
    )
    parser.add_argument(
        "--seeds",
        help="training seeds: fbank runs the cross-validation once per seed and reports the mean over seeds "
        f"(default {','.join(map(str, MAIN_JOB_SEEDS))}); finetune takes one (default: each command's own)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="single-thread processes training folds at once (default: this machine's cores); "
        "the results do not depend on it",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    add_verbosity_options(parser)
    return parser


@exit_on_error(BuiltinCorpusError, *EXPECTED_ERRORS)  # e.g. espeak-ng missing, a bad --folds
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    job = MainJob(
        out=args.out,
        pipeline=args.pipeline,
        seeds=tuple(main_job_seeds(args.seeds, args.pipeline)),  # refused before the corpus is generated
        workers=args.workers,
        corpus=args.corpus,
        folds=tuple(args.folds.split(",")),
        steps=args.steps,
        device=args.device,
    )
    result = run_main_job(job)
    if result is not None:
        print(f"[demo] - {result.headline}")
        print(f"[demo] - results: {result.results}")


if __name__ == "__main__":
    main()
