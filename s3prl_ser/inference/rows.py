"""Result rows of file and window prediction, and writing them as CSV or JSON lines.

A row holds ``file``, ``segment`` (``file``, ``window``, ``speech``, ``silence`` or ``summary``), ``start``, ``end``,
``duration`` (seconds), ``status`` (``ok`` or ``error``), ``silence`` (the audio's RMS level is
below :data:`~s3prl_ser.data.audio.SILENCE_DBFS`: do not read an emotion into its label),
``error`` (the message), ``label`` and ``probabilities`` (``{class: p}``; empty, and no label,
for an error, a ``silence`` row between speech segments and the summary of a file without speech,
and for a model of attributes only), and for a model trained with attributes ``attributes``
(``{name: value}`` on the corpus's scale; absent where there are no probabilities). CSV: one
``p_<class>`` column per class, one column per attribute (its name).
Every prediction the project prints or writes goes through :func:`prediction_row`: the files
and long-audio rows here, and s3prl's ``run_downstream.py -m inference`` line.

:class:`RowWriter` writes rows as they are done, a batch at a time, each batch's lines durable
before the next is predicted, and resumes a killed run's output: a file's rows are complete once
its last row (a segment of :data:`FINAL_SEGMENTS`) is written.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from s3prl_ser.fileio import atomic_write_bytes

__all__ = [
    "FINAL_SEGMENTS",
    "RowWriter",
    "prediction_row",
    "error_row",
    "csv_columns",
    "csv_cell",
    "write_rows",
]

logger = logging.getLogger(__name__)

# The segments that end a file's rows: its one ``file`` row (``ok`` or ``error``), or the
# ``summary`` after its windows. A file without one in an output was cut short by a kill.
FINAL_SEGMENTS = frozenset({"file", "summary"})


def prediction_row(
    class_names: Sequence[str], probabilities: torch.Tensor, attribute_names: Sequence[str] = (), **fields: Any
) -> dict[str, Any]:
    """A result row: ``fields`` + ``label`` + ``probabilities`` (``(C,)`` -> ``{class: p}``); with
    ``attribute_names``, ``probabilities`` is ``(C + A,)`` (a recognizer's ``predictions``) and the
    row also gets ``attributes`` (``{name: value}``; no label without classes).

    Example:
        >>> prediction_row(["neu", "ang"], torch.tensor([0.25, 0.75]), file="a.wav")
        {'file': 'a.wav', 'label': 'ang', 'probabilities': {'neu': 0.25, 'ang': 0.75}}
        >>> prediction_row([], torch.tensor([3.5]), ["arousal"], file="a.wav")
        {'file': 'a.wav', 'label': None, 'probabilities': {}, 'attributes': {'arousal': 3.5}}
    """
    classes = probabilities[: len(class_names)]
    row = {
        **fields,
        "label": class_names[int(classes.argmax())] if class_names else None,
        "probabilities": {c: float(p) for c, p in zip(class_names, classes)},
    }
    if attribute_names:
        row["attributes"] = {a: float(v) for a, v in zip(attribute_names, probabilities[len(class_names) :])}
    return row


def error_row(path: Path, message: str, duration: float | None = None) -> dict[str, Any]:
    """The one row of a file that could not be predicted (``message`` says why)."""
    return {
        "file": str(path),
        "segment": "file",
        "start": None,
        "end": None,
        "duration": duration,
        "status": "error",
        "silence": None,
        "error": message,
        "label": None,
        "probabilities": {},
    }


def csv_columns(class_names: Sequence[str], top_k: int = 0, attribute_names: Sequence[str] = ()) -> list[str]:
    """CSV header: the row fields, then one probability column per class (``p_<class>``), one
    value column per attribute (its name), then ``top<i>_label`` and ``top<i>_score`` for
    i = 1..``top_k``; every cell written passes :func:`csv_cell`.

    Raises:
        ValueError: an attribute named as another column (``label``, ``p_ang``, ...).
    """
    fields = [
        "file",
        "segment",
        "start",
        "end",
        "duration",
        "status",
        "silence",
        "label",
        *[f"p_{c}" for c in class_names],
    ]
    clashes = [a for a in attribute_names if a in (*fields, "error") or re.fullmatch(r"top\d+_(label|score)", a)]
    if clashes:
        raise ValueError(f"attribute(s) {', '.join(clashes)} would name a column the rows have already")
    tops = [f"top{i}_{field}" for i in range(1, top_k + 1) for field in ("label", "score")]
    return [*fields, *attribute_names, *tops, "error"]


def _flat(row: dict[str, Any], class_names: Sequence[str], attribute_names: Sequence[str] = ()) -> dict[str, Any]:
    flat = {k: v for k, v in row.items() if k not in ("probabilities", "top_k", "attributes")}
    for i, entry in enumerate(row.get("top_k", []), start=1):
        flat[f"top{i}_label"], flat[f"top{i}_score"] = entry["label"], f"{entry['score']:.6f}"
    for c in class_names:
        value = row["probabilities"].get(c)
        flat[f"p_{c}"] = "" if value is None else f"{value:.6f}"
    for a in attribute_names:
        value = row.get("attributes", {}).get(a)
        flat[a] = "" if value is None else f"{value:.6f}"
    for key in ("start", "end", "duration"):
        flat[key] = "" if flat.get(key) is None else f"{flat[key]:.3f}"
    flat["label"] = flat.get("label") or ""
    flat["silence"] = {True: "true", False: "false"}.get(flat.get("silence"), "")
    return flat


def csv_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet reads as a formula: text starting with ``=``, ``+``, ``-``,
    ``@``, a tab or a carriage return (a file or label name) gets a leading ``'``; so does text
    starting with ``'``, so that the cell names its text exactly (drop one leading ``'`` to read it).

    Example:
        >>> [csv_cell(v) for v in ("=HYPERLINK(1)", "-x.wav", "'=a.wav", "ang", 0.5)]
        ["'=HYPERLINK(1)", "'-x.wav", "''=a.wav", 'ang', 0.5]
    """
    return f"'{value}" if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r", "'")) else value


def write_rows(
    rows: Iterable[dict[str, Any]],
    output: str | os.PathLike,
    class_names: Sequence[str],
    top_k: int = 0,
    attribute_names: Sequence[str] = (),
) -> int:
    """Write rows to a new ``output`` (``.csv`` or ``.jsonl``), a line at a time as ``rows``
    gives them (see :class:`RowWriter`); return how many had errors.
    ``top_k``: the CSV's ``top<i>_label``/``top<i>_score`` columns (rows' ``top_k`` fields);
    ``attribute_names``: its attribute columns (rows' ``attributes``).

    Raises:
        ValueError: another extension.
    """
    with RowWriter(output, class_names, top_k, attribute_names=attribute_names) as writer:
        for row in rows:
            writer.write([row])
    return writer.failed


class RowWriter:
    """Rows appended to a ``.csv`` or ``.jsonl`` file as they are done; a killed run leaves every
    row written before the kill.

    Each :meth:`write` appends its rows' complete lines (a file's row, a batch's rows) with one
    ``os.write``, then ``fsync``s them: the file grows a batch at a time, and what a batch wrote is
    on disk before the next is predicted. A new output appears whole (its CSV header, or an empty
    JSONL file, renamed into place), replacing any earlier file. A kill inside a write's system
    call can leave a last line without its line end (readers of a live file may see one too);
    ``resume`` drops it.

    ``resume=True`` keeps an existing output's rows (none yet: a new file): those of the files
    whose rows end with a segment of :data:`FINAL_SEGMENTS`; the rows of a file cut short (windows
    without a summary) and a cut last line are removed (the kept rows renamed into place), and
    :meth:`finished` names the kept files, which the run then skips. ``failed`` counts error rows,
    the kept ones included.

    ``attribute_names``: the model's attributes (a CSV column each, rows' ``attributes``).

    Raises:
        ValueError: ``output`` does not end in ``.csv`` or ``.jsonl``; with ``resume``, the existing
            output's columns (CSV) or rows' classes, attributes and ``top_k`` field (JSONL) are not
            this run's, or a line is not a row of this format (the message names the file and line).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "rows.jsonl"
        >>> row = {"file": "a.wav", "segment": "file", "status": "ok", "probabilities": {"neu": 0.25, "ang": 0.75}}
        >>> with RowWriter(out, ["neu", "ang"]) as writer:
        ...     writer.write([row])
        >>> with RowWriter(out, ["neu", "ang"], resume=True) as writer:
        ...     writer.finished("a.wav"), writer.finished("b.wav")
        (True, False)
    """

    def __init__(
        self,
        output: str | os.PathLike,
        class_names: Sequence[str],
        top_k: int = 0,
        *,
        attribute_names: Sequence[str] = (),
        resume: bool = False,
    ) -> None:
        self.path = Path(output)
        self.format = self.path.suffix.lower()
        if self.format not in (".csv", ".jsonl"):
            raise ValueError(f"{self.path}: the output must end in .csv or .jsonl")
        self.class_names = list(class_names)
        self.attribute_names = list(attribute_names)
        self.top_k = top_k
        self.columns = csv_columns(class_names, top_k, attribute_names)
        self.failed = 0
        self._finished: set[str] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = self._resume() if resume and self.path.is_file() else None
        if kept is None:
            atomic_write_bytes(self.path, self._header())
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def finished(self, file: str) -> bool:
        """Whether ``file`` (a row's ``file``) has all its rows in the resumed output."""
        return (csv_cell(file) if self.format == ".csv" else file) in self._finished

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append ``rows`` (complete lines, one system call) and make them durable."""
        if not rows:
            return
        self.failed += sum(row["status"] != "ok" for row in rows)
        data = self._lines(rows)
        while data:  # a regular file takes it all in one call, unless the disk is full (OSError)
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file (every :meth:`write` is on disk already)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _header(self) -> bytes:
        return self._csv_lines([self.columns]) if self.format == ".csv" else b""

    def _lines(self, rows: Sequence[dict[str, Any]]) -> bytes:
        if self.format == ".jsonl":
            return "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8")
        flat = [_flat(row, self.class_names, self.attribute_names) for row in rows]
        return self._csv_lines([[csv_cell(row.get(column, "")) for column in self.columns] for row in flat])

    @staticmethod
    def _csv_lines(records: Iterable[Sequence[Any]]) -> bytes:
        text = io.StringIO()
        csv.writer(text, lineterminator="\r\n").writerows(records)
        return text.getvalue().encode("utf-8")

    def _resume(self) -> bytes | None:
        """Keep the finished files' rows of the existing output (see the class docstring);
        ``None`` if it holds no line."""
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]  # a last line without its end was cut by a kill
        try:
            text = whole.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{self.path}: not a UTF-8 text file of rows ({error})") from error
        if not text:
            return None
        rows = self._read_csv(text) if self.format == ".csv" else self._read_jsonl(text)
        self._finished = {row["file"] for _, row in rows if row["segment"] in FINAL_SEGMENTS}
        kept = [(line, row) for line, row in rows if row["file"] in self._finished]
        self.failed = sum(row["status"] != "ok" for _, row in kept)
        content = self._header() + b"".join(line for line, _ in kept)
        if content != data:
            atomic_write_bytes(self.path, content)
        logger.info(
            "%s: resuming with the rows of %d finished file(s); %d row(s) of files cut short and %d cut byte(s) dropped",
            self.path,
            len(self._finished),
            len(rows) - len(kept),
            len(data) - len(whole),
        )
        return content

    def _read_csv(self, text: str) -> list[tuple[bytes, dict[str, str]]]:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header = next(reader)
        if header != self.columns:
            missing = [c for c in self.columns if c not in header]
            extra = [c for c in header if c not in self.columns]
            raise ValueError(
                f"{self.path}: its columns are not this run's (missing: {', '.join(missing) or '-'}; "
                f"not expected: {', '.join(extra) or '-'}, or another order): --resume needs the same "
                "model classes and attributes, --classes and --top-k; or write to a new --output"
            )
        rows = []
        while True:
            line = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                return rows
            except csv.Error as error:
                if str(error) == "unexpected end of data":  # a last row cut inside a quoted cell
                    return rows
                raise ValueError(f"{self.path}: line {line}: not a CSV row ({error})") from error
            if len(record) != len(header):
                raise ValueError(f"{self.path}: line {line}: {len(record)} cells, the header has {len(header)}")
            rows.append((self._csv_lines([record]), dict(zip(header, record))))

    def _read_jsonl(self, text: str) -> list[tuple[bytes, dict[str, Any]]]:
        rows = []
        expected_top = min(self.top_k, len(self.class_names))
        for number, line in enumerate((line + "\n" for line in text.split("\n")[:-1]), 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.path}: line {number}: not a JSON row ({error})") from error
            if not (isinstance(row, dict) and {"file", "segment", "status", "probabilities"} <= row.keys()):
                raise ValueError(f"{self.path}: line {number}: not a row (file, segment, status, probabilities)")
            predicted = bool(row["probabilities"])  # not an error, nor silence between speech segments
            if predicted and list(row["probabilities"]) != self.class_names:
                raise ValueError(
                    f"{self.path}: line {number}: its classes {', '.join(row['probabilities'])} are not this run's "
                    f"({', '.join(self.class_names)}): --resume needs the same model and --classes"
                )
            if (predicted or "attributes" in row) and list(row.get("attributes", [])) != self.attribute_names:
                raise ValueError(
                    f"{self.path}: line {number}: its attributes {', '.join(row['attributes']) or '-'} are not this "
                    f"run's ({', '.join(self.attribute_names) or '-'}): --resume needs the same model"
                )
            if ("top_k" in row) != (self.top_k > 0) or (predicted and self.top_k and len(row["top_k"]) != expected_top):
                raise ValueError(f"{self.path}: line {number}: its top_k field is not this run's --top-k {self.top_k}")
            rows.append((line.encode("utf-8"), row))
        return rows
