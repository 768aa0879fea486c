"""``s3prl-ser SUBCOMMAND ARGS...``: the installed command, one subcommand per program of :mod:`s3prl_ser.cli`.

``s3prl-ser cv ARGS...`` runs exactly ``python -m s3prl_ser.cli.cross_validate ARGS...``: the
arguments after the subcommand go unchanged to that module's ``main(argv)``, so
``s3prl-ser cv --help`` is the module's own help. A subcommand's module is imported only when
it runs: ``s3prl-ser --help`` loads no s3prl, model or data code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import s3prl_ser

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

# Subcommand -> (module under s3prl_ser.cli, one-line summary for `s3prl-ser --help`). The
# summaries are written here rather than read from the modules so that listing them imports none.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "the main job on the built-in corpus, end to end"),
    "train": ("run_downstream", "train, evaluate or infer one run (s3prl's run_downstream.py)"),
    "cv": ("cross_validate", "cross-validate over a corpus's folds, write the results"),
    "finetune": ("finetune", "stage 1: fine-tune and average an upstream per fold"),
    "table1": ("table1", "the paper's Table 1 (experiments 1-11)"),
    "average": ("average_checkpoints", "average checkpoints into one (paper 2.3)"),
    "export": ("export", "export a trained run as a model directory (and ONNX)"),
    "score": ("score", "score a model on any prepared corpus through a label map"),
    "cross-corpus": ("cross_corpus", "train on each of N corpora, score on every other: the matrix"),
    "infer": ("inference", "predict the emotion of audio files with a model directory"),
    "prepare": ("prepare_corpus", "a corpus's manifest and folds (IEMOCAP, CREMA-D, ...)"),
    "prepare-iemocap": ("prepare_iemocap", "s3prl's emotion meta data for IEMOCAP (session folds)"),
    "builtin-corpus": ("builtin_corpus", "generate the built-in synthetic corpus (IEMOCAP layout)"),
    "tiny-upstream": ("tiny_upstream", "write a tiny random-init HuBERT / wav2vec 2.0 checkpoint"),
    "tiny-bert": ("tiny_bert", "write a tiny random-init BERT"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: ``--help`` lists the subcommands; their own options are theirs."""
    listing = "\n".join(f"  {name:<17}{summary}" for name, (_, summary) in SUBCOMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="s3prl-ser",
        description="Speech emotion recognition on s3prl upstreams: ECAPA-TDNN downstream, fusion,\n"
        "fine-tuning, checkpoint averaging, self-contained model directories.",
        epilog=f"subcommands:\n{listing}",
        # The listing is laid out above: argparse's own subcommand list wraps every long name.
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {s3prl_ser.__version__}")
    parser.add_argument("subcommand", metavar="SUBCOMMAND", help="one of those below")
    parser.add_argument(
        "args",
        metavar="ARGS",
        nargs="*",
        default=[],
        help="the subcommand's arguments; `s3prl-ser SUBCOMMAND --help` lists them",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``s3prl_ser.cli.<module>.main(ARGS)`` for ``argv = [SUBCOMMAND, *ARGS]``.

    Args:
        argv: the command line without the program name (default ``sys.argv[1:]``).

    Raises:
        SystemExit: from ``--help``/``--version``, a missing or unknown subcommand (status 2), or
            the subcommand itself.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv)  # --help and --version exit here, anything else is a usage error
        parser.error("the subcommand comes first: s3prl-ser SUBCOMMAND [ARGS...]")
    name, args = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        parser.error(f"unknown subcommand {name!r} (choose from {', '.join(SUBCOMMANDS)})")
    module = importlib.import_module(f"s3prl_ser.cli.{SUBCOMMANDS[name][0]}")
    module.main(args)  # what a subcommand returns (finetune: its summary) is not an exit status


if __name__ == "__main__":
    main()
