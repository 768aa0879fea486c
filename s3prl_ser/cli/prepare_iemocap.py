"""``python -m s3prl_ser.cli.prepare_iemocap IEMOCAP_ROOT --out META_DIR``: IEMOCAP's fold meta data.

Writes what :func:`s3prl_ser.data.corpora.iemocap.prepare` writes and prints a per-fold,
per-class count table.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.data.corpora.iemocap import LABELS, Utterance, prepare

__all__ = ["count_table", "main"]


def count_table(per_session: dict[str, list[Utterance]]) -> str:
    """Utterances per class for each fold's train and test split, and over the whole corpus."""
    header = f"{'fold':<7}{'split':<7}" + "".join(f"{label:>7}" for label in LABELS) + f"{'total':>8}"
    lines = [header, "-" * len(header)]
    for index, session in enumerate(per_session, start=1):
        for split in ("train", "test"):
            items = [u for s, us in per_session.items() if (s == session) == (split == "test") for u in us]
            counts = Counter(u.label for u in items)
            lines.append(
                f"{'fold' + str(index):<7}{split:<7}"
                + "".join(f"{counts[label]:>7}" for label in LABELS)
                + f"{len(items):>8}"
            )
    everything = Counter(u.label for us in per_session.values() for u in us)
    total = sum(everything.values())
    lines.append(f"{'all':<14}" + "".join(f"{everything[label]:>7}" for label in LABELS) + f"{total:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m s3prl_ser.cli.prepare_iemocap",
        description="Write s3prl emotion meta data (leave-one-session-out folds) for IEMOCAP.",
    )
    parser.add_argument("root", type=Path, help="IEMOCAP release root (contains Session1..5)")
    parser.add_argument("--out", type=Path, required=True, help="output META_DIR")
    parser.add_argument("--sessions", default="1,2,3,4,5", help="comma-separated session numbers")
    parser.add_argument(
        "--file-order",
        choices=["sorted", "listdir"],
        default="sorted",
        help="label-file order; 'listdir' reproduces stock s3prl on this machine",
    )
    args = parser.parse_args(argv)
    with exit_on_error():  # PreparationError is a ValueError
        sessions = [int(s) for s in args.sessions.split(",")]
        per_session = prepare(args.root, args.out, sessions=sessions, order=args.file_order)
    print(count_table(per_session))
    print(f"meta data written to {args.out}")


if __name__ == "__main__":
    main()
