"""Cross-corpus evaluation: score any model on any prepared corpus, and the N x N matrix.

**Scoring** (:func:`score`): a model (an exported model directory: one fold, an ensemble or the
deployment model; or a run's fold: its directory, or a cross-validation directory and a fold)
is run on a prepared corpus (``META_DIR`` and its audio root, as a run's ``datarc`` names
them), either on every utterance (``split="all"``) or on its test lists (``split="test"``: the
union of every fold's test list, i.e. the whole corpus for cross-validation, the official test
set where there is one; or one ``fold``'s). The model's classes and the corpus's labels are
compared through a label map (:mod:`s3prl_ser.data.label_maps`): utterances whose label has no
counterpart are dropped and counted, model classes without one are removed and the remaining
probabilities renormalised. The report (``score.json``, ``score.md``, ``confusion.png``) gives
WA, UA, macro-F1 and the confusion matrix over the evaluation classes.

**Attributes**: when the model predicts continuous attributes (arousal, valence, ...) and the
scored corpus carries some of the same names, the report adds each one's CCC, Pearson r and RMSE
and their mean CCC (:func:`~s3prl_ser.training.metrics.regression_report`) on the corpus's own
scale, with a scatter plot each (``scatter_<name>.png``). A model trained on another scale (IEMOCAP
1-5, MSP-Podcast 1-7) has its predictions mapped linearly from its scale onto the corpus's, which
assumes the two scales' endpoints mean the same. Every utterance carrying a value counts for that
attribute's metrics, also one without a category (MSP-Podcast's X and O, label null: dropped for
the categories only). Attributes on one side only are listed as not scored; a model of attributes
only gets no categorical metrics (the report says so).

**No leakage** (:mod:`s3prl_ser.data.training_audio`): before any audio is scored, the scored
utterances are compared with what the model learnt from (its train and dev lists): by resolved
path (a run's fold) and by the SHA-256 of the audio file's bytes (both kinds); any overlap is
refused with :class:`LeakageError`.

**The matrix** (:func:`cross_corpus_matrix`): for N prepared corpora and one training recipe (a
:class:`~s3prl_ser.experiments.launch.RunRequest`), each corpus is cross-validated
(:func:`~s3prl_ser.experiments.cross_validation.cross_validate`), its deployment model trained
(:func:`~s3prl_ser.experiments.deployment.train_deployment`) or one chosen fold's model taken,
and that model scored on every other corpus. In-corpus cells are the cross-validation's means
(over the model's own classes), cross-corpus cells the scores (over the mapped classes); with a
recipe trained on attributes, each cell also carries the mean CCC (``ccc_mean``). Like
cross-validation it resumes: finished trainings and cells scored with the same model, corpus,
split and map are reused. A **pool** (:func:`pool_corpora`) adds a row trained on several
corpora at once, their test lists never in training, scored on the corpora outside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from s3prl_ser.config import ConfigError
from s3prl_ser.data.attributes import Scale, denormalise, normalise
from s3prl_ser.data.emotion_dataset import EmotionDataset, MetaData, available_folds, read_fold_lists, utterance_key
from s3prl_ser.data.label_maps import (
    COMMON_CLASSES,
    LabelMap,
    LabelMapError,
    LabelMapFile,
    common_map,
    read_label_map_file,
    resolve_label_map,
)
from s3prl_ser.data.manifest import Manifest, ManifestFold
from s3prl_ser.data.protocol import PROTOCOL_KEY, checkpoint_protocol
from s3prl_ser.data.training_audio import (
    DIGEST_RULE,
    RECORD_KEY,
    TrainingAudio,
    checkpoint_training_audio,
    digest_key,
    path_key,
)
from s3prl_ser.experiments.launch import RunRequest
from s3prl_ser.fileio import atomic_write_text, read_json, safe_torch_load
from s3prl_ser.markdown import markdown_table
from s3prl_ser.training.cv_report import plot_attribute_scatter, plot_confusion
from s3prl_ser.training.metrics import classification_report, regression_report
from s3prl_ser.training.run_dir import RunDir

if TYPE_CHECKING:  # the recognizer builds upstreams: imported when a model is loaded
    from s3prl_ser.inference.recognizer import EmotionRecognizer

__all__ = [
    "SPLITS",
    "MATRIX_METRICS",
    "LeakageError",
    "ScoringModel",
    "Corpus",
    "EvaluationSet",
    "load_scoring_model",
    "evaluation_set",
    "check_leakage",
    "score",
    "MatrixCorpus",
    "Pool",
    "pool_corpora",
    "cross_corpus_matrix",
]

logger = logging.getLogger(__name__)

SPLITS = ("all", "test")
MATRIX_METRICS = ("ua", "wa", "macro_f1", "ccc_mean")
_METRIC_NAMES = {"ua": "UA (%)", "wa": "WA (%)", "macro_f1": "macro-F1 (%)", "ccc_mean": "CCC, mean over attributes"}
SCORE_FILE = "score.json"
_SHOWN = 5
_ROOT_KEY = "config.downstream_expert.datarc.root"
_META_KEY = "config.downstream_expert.datarc.meta_data"
RENORMALISED_NOTE = (
    "model classes without a counterpart: their probabilities are removed and the rest divided by their sum; "
    "model classes mapped to the same evaluation class have their probabilities added"
)
RESCALED_NOTE = (
    "predictions mapped linearly from the model's scale onto the corpus's "
    "(low to low, high to high: this assumes the two scales' endpoints mean the same)"
)
NO_CATEGORIES_NOTE = "the model predicts attributes only: no categorical metrics (WA, UA, macro-F1, confusion)"


class LeakageError(ValueError):
    """A model would be scored on audio it learnt from; the message names some of it."""


@dataclass
class ScoringModel:
    """A loaded model with what scoring needs to know about it.

    Attributes:
        recognizer: the :class:`~s3prl_ser.inference.recognizer.EmotionRecognizer`.
        source: where it was loaded from (for reports).
        kind: ``fold``, ``ensemble``, ``deployment`` (a model directory's kind) or ``run`` (a run's fold).
        corpus: the training corpus's name (from its protocol or training-audio record).
        training: its training audio, or None when a model directory records none.
        identity: a digest naming this very model (the matrix reuses cells scored with it).

    Example:
        >>> model = ScoringModel(None, "models/fold1", "fold", "IEMOCAP", None, "c0ffee")
        >>> model.kind, model.training is None
        ('fold', True)
    """

    recognizer: EmotionRecognizer
    source: str
    kind: str
    corpus: str
    training: TrainingAudio | None
    identity: str

    @property
    def class_names(self) -> list[str]:
        return list(self.recognizer.class_names)


def _digest_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_scoring_model(path: str | os.PathLike, fold: str | None = None, device: str = "cpu") -> ScoringModel:
    """Load a model directory, a run's fold directory (``fold``: in a cross-validation
    directory) or a runner checkpoint, with its training corpus and training audio.

    Raises:
        FileNotFoundError: nothing there, or a run's corpus that is no longer where it was read.
        ValueError: not a model (directory) this project wrote; ``fold`` with a model directory.
    """
    from s3prl_ser.inference.model_dir import config_digest, is_model_dir
    from s3prl_ser.inference.recognizer import EmotionRecognizer, resolve_checkpoint

    path = Path(path)
    if is_model_dir(path):
        if fold is not None:
            raise ConfigError(f"{path} is a model directory: it has no folds to choose (drop the fold)")
        recognizer = EmotionRecognizer.from_model_dir(path, device)  # its config.json verified
        config = recognizer.config
        record = config.get(RECORD_KEY)
        training = TrainingAudio.from_record(record) if isinstance(record, dict) else None
        protocol = config.get(PROTOCOL_KEY) or {}
        corpus = protocol.get("corpus_name") or (training.corpus if training else None) or "unknown"
        kind = (config.get("source") or {}).get("kind", "model directory")
        return ScoringModel(recognizer, str(path), kind, corpus, training, config_digest(config)[:16])
    run = path / fold if fold is not None else path
    if not run.exists():
        raise FileNotFoundError(f"no model at {run}")
    if run.is_dir() and not RunDir(run).is_finished():
        folds = sorted(child.name for child in run.iterdir() if RunDir(child).is_finished())
        if folds:
            raise ConfigError(
                f"{run} is a cross-validation directory (folds {', '.join(folds)}): choose one with --fold"
            )
    checkpoint = resolve_checkpoint(run)
    recognizer = EmotionRecognizer.from_checkpoint(checkpoint, device)
    training = checkpoint_training_audio(checkpoint)
    protocol = checkpoint_protocol(safe_torch_load(checkpoint, mmap=True)) or {}
    final = RunDir(run).final() if run.is_dir() else None
    identity = _digest_text(json.dumps(final, sort_keys=True) if final else str(checkpoint.stat().st_mtime_ns))
    corpus = protocol.get("corpus_name") or training.corpus
    return ScoringModel(recognizer, str(run), "run", corpus, training, identity)


@dataclass(frozen=True)
class Corpus:
    """A prepared corpus: ``meta_data`` (``META_DIR``: s3prl meta data, a manifest or EmoBox
    lists) and the ``root`` its audio paths are relative to.

    Example:
        >>> Corpus("/data/CREMA-D", "/data/cremad_meta").root
        '/data/CREMA-D'
    """

    root: str
    meta_data: str
    allow_outside_root: bool = False


@dataclass(frozen=True)
class EvaluationSet:
    """The utterances to score: ``items`` (each once, by utterance key, paths relative to
    ``root``), the corpus's ``labels`` and ``name``, a ``description`` of the selection and the
    declared ``attribute_scale`` of the attributes its items carry (``{}``: none).

    Example:
        >>> EvaluationSet("toy", ["a"], [{"path": "u.wav", "label": "a"}], "every utterance", "/corpus").items[0]["label"]
        'a'
    """

    name: str
    labels: list[str]
    items: list[dict]
    description: str
    root: str
    attribute_scale: dict[str, Scale] = dataclasses.field(default_factory=dict)

    @property
    def digest(self) -> str:
        """A digest of the utterances, their labels and attributes (a cell scored on other ones is scored again)."""
        return _digest_text(
            "\n".join(
                f"{utterance_key(item)}\t{item.get('label')}"
                + (f"\t{json.dumps(item['attributes'], sort_keys=True)}" if item.get("attributes") else "")
                for item in self.items
            )
        )


def evaluation_set(corpus: Corpus, split: str = "all", fold: str | None = None) -> EvaluationSet:
    """The utterances of ``corpus`` to score: ``split="all"``, every utterance of every fold;
    ``"test"``, every fold's test list (or ``fold``'s alone).

    Raises:
        ConfigError: an unknown split, or a fold with ``split="all"``.
        FileNotFoundError, ValueError: the corpus's lists cannot be read (file and problem named).
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if fold is not None and split != "test":
        raise ConfigError("a fold chooses a test list: use it with the test split")
    folds = [fold] if fold is not None else available_folds(corpus.meta_data)
    items: dict[str, dict] = {}
    name, labels, official, scale = "", [], None, {}
    for name_of_fold in folds:
        lists = read_fold_lists(
            corpus.meta_data, name_of_fold, corpus.root, allow_outside_root=corpus.allow_outside_root
        )
        name, labels, official = lists.corpus, lists.train.class_names, lists.official_test
        parts = [lists.test] if split == "test" else [lists.train, *([lists.dev] if lists.dev else []), lists.test]
        for part in parts:
            scale.update(part.attribute_scale)
            for item in part.items:
                items.setdefault(utterance_key(item), item)
    if split == "all":
        description = f"every utterance of {name} ({len(folds)} fold(s)' lists)"
    elif fold is not None:
        description = f"the test list of {fold}"
    elif official:
        description = f"the official test set {official}"
    else:
        description = f"every fold's test list ({len(folds)} folds)"
    return EvaluationSet(name, labels, [items[key] for key in sorted(items)], description, corpus.root, scale)


def check_leakage(model: ScoringModel, evaluation: EvaluationSet, allow_unrecorded: bool = False) -> dict[str, Any]:
    """Refuse to score ``model`` on audio it learnt from; what was checked.

    Raises:
        LeakageError: a scored utterance's resolved path or audio digest is among the model's
            training audio, or the model records none (unless ``allow_unrecorded``).
    """
    if model.training is None:
        if not allow_unrecorded:
            raise LeakageError(
                f"{model.source} records no training audio ({RECORD_KEY} in config.json), so scoring it on "
                f"{evaluation.name} cannot be checked for leakage: re-export it with this version "
                "(or allow unrecorded models explicitly)"
            )
        logger.warning("%s records no training audio: leakage NOT checked", model.source)
        return {"checked": False}
    shared = []
    if model.training.paths is not None:
        shared += [
            f"{item['path']} (same file)"
            for item in evaluation.items
            if path_key(evaluation.root, item) in model.training.paths
        ]
    if not shared:
        shared += [
            f"{item['path']} (same audio bytes)"
            for item in evaluation.items
            if digest_key(evaluation.root, item) in model.training.digests
        ]
    if shared:
        raise LeakageError(
            f"{model.source} learnt from {len(shared)} of the {len(evaluation.items)} utterances to score in "
            f"{evaluation.name} ({evaluation.description}), e.g. {'; '.join(shared[:_SHOWN])}: a score on audio "
            "the model was trained or selected on is no transfer; score another corpus, or its test lists "
            "of the model's own fold"
        )
    by = ["resolved path", DIGEST_RULE] if model.training.paths is not None else [DIGEST_RULE]
    return {"checked": True, "by": by, "training_utterances": model.training.utterances}


def _predictions(model: ScoringModel, root: str, items: list[dict], batch_size: int) -> np.ndarray:
    """The model's outputs ``(N, C + A)`` of ``items``, read by the one audio reader: the class
    probabilities, then the attribute values on the model's own scale
    (:meth:`~s3prl_ser.inference.recognizer.EmotionRecognizer.predictions`)."""
    recognizer = model.recognizer
    labels = {label: 0 for label in {item.get("label") for item in items} if label is not None}
    data = EmotionDataset(root, MetaData(Path(root), labels, items), min_samples=recognizer.min_samples)
    batches = []
    for first in range(0, len(data), batch_size):
        wavs = [torch.from_numpy(data[i][0]) for i in range(first, min(first + batch_size, len(data)))]
        batches.append(recognizer.predictions(wavs).float().numpy())
    width = len(recognizer.class_names) + len(recognizer.attribute_names)
    return np.concatenate(batches) if batches else np.zeros((0, width))


def _known(item: dict, name: str) -> float:
    """Attribute ``name`` of ``item``, NaN when unknown."""
    value = (item.get("attributes") or {}).get(name)
    return np.nan if value is None else float(value)


def _attribute_names(model_scale: dict[str, Scale], corpus_scale: dict[str, Scale]) -> tuple[list[str], dict[str, str]]:
    """The attributes both sides have (in the model's order), and why each other one is not scored."""
    shared = [name for name in model_scale if name in corpus_scale]
    not_scored = {name: "the corpus carries no values of it" for name in model_scale if name not in corpus_scale}
    not_scored |= {name: "the model does not predict it" for name in corpus_scale if name not in model_scale}
    return shared, not_scored


def _score_attributes(
    model: ScoringModel, evaluation: EvaluationSet, items: list[dict], values: np.ndarray, names: list[str]
) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The attribute section of the report and each attribute's ``(truth, predicted)`` ``(N,)``
    on the corpus's scale, from the model's attribute ``values`` ``(N, A)`` of ``items`` (each
    carrying at least one of ``names``) on its own scale."""
    recognizer = model.recognizer
    model_scale = {name: recognizer.attribute_scale[name] for name in names}
    corpus_scale = {name: evaluation.attribute_scale[name] for name in names}
    predicted = values[:, [recognizer.attribute_names.index(name) for name in names]].astype(np.float64)
    rescaled = [name for name in names if model_scale[name] != corpus_scale[name]]
    for name in rescaled:
        j = names.index(name)
        predicted[:, j] = denormalise(normalise(predicted[:, j], model_scale[name]), corpus_scale[name])
    truth = np.array([[_known(item, name) for name in names] for item in items], dtype=np.float64)
    report = regression_report(truth, predicted, names).to_dict()
    section = {
        "scored": names,
        "scale": {name: list(corpus_scale[name]) for name in names},
        "model_scale": {name: list(model_scale[name]) for name in names},
        "rescaled": rescaled,
        "rescaling": RESCALED_NOTE if rescaled else None,
        "utterances": len(items),
        "without_category": sum(item.get("label") is None for item in items),
        "metrics": report["attributes"],
        "ccc_mean": report["ccc_mean"],
    }
    return section, {name: (truth[:, j], predicted[:, j]) for j, name in enumerate(names)}


def score(
    model: ScoringModel,
    corpus: Corpus,
    out_dir: str | os.PathLike,
    *,
    split: str = "all",
    fold: str | None = None,
    label_map: LabelMapFile | None = None,
    batch_size: int = 8,
    allow_unrecorded: bool = False,
    title: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``model`` on ``corpus`` (module docstring); write ``score.json``, ``score.md``,
    ``confusion.png`` (with categories) and ``scatter_<attribute>.png`` (each attribute scored)
    into ``out_dir``; the report (categorical metrics in %, ``extra`` added to it).

    Raises:
        LeakageError: the model learnt from some of the audio (:func:`check_leakage`).
        LabelMapError: the map leaves nothing to score, or a map file entry is wrong.
        ConfigError: bad split/fold, or a model of attributes only that shares none with the corpus.
        FileNotFoundError, ValueError: unreadable corpus lists.
    """
    evaluation = evaluation_set(corpus, split, fold)
    recognizer = model.recognizer
    names, not_scored = _attribute_names(recognizer.attribute_scale, evaluation.attribute_scale)
    mapping = None
    if model.class_names:
        mapping = resolve_label_map(model.corpus, model.class_names, evaluation.name, evaluation.labels, label_map)
    elif not names:
        carried = ", ".join(evaluation.attribute_scale) or "none"
        raise ConfigError(
            f"{model.source} predicts attributes only ({', '.join(recognizer.attribute_names)}) and {evaluation.name} "
            f"carries none of them (it carries: {carried}): nothing to score"
        )
    scored, categorical, rated, dropped = [], [], [], Counter()
    for item in evaluation.items:
        label = item.get("label")
        category = mapping is not None and label is not None and mapping.target(label) is not None
        if mapping is not None and not category:
            dropped["(no category)" if label is None else label] += 1
        # an utterance without a category still counts for the attributes it carries
        rating = any(not np.isnan(_known(item, name)) for name in names)
        if category or rating:
            scored.append(item)
            categorical.append(category)
            rated.append(rating)
    if mapping is not None and not any(categorical):
        raise LabelMapError(f"no utterance of {evaluation.name} has a label the map ({mapping.source}) reaches")
    leakage = check_leakage(model, dataclasses.replace(evaluation, items=scored), allow_unrecorded)
    logger.info(
        "[cross_corpus] - scoring %s on %d utterances of %s (%s), %d dropped for categories, %d rated",
        model.source,
        len(scored),
        evaluation.name,
        evaluation.description,
        sum(dropped.values()),
        sum(rated),
    )
    outputs = _predictions(model, evaluation.root, scored, batch_size)
    num_classes = len(model.class_names)
    result: dict[str, Any] = {
        "model": {
            "source": model.source,
            "kind": model.kind,
            "corpus": model.corpus,
            "classes": model.class_names,
            "attributes": recognizer.attribute_names,
            "identity": model.identity,
        },
        "corpus": {
            "name": evaluation.name,
            "root": str(corpus.root),
            "meta_data": str(corpus.meta_data),
            "split": split,
            "fold": fold,
            "selection": evaluation.description,
            "digest": evaluation.digest,
        },
        "label_map": None,
        "renormalisation": None,
        "categories_skipped": NO_CATEGORIES_NOTE if mapping is None else None,
        "utterances": {
            "listed": len(evaluation.items),
            "scored": len(scored),
            "dropped": dict(sorted(dropped.items())),
        },
        "leakage_check": leakage,
        "wa": None,
        "ua": None,
        "macro_f1": None,
        "metrics": None,
        "attributes": None,
        "ccc_mean": None,
    }
    if mapping is not None:
        rows = [i for i, flag in enumerate(categorical) if flag]
        probabilities = mapping.map_probabilities(outputs[rows, :num_classes])
        predicted = [mapping.classes[i] for i in probabilities.argmax(axis=1)]
        truth = [mapping.target(scored[i]["label"]) for i in rows]
        report = classification_report(truth, predicted, mapping.classes)
        result |= {
            "label_map": mapping.to_dict(),
            "renormalisation": RENORMALISED_NOTE if mapping.renormalised else None,
            "wa": report.wa * 100,
            "ua": report.ua * 100,
            "macro_f1": report.macro_f1 * 100,
            "metrics": report.to_dict(),
        }
        result["utterances"]["per_class"] = {c: int(n) for c, n in zip(mapping.classes, report.confusion.sum(axis=1))}
    points = {}
    if any(rated):
        rows = [i for i, flag in enumerate(rated) if flag]
        section, points = _score_attributes(
            model, evaluation, [scored[i] for i in rows], outputs[rows, num_classes:], names
        )
        result["attributes"], result["ccc_mean"] = {**section, "not_scored": not_scored}, section["ccc_mean"]
    elif names or not_scored:
        none_carried = {name: "no scored utterance carries a value" for name in names}
        result["attributes"] = {"scored": [], "not_scored": {**none_carried, **not_scored}}
    result |= extra or {}
    _write_score(result, mapping, points, Path(out_dir), title or f"{Path(model.source).name} on {evaluation.name}")
    return result


def _write_score(
    result: dict[str, Any],
    mapping: LabelMap | None,
    points: dict[str, tuple[np.ndarray, np.ndarray]],
    out_dir: Path,
    title: str,
) -> None:
    """``score.md``, ``confusion.png`` and the attributes' scatter plots, then ``score.json`` last
    (its presence marks the score done)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics, counts, attributes = result["metrics"], result["utterances"], result["attributes"]
    model = result["model"]
    predicts = [*([f"classes {', '.join(model['classes'])}"] if model["classes"] else [])]
    predicts += [f"attributes {', '.join(model['attributes'])}"] if model["attributes"] else []
    lines = [
        f"# {title}",
        "",
        f"Model: {model['source']} ({model['kind']}, trained on {model['corpus']}, {'; '.join(predicts)}).",
    ]
    selection = f"Scored on {result['corpus']['name']}: {result['corpus']['selection']}; {counts['scored']} of "
    if mapping is None:
        lines += [f"{selection}{counts['listed']} utterances scored.", f"Categories: {result['categories_skipped']}."]
    else:
        dropped = ", ".join(f"{label} {n}" for label, n in counts["dropped"].items()) or "none"
        lines += [
            f"{selection}{counts['listed']} utterances scored, dropped (label without a counterpart): {dropped}"
            + (" (for the categories only: utterances with attribute values count for those)." if points else "."),
            f"Label map: {mapping.source}.",
        ]
        if mapping.renormalised:
            lines.append(f"Renormalised: {', '.join(mapping.renormalised)} ({RENORMALISED_NOTE}).")
        lines += [""]
        lines += markdown_table(
            ["utterances", "WA (%)", "UA (%)", "macro-F1 (%)"],
            [[sum(counts["per_class"].values()), *(f"{result[key]:.2f}" for key in ("wa", "ua", "macro_f1"))]],
        )
        lines += ["", "Confusion matrix (rows: reference, columns: predicted):", ""]
        labels = metrics["labels"]
        lines += markdown_table(["", *labels], [[label, *row] for label, row in zip(labels, metrics["confusion"])])
        lines += ["", "![confusion matrix](confusion.png)"]
    if attributes is not None:
        lines += ["", "## Attributes", ""]
        if points:
            lines += [
                f"{attributes['utterances']} utterances carry a value of a scored attribute "
                f"({attributes['without_category']} of them without a category); values on the corpus's scale."
            ]
            if attributes["rescaled"]:
                changes = (
                    f"{name} {_scale_text(attributes['model_scale'][name])} -> {_scale_text(attributes['scale'][name])}"
                    for name in attributes["rescaled"]
                )
                lines.append(f"Rescaled: {', '.join(changes)} ({RESCALED_NOTE}).")
        if attributes["not_scored"]:
            reasons = ", ".join(f"{name} ({why})" for name, why in attributes["not_scored"].items())
            lines.append(f"Not scored: {reasons}.")
        if points:
            table = attributes["metrics"]
            rows = [
                [name, _scale_text(attributes["scale"][name]), table[name]["n"]]
                + [f"{table[name][key]:.3f}" for key in ("ccc", "pearson", "rmse")]
                for name in attributes["scored"]
            ]
            rows.append(["mean", "", "", f"{attributes['ccc_mean']:.3f}", "", ""])
            lines += ["", *markdown_table(["attribute", "scale", "utterances", "CCC", "Pearson r", "RMSE"], rows)]
            lines += ["", *(f"![{name}: predicted against true](scatter_{name}.png)" for name in points)]
    atomic_write_text(out_dir / "score.md", "\n".join([*lines, ""]))
    if mapping is not None:
        plot_confusion(metrics["confusion"], metrics["labels"], out_dir / "confusion.png", title=title)
    for name, (truth, predicted) in points.items():
        scale = attributes["scale"][name]
        note = " (rescaled from the model's scale)" if name in attributes["rescaled"] else ""
        plot_attribute_scatter(truth, predicted, name, out_dir / f"scatter_{name}.png", scale, f"{title}: {name}{note}")
    atomic_write_text(out_dir / SCORE_FILE, json.dumps(result, indent=1))


def _scale_text(scale: Sequence[float]) -> str:
    return f"{scale[0]:g}-{scale[1]:g}"


# ------------------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class MatrixCorpus:
    """One corpus of the matrix: a short ``name`` (its directories and table headers) and where
    it lies.

    Example:
        >>> MatrixCorpus.parse("crema=/data/CREMA-D,/data/cremad_meta")
        MatrixCorpus(name='crema', corpus=Corpus(root='/data/CREMA-D', meta_data='/data/cremad_meta', allow_outside_root=False))
    """

    name: str
    corpus: Corpus

    @classmethod
    def parse(cls, text: str) -> MatrixCorpus:
        """``NAME=ROOT,META_DIR``.

        Raises:
            ConfigError: another shape.
        """
        name, _, where = text.partition("=")
        root, _, meta = where.partition(",")
        if not name or not root or not meta or "/" in name or name.startswith("."):
            raise ConfigError(f"a corpus is NAME=ROOT,META_DIR (NAME a plain directory name), got {text!r}")
        return cls(name, Corpus(root, meta))


@dataclass(frozen=True)
class Pool:
    """Several corpora of the matrix trained on together (:func:`pool_corpora`), named ``name``.

    Example:
        >>> Pool.parse("both=iemocap,crema")
        Pool(name='both', members=('iemocap', 'crema'))
    """

    name: str
    members: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Pool:
        """``NAME=CORPUS,CORPUS,...`` (the corpora by their matrix names).

        Raises:
            ConfigError: another shape.
        """
        name, _, members = text.partition("=")
        names = tuple(filter(None, members.split(",")))
        if not name or "/" in name or name.startswith(".") or len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError(f"a pool is NAME=CORPUS,CORPUS[,...] (two or more distinct corpora), got {text!r}")
        return cls(name, names)


def pool_corpora(
    out: str | os.PathLike, members: Sequence[MatrixCorpus], folds: Sequence[str], label_map: LabelMapFile | None = None
) -> Corpus:
    """Write one corpus of several: ``out/meta/manifest.json`` over ``out/root`` (a symbolic
    link per member, ``out/root/NAME`` -> its root); the pooled corpus.

    Fold ``k`` of the pool trains on every member's fold-``k`` train and dev lists and tests on
    their fold-``k`` test lists: a test list never enters training. Labels are mapped onto the
    common classes (:func:`~s3prl_ser.data.label_maps.common_map`; utterances without one are
    left out). When a member has an official test set, the pool has one too (its fold tests),
    so that its deployment run (every fold's training utterances) leaves every test list out.

    Raises:
        ConfigError: a member lacks one of ``folds``, reads audio outside its root, or no
            utterance is left.
    """
    out = Path(out)
    root, names = out / "root", [member.name for member in members]
    root.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    lists: dict[str, dict[str, list[str]]] = {fold: {"train": [], "test": []} for fold in folds}
    officials, dropped = [], Counter()
    for member in members:
        if member.corpus.allow_outside_root:
            raise ConfigError(f"{member.name}: a corpus reading audio outside its root cannot be pooled")
        link, target = root / member.name, Path(member.corpus.root).resolve()
        if link.is_symlink() and link.resolve() != target:
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
        for fold in folds:
            try:
                fold_lists = read_fold_lists(member.corpus.meta_data, fold, member.corpus.root)
            except FileNotFoundError as error:
                raise ConfigError(f"pool {', '.join(names)}: {member.name} has no {fold} to pool ({error})") from error
            if fold_lists.official_test:
                officials.append(f"{member.name}: {fold_lists.official_test}")
            table, _ = common_map(fold_lists.corpus, fold_lists.train.class_names, label_map)
            parts = [("train", fold_lists.train), ("train", fold_lists.dev), ("test", fold_lists.test)]
            for split, part in parts:
                for item in part.items if part is not None else ():
                    label = table.get(item.get("label"))
                    if label is None:
                        dropped[f"{member.name}: {item.get('label')}"] += 1
                        continue
                    key = f"{member.name}/{utterance_key(item)}"
                    speaker = item.get("speaker")
                    rows[key] = {
                        **{k: item[k] for k in ("gender", "duration", "start", "end", "channel") if k in item},
                        "id": key,
                        "path": f"{member.name}/{item['path']}",
                        "label": label,
                        "speaker": f"{member.name}/{speaker}" if speaker is not None else None,
                    }
                    lists[fold][split].append(key)
    if not rows:
        raise ConfigError(f"pool {', '.join(names)}: no utterance has a common class")
    used = {row["label"] for row in rows.values()}
    order = [c for c in COMMON_CLASSES if c in used] + sorted(used - set(COMMON_CLASSES))
    manifest = Manifest(
        f"pool of {' + '.join(names)}",
        order,
        [rows[key] for key in sorted(rows)],
        {
            fold: ManifestFold(tuple(sorted(set(x["train"]))), tuple(sorted(set(x["test"]))))
            for fold, x in lists.items()
        },
        protocol=f"pooled {', '.join(names)}: fold k trains on every member's fold-k train and dev lists, tests on "
        f"their fold-k test lists; left out without a common class: {dict(sorted(dropped.items())) or 'none'}",
        official_test="; ".join(officials) or None,
    )
    manifest.write(out / "meta")
    return Corpus(str(root), str(out / "meta"))


def _cell_identity(
    model: ScoringModel, evaluation: EvaluationSet, mapping: LabelMap | None, split: str
) -> dict[str, Any]:
    return {
        "model": model.identity,
        "corpus": evaluation.digest,
        "split": split,
        "label_map": mapping.to_dict() if mapping is not None else None,
    }


def _cell(
    model: ScoringModel,
    target: MatrixCorpus,
    out_dir: Path,
    split: str,
    label_map: LabelMapFile | None,
    title: str,
) -> dict[str, Any]:
    """One cross-corpus cell: reused when ``out_dir/score.json`` was scored with the same model,
    corpus, split and map, else scored (again)."""
    evaluation = evaluation_set(target.corpus, split)
    mapping = (
        resolve_label_map(model.corpus, model.class_names, evaluation.name, evaluation.labels, label_map)
        if model.class_names
        else None
    )
    identity = _cell_identity(model, evaluation, mapping, split)
    done = out_dir / SCORE_FILE
    if done.is_file():
        previous = read_json(done)
        if previous.get("cell") == identity:
            logger.info("[cross_corpus] - %s: scored earlier, reusing %s", title, done)
            return previous
        logger.info("[cross_corpus] - %s: scored with another model, corpus or map; scoring again", title)
    return score(model, target.corpus, out_dir, split=split, label_map=label_map, title=title, extra={"cell": identity})


def _in_corpus(summary: dict[str, Any]) -> dict[str, Any]:
    """The cross-validation's means (WA, UA, macro-F1 in %; the mean CCC over attributes) as a cell."""
    attributes = summary.get("attributes") or {}
    return {
        **{key: (summary.get(key) or {}).get("mean") for key in ("wa", "ua", "macro_f1")},
        "ccc_mean": (attributes.get("ccc_mean") or {}).get("mean"),
        "classes": summary.get("labels", []),
        "attributes": attributes.get("names", []),
        "source": "cross-validation mean over folds " + ", ".join(summary["folds"]),
    }


def cross_corpus_matrix(
    out: str | os.PathLike,
    corpora: Sequence[MatrixCorpus],
    request: RunRequest,
    *,
    folds: Sequence[str] | None = None,
    model: str = "deploy",
    split: str = "all",
    label_map: str | os.PathLike | None = None,
    workers: int = 0,
    pools: Sequence[Pool] = (),
    metric: str | None = None,
) -> dict[str, Any]:
    """Train on each corpus (and each pool) and score on every other; write ``matrix.json``, ``matrix.md`` and
    ``matrix.png`` into ``out``; the matrix.

    Args:
        out: the experiment root: corpus ``c``'s cross-validation in ``out/c``, the cell of the
            model trained on ``a`` scored on ``b`` in ``out/cells/a_on_b``.
        corpora: two or more corpora, names distinct.
        request: the training recipe (a :class:`~s3prl_ser.experiments.launch.RunRequest`:
            upstream, task, config, overrides); each corpus's root and meta data are set on it.
        folds: the folds cross-validated on every corpus (default: each corpus's own).
        model: ``deploy`` (the deployment model, trained on every utterance) or a fold name
            (that fold's model).
        split: what of the other corpora is scored (:func:`evaluation_set`).
        label_map: a map file overriding the default maps (:mod:`s3prl_ser.data.label_maps`).
        workers: folds trained in that many single-thread processes (0: here, one by one).
        pools: more rows: each trained on several of ``corpora`` at once (:func:`pool_corpora`,
            in ``out/pools/NAME``, cross-validated in ``out/NAME``) and scored on the others;
            its members' cells are not scored (it learnt from them).
        metric: the heatmap's metric, one of :data:`MATRIX_METRICS` (default: ``ua`` when the
            recipe trains categories, else ``ccc_mean``); the tables show every metric the cells have.

    Raises:
        ConfigError: fewer than two corpora, an unknown metric, repeated names, a pool of unknown corpora, a
            model fold not cross-validated.
        LeakageError: a model would be scored on audio it learnt from (corpora sharing recordings).
    """
    from s3prl_ser.experiments.cross_validation import corpus_folds, cross_validate
    from s3prl_ser.experiments.deployment import train_deployment

    out = Path(out)
    by_name = {c.name: c for c in corpora}
    names = [c.name for c in corpora] + [p.name for p in pools]
    if len(corpora) < 2 or len(set(names)) != len(names) or {"cells", "pools"} & set(names):
        raise ConfigError(
            f"the matrix needs two or more corpora, corpora and pools named distinctly (not cells or pools), got {names}"
        )
    unknown = sorted({m for p in pools for m in p.members} - set(by_name))
    if unknown:
        raise ConfigError(
            f"pools name corpora the matrix does not have: {', '.join(unknown)} (corpora: {', '.join(by_name)})"
        )
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if metric is not None and metric not in MATRIX_METRICS:
        raise ConfigError(f"metric must be one of {', '.join(MATRIX_METRICS)}, got {metric!r}")
    map_file = read_label_map_file(label_map) if label_map is not None else None

    def train(name: str, corpus: Corpus) -> tuple[dict[str, Any], ScoringModel]:
        """Cross-validate ``name``'s recipe on ``corpus`` in ``out/name``; its CV cell and the model to score."""
        recipe = request.with_overrides((_ROOT_KEY, corpus.root), (_META_KEY, corpus.meta_data))
        chosen = list(folds) if folds else corpus_folds(recipe)
        if model != "deploy" and model not in chosen:
            raise ConfigError(f"the model of fold {model} is taken from the cross-validation: add it to the folds")
        logger.info("[cross_corpus] - %s: cross-validating %s in %s", name, ", ".join(chosen), out / name)
        summary = cross_validate(out / name, recipe, chosen, title=name, workers=workers)
        run = train_deployment(out / name, recipe, chosen) if model == "deploy" else out / name / model
        return _in_corpus(summary), load_scoring_model(run)

    trained = {c.name: train(c.name, c.corpus) for c in corpora}
    for pool in pools:
        members = [by_name[m] for m in pool.members]
        pool_folds = (
            list(folds)
            if folds
            else corpus_folds(
                request.with_overrides((_ROOT_KEY, members[0].corpus.root), (_META_KEY, members[0].corpus.meta_data))
            )
        )
        trained[pool.name] = train(pool.name, pool_corpora(out / "pools" / pool.name, members, pool_folds, map_file))
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for row, (cv_cell, row_model) in trained.items():
        members = next((p.members for p in pools if p.name == row), ())
        cells[row] = {}
        for b in corpora:
            if b.name == row:
                cells[row][b.name] = {"in_corpus": True, **cv_cell}
                continue
            if b.name in members:  # trained on (the deployment model: on all of it)
                cells[row][b.name] = {"in_corpus": False, "in_pool": True, **dict.fromkeys(MATRIX_METRICS)}
                continue
            title = f"{row} -> {b.name}"
            result = _cell(row_model, b, out / "cells" / f"{row}_on_{b.name}", split, map_file, title)
            cells[row][b.name] = {
                "in_corpus": False,
                **{key: result.get(key) for key in MATRIX_METRICS},
                "classes": result["label_map"]["classes"] if result.get("label_map") else [],
                "attributes": (result.get("attributes") or {}).get("scored", []),
                "scored": result["utterances"]["scored"],
                "dropped": result["utterances"]["dropped"],
                "source": f"cells/{row}_on_{b.name}/{SCORE_FILE}",
            }
    matrix = {
        "corpora": {c.name: {"root": c.corpus.root, "meta_data": c.corpus.meta_data} for c in corpora},
        "pools": {p.name: {"members": list(p.members), "cross_validation": trained[p.name][0]} for p in pools},
        "model": model,
        "split": split,
        "label_map": str(label_map) if label_map is not None else "defaults",
        "metric": metric
        or ("ua" if any(c["ua"] is not None for row in cells.values() for c in row.values()) else "ccc_mean"),
        "rows": "trained on",
        "columns": "scored on",
        "cells": cells,
    }
    _write_matrix(matrix, out)
    return matrix


def _write_matrix(matrix: dict[str, Any], out: Path) -> None:
    columns, cells = list(matrix["corpora"]), matrix["cells"]
    model = "deployment model" if matrix["model"] == "deploy" else f"{matrix['model']}'s model"
    pools = matrix.get("pools") or {}

    def text(cell: dict[str, Any], key: str) -> str:
        if cell.get("in_pool"):
            return "in pool"
        value = cell.get(key)
        shown = "-" if value is None else f"{value:.3f}" if key == "ccc_mean" else f"{value:.2f}"
        return f"*{shown}*" if cell["in_corpus"] else shown

    def row_name(row: str) -> str:
        return f"{row} (pool: {' + '.join(pools[row]['members'])})" if row in pools else row

    lines = [
        "# Cross-corpus matrix",
        "",
        f"Rows: trained on; columns: scored on. Diagonal (*italic*): the cross-validation's mean over folds, "
        f"over the corpus's own classes. Elsewhere: the row's {model} scored on the column's corpus "
        f"({'every utterance' if matrix['split'] == 'all' else 'its test lists'}), over the classes the label map "
        f"({matrix['label_map']}) gives both; each cell's details in `cells/<row>_on_<column>/score.md`. "
        "A cross-corpus score says how the training procedure transfers, not how good the model is in-corpus.",
    ]
    shown = [
        key for key in MATRIX_METRICS if any(row[b].get(key) is not None for row in cells.values() for b in columns)
    ]
    if "ccc_mean" in shown:
        lines += [
            "",
            "CCC: the mean over the attributes both sides have, on the scored corpus's scale (a model trained on "
            "another scale has its predictions mapped linearly onto it, endpoint to endpoint).",
        ]
    for name, pool in pools.items():
        cv = pool["cross_validation"]
        lines += [
            "",
            f"Pool {name}: trained on {' + '.join(pool['members'])} together (their classes mapped onto "
            f"{', '.join(cv['classes'])}; each fold's test lists never trained on); its cross-validation: "
            f"UA {cv['ua']:.2f}, WA {cv['wa']:.2f} (%); its members' cells are not scored (in pool).",
        ]
    for key in shown or ["ua"]:
        lines += ["", f"## {_METRIC_NAMES[key]}", ""]
        rows = [[row_name(row), *(text(cells[row][b], key) for b in columns)] for row in cells]
        lines += markdown_table([r"trained \ scored", *columns], rows)
    metric = matrix.get("metric", "ua")
    lines += ["", f"![{_METRIC_NAMES[metric]} heatmap](matrix.png)", ""]
    atomic_write_text(out / "matrix.md", "\n".join(lines))
    _plot_matrix(matrix, out / "matrix.png")
    atomic_write_text(out / "matrix.json", json.dumps(matrix, indent=1))


def _plot_matrix(matrix: dict[str, Any], path: Path) -> None:
    """The heatmap of the matrix's metric (UA unless it names another): rows trained on, columns
    scored on, the in-corpus diagonal outlined, a pool's own members and cells without a value grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    columns, rows, metric = list(matrix["corpora"]), list(matrix["cells"]), matrix.get("metric", "ua")
    cells = matrix["cells"]
    values = np.array([[np.nan if (v := cells[a][b].get(metric)) is None else v for b in columns] for a in rows])
    ccc = metric == "ccc_mean"
    # CCC lies in [-1, 1]: a cross-corpus one may be negative
    low, high = (min(0.0, float(np.nanmin(values, initial=0.0))), 1.0) if ccc else (0.0, 100.0)
    fig, ax = plt.subplots(figsize=(2.2 + 1.1 * len(columns), 1.2 + 1.1 * len(rows)), dpi=120)
    colours = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(values, cmap=colours, vmin=low, vmax=high)
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            value = values[i, j]
            if np.isnan(value):
                label = "in pool" if cells[row][column].get("in_pool") else "-"
            else:
                label = f"{value:.3f}" if ccc else f"{value:.1f}"
            dark = not np.isnan(value) and value < low + 0.6 * (high - low)
            ax.text(j, i, label, ha="center", va="center", color="white" if dark else "black")
            if row == column:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("scored on")
    ax.set_ylabel("trained on")
    ax.set_title(f"{_METRIC_NAMES[metric]}\noutlined: in-corpus cross-validation", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
