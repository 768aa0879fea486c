"""Label maps: how a model's classes and another corpus's labels are compared.

Corpora name their emotions differently (IEMOCAP's ``neu/hap/ang/sad``, CREMA-D's
``ANG/HAP/NEU/SAD/DIS/FEA``, MSP-Podcast's letters, EmoBox's ``Angry``...), and they hold
different sets. Scoring a model on another corpus needs a declared map, a :class:`LabelMap`:

* ``model``: each model class -> an evaluation class, or None (no counterpart);
* ``corpus``: each label of the scored corpus -> an evaluation class, or None (dropped);
* ``classes``: the evaluation classes, the targets the model side reaches, in model class order.

Two ways to declare it:

* **a common set**: both sides map to :data:`COMMON_CLASSES` (``neutral, happy, angry, sad``);
  the defaults do this for every corpus with a preparer (:func:`default_corpus_map`: the
  preparers' own label tables, IEMOCAP's ``exc`` merged into happy as SUPERB does, RAVDESS's
  calm, surprise, fear, disgust, boredom, contempt and IEMOCAP's frustration left out), and for
  any other corpus by name (``neu``/``neutral``, ``hap``/``happy``/``happiness``/``joy``,
  ``ang``/``angry``/``anger``, ``sad``/``sadness``, any case);
* **a pair**: the scored corpus's labels straight onto the model's classes.

A map file (YAML or JSON) overrides the defaults::

    corpora:                  # a corpus's labels -> common classes (both sides use it)
      MyCorpus: {calm: neutral, joyful: happy, furious: angry, sad: sad, bored: null}
    pairs:                    # a model's corpus and a scored corpus: labels -> model classes
      - {model: IEMOCAP, corpus: CREMA-D, map: {NEU: neu, HAP: hap, ANG: ang, SAD: sad}}

Corpus names match whatever their case and punctuation (``CREMA-D`` is ``cremad``).
Utterances whose label maps to nothing, or to an evaluation class no model class reaches, are
dropped and counted. Model classes without a counterpart are handled by renormalising: their
probabilities are removed and the rest divided by their sum, then the probabilities of model
classes mapped to the same evaluation class are added (:meth:`LabelMap.map_probabilities`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from s3prl_ser.data.corpora import cremad, emodb, esd, msp_podcast, ravdess

__all__ = [
    "COMMON_CLASSES",
    "LabelMapError",
    "LabelMap",
    "LabelMapFile",
    "default_corpus_map",
    "common_map",
    "read_label_map_file",
    "resolve_label_map",
]

COMMON_CLASSES = ("neutral", "happy", "angry", "sad")
_PREPARED = {"neu": "neutral", "hap": "happy", "ang": "angry", "sad": "sad"}  # the preparers' codes
_ALIASES = {
    **{name: name for name in COMMON_CLASSES},
    **_PREPARED,
    "happiness": "happy",
    "joy": "happy",
    "anger": "angry",
    "sadness": "sad",
}
_IEMOCAP = {"exc": "happy"}  # SUPERB's merge (prepared meta data hold it merged already)


def _raw(emotions: Mapping[str, str]) -> dict[str, str | None]:
    """A preparer's raw codes (file-name letters, CSV codes) -> common classes."""
    return {raw: _PREPARED.get(code) for raw, code in emotions.items()}


# Corpus name (normalised) -> the labels a generic name does not settle.
_CORPUS_TABLES: dict[str, dict[str, str | None]] = {
    "iemocap": _IEMOCAP,
    "builtin": _IEMOCAP,  # the built-in corpus: IEMOCAP's labels
    "cremad": _raw(cremad.EMOTIONS),
    "ravdess": _raw(ravdess.EMOTIONS),
    "emodb": _raw(emodb.EMOTIONS),
    "esd": _raw(esd.EMOTIONS),
    "msppodcast": _raw(msp_podcast.EMOTIONS),
}


class LabelMapError(ValueError):
    """A label map that cannot be used; the message names the file or corpus and the problem."""


def _norm(name: str) -> str:
    """A corpus name compared: lower case, letters and digits only (``CREMA-D`` -> ``cremad``;
    the built-in corpus's reported name starts with ``builtin``)."""
    normal = re.sub(r"[^0-9a-z]", "", name.lower())
    return "builtin" if normal.startswith("builtin") else normal


def default_corpus_map(corpus: str, labels: Sequence[str]) -> dict[str, str | None]:
    """Each of ``labels`` -> its class of :data:`COMMON_CLASSES`, or None (module docstring).

    Example:
        >>> default_corpus_map("CREMA-D", ["ANG", "HAP", "NEU", "SAD", "DIS", "FEA"])
        {'ANG': 'angry', 'HAP': 'happy', 'NEU': 'neutral', 'SAD': 'sad', 'DIS': None, 'FEA': None}
        >>> default_corpus_map("my-corpus", ["Neutral", "Joy", "calm"])
        {'Neutral': 'neutral', 'Joy': 'happy', 'calm': None}
    """
    table = _CORPUS_TABLES.get(_norm(corpus), {})
    return {label: table[label] if label in table else _ALIASES.get(label.lower()) for label in labels}


@dataclass(frozen=True)
class LabelMap:
    """A model's classes and a corpus's labels mapped onto evaluation classes (module docstring).

    Example:
        >>> m = LabelMap.build({"neu": "neutral", "ang": "angry", "fea": None}, {"N": "neutral", "A": "angry", "D": None}, "demo")
        >>> m.classes, m.renormalised, m.dropped_labels
        (('neutral', 'angry'), ('fea',), ('D',))
        >>> m.map_probabilities(np.array([[0.2, 0.3, 0.5]])).round(3).tolist()  # fea's 0.5 removed, the rest renormalised
        [[0.4, 0.6]]
    """

    classes: tuple[str, ...]
    model: dict[str, str | None]
    corpus: dict[str, str | None]
    source: str

    @classmethod
    def build(cls, model: Mapping[str, str | None], corpus: Mapping[str, str | None], source: str) -> LabelMap:
        """The map with its evaluation classes: the model side's targets in model class order.

        Raises:
            LabelMapError: no model class has a counterpart, or no corpus label reaches one.
        """
        classes = tuple(dict.fromkeys(target for target in model.values() if target is not None))
        if not classes:
            raise LabelMapError(f"{source}: none of the model's classes {list(model)} maps to anything")
        if not any(target in classes for target in corpus.values()):
            raise LabelMapError(
                f"{source}: no label of the scored corpus ({', '.join(corpus)}) maps to a class the model has "
                f"({', '.join(classes)}): nothing would be scored"
            )
        return cls(classes, dict(model), dict(corpus), source)

    def target(self, label: str) -> str | None:
        """The evaluation class of corpus label ``label``, or None when its utterances are dropped."""
        target = self.corpus.get(label)
        return target if target in self.classes else None

    @property
    def dropped_labels(self) -> tuple[str, ...]:
        """Corpus labels whose utterances are dropped (mapped to nothing, or to no model class)."""
        return tuple(label for label in self.corpus if self.target(label) is None)

    @property
    def renormalised(self) -> tuple[str, ...]:
        """Model classes with no counterpart: their probabilities are removed before renormalising."""
        return tuple(name for name, target in self.model.items() if target is None)

    def map_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """Model probabilities ``(B, C)`` (columns in the model's class order) -> ``(B, K)`` over
        :attr:`classes`: classes without a counterpart removed, rows renormalised, classes mapped
        to the same evaluation class added."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.ndim != 2 or probabilities.shape[1] != len(self.model):
            raise ValueError(f"expected probabilities (B, {len(self.model)}), got {probabilities.shape}")
        kept = np.zeros((len(self.model), len(self.classes)))
        for row, target in enumerate(self.model.values()):
            if target is not None:
                kept[row, self.classes.index(target)] = 1.0
        mapped = probabilities @ kept
        return mapped / np.maximum(mapped.sum(axis=1, keepdims=True), np.finfo(float).tiny)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what score reports record)."""
        return {
            "source": self.source,
            "classes": list(self.classes),
            "model": dict(self.model),
            "corpus": dict(self.corpus),
            "dropped_labels": list(self.dropped_labels),
            "renormalised": list(self.renormalised),
        }


@dataclass(frozen=True)
class LabelMapFile:
    """A parsed map file: ``corpora`` (normalised corpus name -> label -> common class or None)
    and ``pairs`` ((model corpus, scored corpus) normalised -> label -> model class or None).

    Example:
        >>> file = LabelMapFile("maps.yaml", {"mycorpus": {"calm": "neutral", "furious": "angry"}}, {})
        >>> resolve_label_map("IEMOCAP", ["neu", "ang"], "MyCorpus", ["calm", "furious", "bored"], file).dropped_labels
        ('bored',)
    """

    path: str
    corpora: dict[str, dict[str, str | None]]
    pairs: dict[tuple[str, str], dict[str, str | None]]


def _label_table(value: Any, where: str) -> dict[str, str | None]:
    if not isinstance(value, Mapping) or not value:
        raise LabelMapError(f"{where} must map labels to classes (or null), got {value!r}")
    for label, target in value.items():
        if not isinstance(label, str) or not (target is None or isinstance(target, str)):
            raise LabelMapError(f"{where}: {label!r}: {target!r}: labels and classes must be names (or null)")
    return dict(value)


def read_label_map_file(path: str | os.PathLike) -> LabelMapFile:
    """Read and check a map file (YAML or JSON, module docstring).

    Raises:
        FileNotFoundError: no such file.
        LabelMapError: not YAML/JSON, or another shape (the file and the entry named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label map not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise LabelMapError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({error})") from error
    if not isinstance(data, dict) or not data or set(data) - {"corpora", "pairs"}:
        raise LabelMapError(f"{path}: a label map holds 'corpora' and/or 'pairs' (module s3prl_ser.data.label_maps)")
    corpora_section = data.get("corpora") or {}
    if not isinstance(corpora_section, Mapping):
        raise LabelMapError(f"{path}: corpora must map corpus names to label tables")
    corpora = {
        _norm(str(name)): _label_table(table, f"{path}: corpora.{name}") for name, table in corpora_section.items()
    }
    pairs: dict[tuple[str, str], dict[str, str | None]] = {}
    pairs_section = data.get("pairs") or []
    if not isinstance(pairs_section, list):
        raise LabelMapError(f"{path}: pairs must be a list of {{model: CORPUS, corpus: CORPUS, map: {{...}}}}")
    for index, pair in enumerate(pairs_section):
        where = f"{path}: pairs[{index}]"
        if not isinstance(pair, Mapping) or set(pair) != {"model", "corpus", "map"}:
            raise LabelMapError(f"{where} must have exactly model, corpus and map, got {pair!r}")
        key = (_norm(str(pair["model"])), _norm(str(pair["corpus"])))
        if key in pairs:
            raise LabelMapError(f"{where}: a second map for model {pair['model']} on corpus {pair['corpus']}")
        pairs[key] = _label_table(pair["map"], f"{where}.map")
    return LabelMapFile(str(path), corpora, pairs)


def _check_keys(table: Mapping[str, Any], known: Sequence[str], where: str, what: str) -> None:
    unknown = [label for label in table if label not in known]
    if unknown:
        raise LabelMapError(f"{where} names {', '.join(map(repr, unknown))}, not {what} ({', '.join(known)})")


def common_map(
    corpus: str, labels: Sequence[str], map_file: LabelMapFile | None = None, *, strict: bool = True
) -> tuple[dict[str, str | None], str]:
    """Each of ``labels`` -> its common class or None, from the file's ``corpora`` entry for
    ``corpus`` or the defaults (:func:`default_corpus_map`); and where the table came from.

    Raises:
        LabelMapError: with ``strict``, the file's entry names a label ``corpus`` does not have.

    Example:
        >>> common_map("EmoDB", ["neu", "hap", "bor"])
        ({'neu': 'neutral', 'hap': 'happy', 'bor': None}, 'default for EmoDB')
    """
    table = map_file.corpora.get(_norm(corpus)) if map_file is not None else None
    if table is None:
        return default_corpus_map(corpus, labels), f"default for {corpus}"
    if strict:
        _check_keys(table, labels, f"{map_file.path}: corpora.{corpus}", f"a label of {corpus}")
    return {label: table.get(label) for label in labels}, f"{map_file.path} for {corpus}"


def resolve_label_map(
    model_corpus: str,
    model_classes: Sequence[str],
    corpus: str,
    corpus_labels: Sequence[str],
    map_file: LabelMapFile | None = None,
) -> LabelMap:
    """The map for a model trained on ``model_corpus`` (classes ``model_classes``) scored on
    ``corpus`` (labels ``corpus_labels``): the file's pair map, else each side's table from the
    file's ``corpora`` or the defaults (:func:`default_corpus_map`).

    Raises:
        LabelMapError: a file entry names a label the corpus (or, for a pair, a class the model)
            lacks, or nothing would be scored.

    Example:
        >>> m = resolve_label_map("IEMOCAP", ["neu", "hap", "ang", "sad"], "CREMA-D", ["NEU", "HAP", "DIS"])
        >>> m.classes, m.target("HAP"), m.dropped_labels
        (('neutral', 'happy', 'angry', 'sad'), 'happy', ('DIS',))
    """
    model_classes, corpus_labels = list(model_classes), list(corpus_labels)
    if map_file is not None:
        pair = map_file.pairs.get((_norm(model_corpus), _norm(corpus)))
        if pair is not None:
            where = f"{map_file.path}: the pair {model_corpus} -> {corpus}"
            _check_keys(pair, corpus_labels, where, f"a label of {corpus}")
            _check_keys({t: 0 for t in pair.values() if t is not None}, model_classes, where, "a model class")
            model = {name: name for name in model_classes}
            return LabelMap.build(model, {label: pair.get(label) for label in corpus_labels}, where)
    # A model's classes may be fewer than its corpus's labels: only the scored side is checked.
    model, model_source = common_map(model_corpus, model_classes, map_file, strict=False)
    scored, corpus_source = common_map(corpus, corpus_labels, map_file)
    return LabelMap.build(model, scored, f"model: {model_source}; corpus: {corpus_source}")
