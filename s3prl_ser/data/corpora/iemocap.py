"""Prepare IEMOCAP's leave-one-session-out meta data, as s3prl's ``IEMOCAP_preprocess.py``.

Command line: ``python -m s3prl_ser.cli.prepare_iemocap IEMOCAP_ROOT --out META_DIR``
(:mod:`s3prl_ser.cli.prepare_iemocap`). :func:`prepare` reads the raw release layout::

    IEMOCAP_ROOT/SessionN/dialog/EmoEvaluation/<dialog>.txt     utterance labels
    IEMOCAP_ROOT/SessionN/dialog/transcriptions/<dialog>.txt    transcripts
    IEMOCAP_ROOT/SessionN/sentences/wav/<dialog>/<utt>.wav      audio

and writes, for each session N, ``META_DIR/SessionN/{train,test}_meta_data.json`` in the
schema of s3prl's emotion downstream, plus ``META_DIR/transcripts.json`` (utterance -> text).

Each item also carries its continuous ``attributes`` (arousal, valence, dominance on IEMOCAP's
1-5 scale, declared as the top-level ``attribute_scale``; :mod:`s3prl_ser.data.attributes`):
by default the ``[V, A, D]`` triple of the turn's summary line (valence, activation = arousal,
dominance); with ``attributes="evaluators"`` the mean of the external evaluators' ``A-E<n>:``
lines (``val 3; act 2; dom  2;``; an evaluator's empty value is left out of that mean; the
actors' self-assessment lines, ``A-F<n>``/``A-M<n>``, are not used). Stock s3prl reads only
``labels`` and ``path``/``label``, so these extra keys are harmless to it.

Selection is SUPERB's, written as label rules (:data:`LABEL_RULES`,
:class:`~s3prl_ser.data.manifest.LabelRules`): merge exc into hap, drop every other label than
neu/hap/ang/sad, and drop utterances without audio. Paths are relative to IEMOCAP_ROOT;
``speaker`` is the file-name prefix (the dialog owner), exactly as s3prl writes it.

Order matters, because the SUPERB dev split is a seeded permutation of the train list.
s3prl visits sessions in sorted order but label files in ``os.listdir`` order, which depends
on the file system. The default here sorts label files, so the output is the same on every
machine; ``--file-order listdir`` reproduces the JSON stock s3prl writes on this machine.
To reuse the meta data of an existing SUPERB run, point the downstream at that JSON instead.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from s3prl_ser.data.attributes import DEFAULT_ATTRIBUTES, attribute_summary
from s3prl_ser.data.corpora.common import PreparationError
from s3prl_ser.data.manifest import LabelRules
from s3prl_ser.fileio import atomic_write_json

__all__ = [
    "LABELS",
    "IEMOCAP_CODES",
    "LABEL_RULES",
    "ATTRIBUTE_SCALE",
    "ATTRIBUTE_SOURCES",
    "Turn",
    "Utterance",
    "PreparationError",
    "read_label_file",
    "read_transcripts",
    "collect_session",
    "count_table",
    "prepare",
]

LABELS = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
IEMOCAP_CODES = frozenset({"neu", "hap", "exc", "ang", "sad", "fru", "sur", "fea", "dis", "oth", "xxx"})
# SUPERB's selection: exc counts as hap; the other codes are left out.
LABEL_RULES = LabelRules(merge={"exc": "hap"}, drop=("fru", "sur", "fea", "dis", "oth", "xxx"))
_TRANSCRIPT_LINE = re.compile(r"^(\S+)\s+\[[^\]]*\]:\s?(.*)$")
_NUMBER = r"\s*(-?[0-9]+(?:\.[0-9]*)?)\s*"
_TRIPLE = re.compile(rf"^\[{_NUMBER},{_NUMBER},{_NUMBER}\]$")  # [V, A, D]
_EVALUATOR = re.compile(r"^A-E[0-9]+:\s")  # an external evaluator's dimensional ratings
_RATING = re.compile(r"\b(val|act|dom)\s+(-?[0-9.]*)\s*;")
# IEMOCAP's 1-5 scale; the summary triple and the evaluator lines name them valence, activation, dominance.
ATTRIBUTE_SCALE = {name: (1.0, 5.0) for name in DEFAULT_ATTRIBUTES}
_RATED = {"val": "valence", "act": "arousal", "dom": "dominance"}
ATTRIBUTE_SOURCES = ("summary", "evaluators")

FileOrder = Literal["sorted", "listdir"]
AttributeSource = Literal["summary", "evaluators"]


@dataclass(frozen=True)
class Turn:
    """One turn of an ``EmoEvaluation`` file: its name, emotion code, the summary line's
    ``[V, A, D]`` (``summary``: ``{"valence": .., "arousal": .., "dominance": ..}``, None when
    the line has no triple) and each external evaluator's ratings (``evaluators``, the same
    keys, None for an empty value); ``line`` is the summary line's number, for errors."""

    name: str
    code: str
    line: int
    summary: dict[str, float] | None = None
    evaluators: list[dict[str, float | None]] = field(default_factory=list)

    def attributes(self, source: AttributeSource, path: Path) -> dict[str, float | None]:
        """The turn's attributes from ``source`` (module docstring), each checked to lie on
        IEMOCAP's 1-5 scale.

        Raises:
            PreparationError: naming ``path:line``: no triple (``summary``), or a value outside 1-5.
        """
        if source == "summary":
            if self.summary is None:
                raise PreparationError(f"{path}:{self.line}: {self.name} has no [V, A, D] triple on its line")
            values: dict[str, float | None] = dict(self.summary)
        else:
            values = {}
            for name in DEFAULT_ATTRIBUTES:
                given = [rating[name] for rating in self.evaluators if rating.get(name) is not None]
                values[name] = round(sum(given) / len(given), 4) if given else None
        for name, value in values.items():
            lo, hi = ATTRIBUTE_SCALE[name]
            if value is not None and not lo <= value <= hi:
                raise PreparationError(
                    f"{path}:{self.line}: {self.name}'s {name} {value:g} ({source}) is outside IEMOCAP's scale "
                    f"[{lo:g}, {hi:g}]"
                )
        return values


@dataclass(frozen=True)
class Utterance:
    """One kept utterance: ``path`` relative to the corpus root, ``label`` after merging,
    ``attributes`` on the 1-5 scale (None: not asked for)."""

    name: str
    path: str
    label: str
    speaker: str
    attributes: dict[str, float | None] | None = None

    def meta(self) -> dict:
        item: dict = {"path": self.path, "label": self.label, "speaker": self.speaker}
        if self.attributes is not None:
            item["attributes"] = self.attributes
        return item


def _evaluator_ratings(line: str, where: str) -> dict[str, float | None]:
    """``A-E2:\\tval 3; act 2; dom  2;\\t()`` -> ``{"valence": 3.0, "arousal": 2.0, "dominance": 2.0}``."""
    ratings: dict[str, float | None] = {}
    for key, value in _RATING.findall(line):
        try:
            ratings[_RATED[key]] = float(value) if value else None
        except ValueError as error:
            raise PreparationError(f"{where}: cannot read {key} {value!r} in {line.strip()!r}") from error
    return ratings


def read_label_file(path: Path) -> list[Turn]:
    """Every turn of an ``EmoEvaluation`` file: the summary line
    (``[start - end]\\tname\\tcode\\t[v, a, d]``) and the ``A-E<n>:`` evaluator lines after it.

    Raises:
        PreparationError: naming ``path:line``, for a turn line that is malformed, has an
            unknown code, or starts with whitespace (stock s3prl skips such a line silently,
            so accepting it would select other utterances than SUPERB's), or an evaluator
            value that is not a number.
    """
    turns: list[Turn] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.startswith("["):
                if line.lstrip().startswith("["):
                    raise PreparationError(
                        f"{path}:{number}: label line starts with whitespace ({line.strip()!r}); stock s3prl's "
                        "preprocessing would drop this utterance silently: remove the whitespace or the line"
                    )
                if turns and _EVALUATOR.match(line):
                    turns[-1].evaluators.append(_evaluator_ratings(line, f"{path}:{number}"))
                continue
            fields = [f for f in re.split("[\t\n]", line) if f]
            if len(fields) < 3:
                raise PreparationError(f"{path}:{number}: malformed label line {line.strip()!r}")
            name, code = fields[1].strip(), fields[2].strip()
            if code not in IEMOCAP_CODES:
                raise PreparationError(
                    f"{path}:{number}: unknown emotion code {code!r} for {name} "
                    f"(IEMOCAP codes: {', '.join(sorted(IEMOCAP_CODES))})"
                )
            triple = _TRIPLE.match(fields[3].strip()) if len(fields) > 3 else None
            summary = None
            if triple:
                v, a, d = (float(x) for x in triple.groups())
                summary = {"arousal": a, "valence": v, "dominance": d}
            turns.append(Turn(name, code, number, summary))
    return turns


def read_transcripts(session_dir: Path) -> dict[str, str]:
    """Utterance -> transcript from ``dialog/transcriptions/*.txt`` (non-turn lines skipped)."""
    texts: dict[str, str] = {}
    for path in sorted((session_dir / "dialog" / "transcriptions").glob("*.txt")):
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                match = _TRANSCRIPT_LINE.match(line.strip())
                if match:
                    texts[match.group(1)] = match.group(2).strip()
    return texts


def _label_files(label_dir: Path, order: FileOrder) -> list[str]:
    names = [n for n in os.listdir(label_dir) if os.path.splitext(n)[1] == ".txt"]
    return sorted(names) if order == "sorted" else names


def collect_session(
    root: Path, session: str, order: FileOrder = "sorted", attributes: AttributeSource | None = "summary"
) -> list[Utterance]:
    """Kept utterances of one session, in s3prl's order (label files, then lines), with their
    ``attributes`` from that source (None: without attributes)."""
    session_dir = root / session
    label_dir = session_dir / "dialog" / "EmoEvaluation"
    wav_dir = session_dir / "sentences" / "wav"
    for required in (label_dir, wav_dir):
        if not required.is_dir():
            raise PreparationError(f"{required}: directory not found (is {root} an IEMOCAP root?)")
    wavs = {p.stem: p for p in wav_dir.rglob("*.wav")}
    kept: list[Utterance] = []
    missing: list[str] = []
    for name in _label_files(label_dir, order):
        for turn in read_label_file(label_dir / name):
            utterance, label = turn.name, LABEL_RULES.apply(turn.code)
            if label is None:
                continue
            if utterance not in wavs:
                missing.append(f"{utterance} ({label_dir / name})")
                continue
            relative = wavs[utterance].relative_to(root).as_posix()
            values = turn.attributes(attributes, label_dir / name) if attributes else None
            kept.append(Utterance(utterance, relative, label, utterance.split("_")[0], values))
    if missing:
        shown = "; ".join(missing[:5]) + (f"; ... {len(missing) - 5} more" if len(missing) > 5 else "")
        warnings.warn(
            f"{session}: {len(missing)} labelled utterance(s) have no audio and are dropped: {shown}", stacklevel=2
        )
    if not kept:
        raise PreparationError(f"{session_dir}: no utterance with a neu/hap/exc/ang/sad label and audio")
    return kept


def prepare(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sessions: Iterable[int] = (1, 2, 3, 4, 5),
    order: FileOrder = "sorted",
    attributes: AttributeSource | None = "summary",
) -> dict[str, list[Utterance]]:
    """Write every fold's meta data and the transcripts; return the kept utterances by session.

    Fold N (``META_DIR/SessionN``) tests on session N and trains on the others, in session
    order. ``attributes`` is where each item's arousal/valence/dominance come from
    (``summary`` or ``evaluators``, module docstring; None: no attributes, s3prl's JSON exactly).
    Raises :class:`PreparationError` naming the file for missing sessions, malformed
    label lines, unknown codes and attribute values outside 1-5; warns (naming them) about
    labelled utterances without audio.
    """
    if attributes is not None and attributes not in ATTRIBUTE_SOURCES:
        raise PreparationError(f"attributes must be one of {', '.join(ATTRIBUTE_SOURCES)} or None, got {attributes!r}")
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise PreparationError(f"{root}: IEMOCAP root directory not found")
    names = [f"Session{n}" for n in sessions]
    absent = [n for n in names if not (root / n).is_dir()]
    if absent:
        raise PreparationError(
            f"{root}: missing {', '.join(absent)} (found: "
            f"{', '.join(sorted(p.name for p in root.glob('Session*'))) or 'none'})"
        )
    per_session = {name: collect_session(root, name, order, attributes) for name in names}
    scale = {"attribute_scale": {k: list(v) for k, v in ATTRIBUTE_SCALE.items()}} if attributes else {}
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / name).mkdir(exist_ok=True)
        train = [u.meta() for s in names if s != name for u in per_session[s]]
        test = [u.meta() for u in per_session[name]]
        # file_order: stock s3prl reads only labels and meta_data, so the extra key is harmless.
        for split, items in (("train", train), ("test", test)):
            atomic_write_json(
                out / name / f"{split}_meta_data.json",
                {"labels": LABELS, "meta_data": items, "file_order": order, **scale},
            )
    transcripts: dict[str, str] = {}
    for name in names:
        texts = read_transcripts(root / name)
        for utterance in per_session[name]:
            if utterance.name not in texts:
                warnings.warn(f"{root / name}/dialog/transcriptions: no transcript for {utterance.name}", stacklevel=2)
            transcripts[utterance.name] = texts.get(utterance.name, "")
    atomic_write_json(out / "transcripts.json", transcripts)
    return per_session


def count_table(per_session: dict[str, list[Utterance]]) -> str:
    """Utterances per class for each fold's train and test split, and over the whole corpus
    (``per_session``: what :func:`prepare` returns); then, when the utterances carry
    attributes, each one's range and mean per fold and split."""
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
    if any(u.attributes is not None for us in per_session.values() for u in us):
        lines.append("attributes (scale 1-5): range, mean (utterances that have it)")
        for index, session in enumerate(per_session, start=1):
            for split in ("train", "test"):
                items = [u.meta() for s, us in per_session.items() if (s == session) == (split == "test") for u in us]
                summary = attribute_summary(items, DEFAULT_ATTRIBUTES)
                lines.append(
                    f"{'fold' + str(index):<7}{split:<7}" + "; ".join(f"{n} {summary[n]}" for n in DEFAULT_ATTRIBUTES)
                )
    return "\n".join(lines)
