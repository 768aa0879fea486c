"""``python -m s3prl_ser.inference MODEL AUDIO|DIR|LIST... [--output results.csv|.jsonl]``.

(``python -m s3prl_ser.cli.inference`` is the same command.) ``MODEL`` is a model directory
(``python -m s3prl_ser.export``), a run's fold directory or a runner checkpoint; inputs are
audio files, folders (searched recursively by audio extension) and list files (``.txt``,
``.lst``, ``.scp``: one path a line). Without ``--output`` rows are printed as JSON lines.

``--embeddings OUT.npy`` also writes the utterance embeddings: a float32 ``(n, E)`` array, one
row per file predicted whole (see ``EmotionRecognizer.embeddings`` for ``E``), and ``OUT.npy.json``
with ``rows`` (``{"row": i, "file": path}``) and ``excluded`` (``{"file", "reason"}``: error rows,
and files longer than ``--long-audio``, which are read in windows).

``--classes neu,ang`` keeps only these classes: their probabilities divided by their sum, the
label the most probable of them (windows and summaries too). ``--top-k K`` adds a ``top_k`` field
to each JSON row (``[{"label", "score"}]``, highest first) and ``top1_label, top1_score, ...,
topK_score`` columns to a CSV.

``--segments vad`` cuts files longer than ``--long-audio`` where the speech is (silero-vad, the
``vad`` extra): a ``speech`` row per segment of at most ``--window`` s and a ``silence`` row per
gap, then the summary (:mod:`s3prl_ser.inference.speech_segments`); ``fixed`` windows are the default.

Rows are written as they are done (a batch of files, a batch of a long file's windows), each
write appended whole and synced, so a killed run's ``--output`` holds the rows done so far;
``--resume`` keeps them and predicts only the files not finished in it (see ``RowWriter``).

``--plot FILE.png`` draws one long file's windows: class probabilities over time, silent
windows hatched, the summary in the title and legend (``long_audio_plot.plot_windows``).

A model trained with attributes adds ``attributes`` (``{name: value}`` on the corpus's scale) to
each JSON row and one column per attribute to a CSV; a model of attributes only has no label.

``-`` reads one audio file's bytes from stdin (any format a file may have); its rows name it ``-``.
URLs are refused: audio is read from local files only.

Exit status: 0 when every file was predicted, 1 on an error before any file (no such model),
2 on bad arguments, 3 when some files gave error rows (the others are still written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s3prl_ser.cli.errors import EXPECTED_ERRORS, exit_on_error
from s3prl_ser.cli.logs import add_verbosity_options, setup_logging
from s3prl_ser.fileio import atomic_write, atomic_write_json
from s3prl_ser.inference.files import stream_files
from s3prl_ser.inference.long_audio_plot import plot_windows
from s3prl_ser.inference.postprocess import check_classes
from s3prl_ser.inference.recognizer import EmotionRecognizer
from s3prl_ser.inference.rows import RowWriter
from s3prl_ser.inference.speech_segments import SEGMENTS, VADUnavailableError, default_vad

__all__ = ["FILES_FAILED", "build_parser", "main"]

FILES_FAILED = 3
# The audio argument that reads one file's bytes from stdin, and names its rows.
STDIN = "-"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m s3prl_ser.inference", description="Predict the emotion of audio files, folders and lists."
    )
    parser.add_argument("model", help="model directory, experiment (fold) directory or final checkpoint")
    parser.add_argument(
        "audio", nargs="+", help="audio files, folders (recursive) or list files; - reads one audio file from stdin"
    )
    parser.add_argument("--output", "-O", help="write rows to this .csv or .jsonl file (default: JSON lines on stdout)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows of the files finished in --output and predict only the others (same model and options)",
    )
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
    parser.add_argument(
        "--segments",
        choices=SEGMENTS,
        default="fixed",
        help="how files longer than --long-audio are cut: fixed windows (--window, --hop), or vad: speech segments "
        "of at most --window s and silence rows between (pip install 's3prl-ser[vad]') (default: %(default)s)",
    )
    parser.add_argument(
        "--embeddings",
        metavar="OUT.npy",
        help="also write utterance embeddings: float32 (files, dim) OUT.npy and its row index OUT.npy.json",
    )
    parser.add_argument(
        "--classes",
        metavar="C1,C2,...",
        help="keep only these classes, their probabilities renormalised to sum to 1 (e.g. neu,ang)",
    )
    parser.add_argument(
        "--top-k", type=int, metavar="K", help="add the K most probable classes, highest first, to each row"
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the windows of one long file (one input): class probabilities over time, and the summary",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: %(default)s)"
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="model precision: bfloat16 on CPU or CUDA, float16 on CUDA only (default: %(default)s)",
    )
    parser.add_argument("--quantize", choices=["int8"], help="int8 linear layers of the upstream (CPU, float32)")
    add_verbosity_options(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    # no such model, a bad option value, --segments vad without silero-vad
    with exit_on_error(*EXPECTED_ERRORS, VADUnavailableError), contextlib.ExitStack() as stack:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        if not (args.window > 0 and 0 < args.hop <= args.window):
            raise ValueError(f"need 0 < --hop <= --window, got --window {args.window} --hop {args.hop}")
        if args.embeddings and not args.embeddings.endswith(".npy"):
            raise ValueError(f"--embeddings must end in .npy, got {args.embeddings}")
        if args.top_k is not None and args.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
        if args.resume and not args.output:
            raise ValueError("--resume needs --output, the file whose rows it keeps")
        if args.resume and (args.embeddings or STDIN in args.audio):
            raise ValueError("--resume keeps rows only: not --embeddings (written at the end) nor - (stdin)")
        if args.segments == "vad":
            default_vad()  # without silero-vad or onnxruntime: an error before the model loads
        if args.plot and not (args.plot.endswith(".png") and len(args.audio) == 1):
            raise ValueError(f"--plot takes a .png file and one long audio file, got {args.plot} and {len(args.audio)}")
        recognizer = EmotionRecognizer.from_pretrained(
            args.model, device=args.device, dtype=args.dtype, quantize=args.quantize
        )
        classes = None
        if args.classes is not None:
            classes = check_classes(recognizer.class_names, [c.strip() for c in args.classes.split(",")])
        writer = None
        if args.output:
            columns = (classes or recognizer.class_names, args.top_k or 0)
            names = recognizer.attribute_names
            writer = stack.enter_context(RowWriter(args.output, *columns, attribute_names=names, resume=args.resume))
        stdin = _read_stdin(stack) if STDIN in args.audio else None
        chunks = stream_files(
            recognizer,
            [stdin if item == STDIN else item for item in args.audio],
            batch_size=args.batch_size,
            long_audio=args.long_audio,
            window=args.window,
            hop=args.hop,
            segments=args.segments,
            progress=not (args.no_progress or args.quiet),
            embeddings=bool(args.embeddings),
            classes=classes,
            top_k=args.top_k,
            skip=writer.finished if writer else None,
        )
        embedded: list[tuple[str, list[float]]] = []
        excluded: list[dict[str, str]] = []
        failed = 0
        plotted: list[dict[str, Any]] = []
        for rows in chunks:
            if stdin is not None:
                rows = list(_name_stdin(rows, stdin))
            if args.embeddings:
                rows = list(_take_embeddings(rows, embedded, excluded, args.long_audio))
            if args.plot:
                plotted += rows
            if writer is not None:
                writer.write(rows)
                continue
            for row in rows:
                failed += row["status"] != "ok"
                print(json.dumps(row), flush=True)
        if writer is not None:
            failed = writer.failed  # the kept rows' errors too
        if args.plot and not plotted:
            print(f"no plot: {args.audio[0]} is finished in {args.output} (--resume)", file=sys.stderr)
        elif args.plot and not failed:  # failed: its error row, and exit status 3
            plot_windows(plotted, args.plot)
        if args.embeddings:
            _write_embeddings(Path(args.embeddings), embedded, excluded, recognizer.embedding_dim)
    if failed:
        print(f"{failed} file(s) could not be predicted (status=error rows)", file=sys.stderr)
        sys.exit(FILES_FAILED)


def _read_stdin(stack: contextlib.ExitStack) -> Path:
    """Copy stdin's bytes to a temporary file (removed when ``stack`` closes) that the file
    readers take as any other: its format from its content, long audio read in windows."""
    if sys.stdin is None or sys.stdin.isatty():
        raise ValueError("- reads audio from stdin, but stdin is a terminal: pipe a file in (... - < speech.wav)")
    path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "stdin"
    with open(path, "wb") as handle:
        shutil.copyfileobj(sys.stdin.buffer, handle)
    return path


def _name_stdin(rows: Iterable[dict[str, Any]], path: Path) -> Iterator[dict[str, Any]]:
    """Pass ``rows`` on, naming the temporary copy of stdin ``-`` (its file column and errors)."""
    for row in rows:
        if row["file"] == str(path):
            row["file"] = STDIN
            if row.get("error"):
                row["error"] = row["error"].replace(str(path), STDIN)
        yield row


def _take_embeddings(
    rows: Iterable[dict[str, Any]],
    embedded: list[tuple[str, list[float]]],
    excluded: list[dict[str, str]],
    long_audio: float,
) -> Iterator[dict[str, Any]]:
    """Pass ``rows`` on without their ``embedding``, collecting it (or why a file has none)."""
    for row in rows:
        if "embedding" in row:
            embedded.append((row["file"], row.pop("embedding")))
        elif row["status"] != "ok":
            excluded.append({"file": row["file"], "reason": row["error"]})
        elif row["segment"] == "summary":
            excluded.append(
                {"file": row["file"], "reason": f"longer than --long-audio {long_audio} s: read in windows"}
            )
        yield row


def _write_embeddings(
    path: Path, embedded: list[tuple[str, list[float]]], excluded: list[dict[str, str]], dim: int
) -> None:
    """``path``: float32 ``(n, dim)``, row i the embedding of ``embedded[i]``'s file; ``path.json``: the index."""
    array = np.asarray([vector for _, vector in embedded], dtype=np.float32).reshape(len(embedded), dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: np.save(handle, array))
    index = {
        "shape": list(array.shape),
        "rows": [{"row": i, "file": file} for i, (file, _) in enumerate(embedded)],
        "excluded": excluded,
    }
    atomic_write_json(path.with_name(path.name + ".json"), index, indent=1)


if __name__ == "__main__":
    main()
