"""``python -m s3prl_ser.cli.builtin_corpus [ROOT]``: generate (or find) the built-in corpus.

Prints where it is and its label counts per session (:mod:`s3prl_ser.toy.builtin_corpus`);
``--msp-podcast-layout OUT`` also lays it out as an MSP-Podcast release at OUT.
"""

from __future__ import annotations

import argparse
import pathlib
import time

from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.cli.logs import add_verbosity_options, setup_logging
from s3prl_ser.toy.builtin_corpus import (
    LABELS,
    BuiltinCorpusError,
    default_corpus_dir,
    generate_corpus,
    load_manifest,
    write_msp_podcast_layout,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """``python -m s3prl_ser.cli.builtin_corpus``'s command line."""
    parser = argparse.ArgumentParser(
        prog="python -m s3prl_ser.cli.builtin_corpus",
        description="Generate the deterministic synthetic emotional speech corpus in IEMOCAP's raw layout.",
    )
    parser.add_argument(
        "root",
        nargs="?",
        type=pathlib.Path,
        default=default_corpus_dir(),
        help="output directory (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default: %(default)s)")
    parser.add_argument(
        "--utterances-per-speaker", type=int, default=28, help="utterances per speaker (default: %(default)s)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace whatever is at ROOT")
    parser.add_argument(
        "--msp-podcast-layout",
        type=pathlib.Path,
        metavar="OUT",
        help="also write the corpus as an MSP-Podcast release at OUT (Audios/, Labels/labels_consensus.csv "
        "with EmoAct/EmoVal/EmoDom on 1-7, speaker-disjoint Train/Development/Test1)",
    )
    add_verbosity_options(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args)

    started = time.perf_counter()
    with exit_on_error(BuiltinCorpusError, ValueError):
        root = generate_corpus(
            args.root,
            seed=args.seed,
            utterances_per_speaker=args.utterances_per_speaker,
            overwrite=args.overwrite,
        )
        if args.msp_podcast_layout is not None:
            write_msp_podcast_layout(root, args.msp_podcast_layout)
    manifest = load_manifest(root)
    print(
        f"Corpus at {root} ({manifest['n_utterances']} utterances, "
        f"{manifest['total_seconds'] / 60:.1f} min; {time.perf_counter() - started:.1f} s)"
    )
    print(f"{'':10}" + "".join(f"{label:>6}" for label in LABELS) + f"{'total':>7}")
    for session, row in manifest["counts"].items():
        cells = "".join(f"{row.get(label, 0):6d}" for label in LABELS)
        print(f"{session:10}{cells}{sum(row.values()):7d}")
    if args.msp_podcast_layout is not None:
        print(f"MSP-Podcast layout at {args.msp_podcast_layout}")


if __name__ == "__main__":
    main()
