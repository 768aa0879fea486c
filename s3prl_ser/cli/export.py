"""``python -m s3prl_ser.export RUN -o MODEL_DIR``: a self-contained model directory from a trained run.

``RUN`` is a fold directory, or a cross-validation directory with ``--fold FOLD``, ``--ensemble``
or ``--deploy`` (the deployment model in ``RUN/deploy``, trained on every utterance by
``python -m s3prl_ser.cli.cross_validate ... --deploy``; it has no held-out score, and none is
recorded). ``--onnx`` adds ``model.onnx``; ``--push-to-hub USER/NAME`` then uploads the
directory as a Hugging Face Hub model repo (needs network and a token). See
:mod:`s3prl_ser.inference.export`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from s3prl_ser.cli.errors import EXPECTED_ERRORS, exit_on_error
from s3prl_ser.cli.logs import add_verbosity_options, setup_logging
from s3prl_ser.inference.export import export_run
from s3prl_ser.inference.publish import push_model_dir

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m s3prl_ser.export", description="Export a trained run as a self-contained model directory."
    )
    parser.add_argument("run", type=Path, help="a fold directory, a deployment run, or a cross-validation directory")
    parser.add_argument("-o", "--output", type=Path, required=True, help="model directory to write")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--fold", help="the fold whose reported model to export (cross-validation directory)")
    source.add_argument("--ensemble", action="store_true", help="every finished fold, probabilities averaged")
    source.add_argument(
        "--deploy",
        action="store_true",
        help="the deployment model (RUN/deploy, from cross_validate --deploy): trained on every utterance "
        "of the corpus with the folds' schedule; it has no held-out score",
    )
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    parser.add_argument("--title", help="model card title (default: the run directory's name)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the directory to this Hugging Face Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    add_verbosity_options(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    with exit_on_error(*EXPECTED_ERRORS, FileExistsError):  # -o names an existing directory
        out = export_run(
            args.run,
            args.output,
            fold=args.fold,
            ensemble=args.ensemble,
            deploy=args.deploy,
            onnx=args.onnx,
            overwrite=args.overwrite,
            title=args.title,
        )
        print(f"wrote {out}")
        if args.push_to_hub:
            print(f"uploaded to {push_model_dir(out, args.push_to_hub, private=args.private)}")


if __name__ == "__main__":
    main()
