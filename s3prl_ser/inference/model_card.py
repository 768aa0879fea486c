"""The model card (``README.md``) of a model directory: YAML metadata, then what the model is.

It states the corpus and protocol, the held-out scores of the fold model(s) it was built from
(per-fold WA/UA from each run's ``test_<fold>_metrics.json``; for a model trained with
attributes, each attribute's CCC and their mean), the training configuration and the package
versions of the training run and of the export. A deployment model's card states that it has
no held-out score, gives its schedule, and holds no WA/UA or CCC at all.

The metadata is built with ``huggingface_hub.ModelCardData`` (:func:`card_metadata`): license,
corpus, metrics, tags and a ``model-index`` with one ``EvalResult`` per fold and metric (and,
with two or more folds, their mean), as ``huggingface_hub.ModelCard.load`` parses it; a
deployment model's holds no ``model-index``. An attribute's CCC is metric type ``ccc`` with the
attribute as its config (``mean``: the mean over attributes).

Names that come from the data (class labels, fold names, paths, the title) are escaped for
Markdown and HTML (:func:`markdown_text`, :func:`markdown_code`), so a label such as
``<img src=x onerror=...>`` or ``*x*|y`` is shown as written, never rendered.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCardData

from s3prl_ser.markdown import markdown_table
from s3prl_ser.versions import installed_versions

__all__ = ["FoldRecord", "card_metadata", "markdown_text", "markdown_code", "render_card", "package_versions"]

FoldRecord = dict[str, Any]
"""``{"fold", "run_dir", "checkpoint", "averaged", "test": {"wa", "ua", "macro_f1", "num_utterances"}
(with attributes also ``"ccc": {attribute: CCC}`` and ``"ccc_mean"``) | None,
"config": the run's config, "args": {...}, "versions": the run's versions record | None,
"protocol": the checkpoint's fold protocol record | None}``."""

LICENSE = "apache-2.0"  # the project's license (pyproject.toml); runs record none of their own

# (metrics-file key, Hub metric type, metric config, metric name): WA, UA (macro recall), macro-F1
_METRICS = (
    ("wa", "accuracy", None, "WA (weighted accuracy)"),
    ("ua", "unweighted_accuracy", None, "UA (unweighted accuracy)"),
    ("macro_f1", "f1", "macro", "macro-F1"),
)

_PACKAGES = ("s3prl-ser", "s3prl", "torch", "torchaudio", "numpy", "soundfile", "safetensors")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a model directory depends on."""
    return installed_versions(_PACKAGES)


def markdown_text(value: Any) -> str:
    """``value`` as literal Markdown text within a line, also inside a table cell: HTML special
    characters as entities, inline Markdown punctuation backslash-escaped, line breaks as spaces.

    Example:
        >>> print(markdown_text("<b>*a*|b_1.5</b>"))
        &lt;b&gt;\\*a\\*\\|b\\_1.5&lt;/b&gt;
    """
    text = re.sub(r"[\r\n]+", " ", str(value))
    text = re.sub(r"([\\`*_{}\[\]()|~])", r"\\\1", text)
    return html.escape(text, quote=True)


def markdown_code(value: Any) -> str:
    """``value`` as an inline code span (outside tables): a backtick fence longer than any run of
    backticks in it (code spans show HTML and Markdown literally), line breaks as spaces.

    Example:
        >>> markdown_code("a`b")
        '`` a`b ``'
    """
    text = re.sub(r"[\r\n]+", " ", str(value))
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", text)), default=0))
    return f"{fence} {text} {fence}" if "`" in text else f"{fence}{text}{fence}"


def _code_block(text: str, info: str) -> list[str]:
    """A fenced code block whose fence no line of ``text`` can close."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", text)), default=0))
    return [fence + info, text, fence]


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _ccc(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"  # NaN: undefined on that fold


def _ccc_metrics(test: Mapping[str, Any]) -> list[tuple[str, str, float | None]]:
    """``(metric config, metric name, value)`` of a fold's CCCs: each attribute's, then ``mean``."""
    found = [(name, f"CCC {name}", value) for name, value in (test.get("ccc") or {}).items()]
    return found + [("mean", "CCC (mean over attributes)", test.get("ccc_mean"))] if found else []


def _corpus_name(folds: Sequence[FoldRecord]) -> str | None:
    """The corpus as the fold protocol names it (``IEMOCAP``, ``builtin (synthetic IEMOCAP
    layout)``, ...); None when no record names it."""
    names = [(f.get("protocol") or {}).get("corpus_name") for f in folds]
    return next((name for name in names if name), None)


def card_metadata(
    title: str, kind: str, class_names: Sequence[str], folds: Sequence[FoldRecord], extra: Mapping[str, Any]
) -> ModelCardData:
    """The card's YAML metadata (arguments as in :func:`render_card`).

    ``model-index`` holds, per fold with test metrics, one ``EvalResult`` per metric its
    metrics file has (WA as ``accuracy``, UA as ``unweighted_accuracy``, ``f1``/``macro``;
    CCC as ``ccc`` with the attribute, or ``mean``, as config), the value as recorded (a
    fraction), ``dataset_split`` the fold; with two or more folds also their mean
    (``dataset_split`` ``mean over N folds``). A deployment model has none.

    Example:
        >>> data = card_metadata("m", "fold", ["neu", "ang"], [{"fold": "fold1", "test": {"wa": 0.5, "ua": 0.25},
        ...     "args": {"upstream": "fbank"}, "protocol": {"corpus_name": "IEMOCAP"}}], {})
        >>> [(r.dataset_split, r.metric_type, r.metric_value) for r in data.eval_results]
        [('fold1', 'accuracy', 0.5), ('fold1', 'unweighted_accuracy', 0.25)]
        >>> data.datasets, data.license, data.tags[-1]
        (['IEMOCAP'], 'apache-2.0', 'fbank')
    """
    scored = [] if kind == "deployment" else [f for f in folds if f.get("test")]  # a deployment model: never a score
    corpus = _corpus_name(folds)
    upstreams = str((folds[0].get("args") or {}).get("upstream") or "").split(",")
    tags = ["speech-emotion-recognition", "audio-classification", "s3prl"]
    tags += [name for name in dict.fromkeys(upstreams) if name and name not in tags]
    dataset = corpus or "unknown corpus"

    def result(split: str, metric_type: str, config: str | None, name: str, value: float) -> EvalResult:
        return EvalResult(
            task_type="audio-classification",
            task_name="Speech emotion recognition",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=metric_type,
            metric_config=config,
            metric_name=name,
            metric_value=value,
        )

    # per fold: (metric type, config, name) -> value; CCC values NaN on a fold (constant truth) are left out
    scores = [
        {
            (metric, config, name): f["test"][key]
            for key, metric, config, name in _METRICS
            if f["test"].get(key) is not None
        }
        | {("ccc", config, name): value for config, name, value in _ccc_metrics(f["test"]) if _ccc(value) != "n/a"}
        for f in scored
    ]
    results = [result(str(f["fold"]), *key, value) for f, fold in zip(scored, scores) for key, value in fold.items()]
    if len(scored) > 1:
        for key in dict.fromkeys(k for fold in scores for k in fold):
            values = [fold[key] for fold in scores if key in fold]
            if len(values) == len(scored):  # a mean over some of the folds would mislabel them
                results.append(result(f"mean over {len(values)} folds", *key, sum(values) / len(values)))
    present = {r.metric_type for r in results}
    return ModelCardData(
        license=LICENSE,
        library_name="s3prl-ser",
        pipeline_tag="audio-classification",
        tags=tags,
        datasets=[corpus] if corpus else None,
        metrics=[metric for metric in (*(m for _, m, _, _ in _METRICS), "ccc") if metric in present] or None,
        model_name=str(title) if results else None,
        eval_results=results or None,
        s3prl_ser={"kind": kind, "classes": list(class_names), "folds": [f["fold"] for f in folds], **extra},
    )


def render_card(
    title: str, kind: str, class_names: Sequence[str], folds: Sequence[FoldRecord], extra: Mapping[str, Any]
) -> str:
    """Markdown with YAML front matter (Hugging Face Hub model card conventions).

    Args:
        title: model name.
        kind: ``"fold"`` (one fold's reported model), ``"ensemble"`` (fold models averaged) or
            ``"deployment"`` (trained on every fold's utterances: no held-out score).
        class_names: output classes in order.
        folds: the fold runs the model was built from (for a deployment model: its one run).
        extra: more facts for the metadata (e.g. ``onnx``; for a deployment model ``schedule``,
            the :func:`~s3prl_ser.experiments.deployment.deployment_schedule` record; for a model
            with attributes ``attribute_scale``, ``{name: [low, high]}``).

    Example:
        >>> card = render_card("m", "fold", ["neu", "ang"], [{"fold": "fold1", "test": {"wa": 0.5, "ua": 0.25,
        ...     "num_utterances": 4}, "config": {}, "args": {"upstream": "fbank"}, "versions": None}], {})
        >>> card.startswith("---\\n") and "| fold1 | 50.00 | 25.00 | 4 |" in card
        True
    """
    deployment = kind == "deployment"
    scored = [] if deployment else [f for f in folds if f.get("test")]  # a deployment model: never a score
    first = folds[0]
    datarc = (first.get("config") or {}).get("downstream_expert", {}).get("datarc", {})
    front = card_metadata(title, kind, class_names, folds, extra).to_yaml()
    lines = ["---", front, "---", "", f"# {markdown_text(title)}", ""]
    what = {
        "fold": f"the reported model of {markdown_text(first['fold'])} ("
        + ("its k best dev checkpoints averaged" if first.get("averaged", True) else "its best dev checkpoint")
        + ")",
        "ensemble": f"an ensemble of {len(folds)} fold models; class probabilities"
        + (" and attribute values" if extra.get("attribute_scale") else "")
        + " are averaged",
        "deployment": "a deployment model: the cross-validated training procedure run once more on every "
        "utterance of the corpus (never an official test set), "
        + ("its k best dev checkpoints averaged" if first.get("averaged", True) else "its best dev checkpoint"),
    }[kind]
    scale = extra.get("attribute_scale") or {}
    outputs = [f"Classes (output order): {', '.join(map(markdown_text, class_names))}."] if class_names else []
    if scale:
        outputs.append(
            "Attributes (values on the corpus's scale): "
            + ", ".join(f"{markdown_text(name)} {lo:g}-{hi:g}" for name, (lo, hi) in scale.items())
            + "."
        )
    lines += [
        f"Speech emotion recognition with s3prl-ser: {what}.",
        "",
        " ".join(outputs) + " Input: any audio; it is resampled to 16 kHz mono.",
        "",
        "## Corpus and protocol",
        "",
        f"- meta data: {markdown_code(datarc.get('meta_data'))} (corpus root {markdown_code(datarc.get('root'))}; "
        "paths outside the training run are given by their last component)",
    ]
    if deployment:
        lines += [
            "- training pool: the union of every fold's utterances (a corpus with an official test set: its "
            "train and dev lists, never the test set); no test set",
            f"- checkpoint selection: on a dev set carved out of that pool by the "
            f"{markdown_code(datarc.get('split', 'superb'))} rule (`datarc.split`)",
        ]
    else:
        lines += [
            "- cross-validation: each fold is tested on utterances held out of its training and dev data "
            "(IEMOCAP: leave one session out)",
            f"- train/dev split: {markdown_code(datarc.get('split', 'superb'))}",
        ]
    lines += ["", "## Held-out scores", ""]
    if deployment:
        lines += [
            "No held-out score: this model was trained on every fold's utterances, so no data are left to score "
            "it on. The cross-validation's scores estimate the training procedure, not this model. Never use it "
            "as an upstream, starting point or fold model of a cross-validation (the fold guard refuses it).",
        ]
        schedule = extra.get("schedule")
        lines += ["", "## Schedule", ""]
        if schedule:
            lines += [
                f"- total steps: {schedule['total_steps']} ({markdown_text(schedule['rule'])})",
                *(
                    f"- {markdown_text(fold)}: {info['total_steps']} steps, checkpoints kept at steps "
                    f"{markdown_text(info['selected_steps'])}"
                    for fold, info in schedule["folds"].items()
                ),
            ]
        else:
            lines += ["- not recorded (no deployment.json beside the run)"]
    elif scored:
        if class_names:
            lines += markdown_table(
                ["fold", "WA (%)", "UA (%)", "test utterances"],
                [
                    [
                        markdown_text(f["fold"]),
                        _percent(f["test"].get("wa")),
                        _percent(f["test"].get("ua")),
                        markdown_text(f["test"].get("num_utterances", "n/a")),
                    ]
                    for f in scored
                ],
            )
        if any(_ccc_metrics(f["test"]) for f in scored):
            lines += [
                "",
                "Concordance correlation coefficient (CCC) of each attribute on the fold's test utterances:",
                "",
            ]
            lines += _ccc_table(scored)
        if kind == "ensemble":
            lines += [
                "",
                "Each row is one member model on its own fold's test session. The ensemble itself has "
                "no held-out score: every session is in some member's training data.",
            ]
    else:
        lines += ["No held-out score: no test metrics were found beside the checkpoint."]
    args = first.get("args") or {}
    lines += [
        "",
        "## Training",
        "",
        f"- upstream: {markdown_code(args.get('upstream'))}"
        + (f" ({markdown_code('-k ' + str(args.get('upstream_ckpt')))})" if args.get("upstream_ckpt") else ""),
        f"- upstream fine-tuned in this stage: {bool(args.get('upstream_trainable'))}",
        f"- seed: {markdown_text(args.get('seed'))}",
        "",
        f"<details><summary>configuration of the {'' if deployment else '(first) fold '}run</summary>",
        "",
        *_code_block(yaml.safe_dump(first.get("config") or {}, sort_keys=False).strip(), "yaml"),
        "",
        "</details>",
        "",
        "## Versions",
        "",
        "Training run: " + _versions_text((first.get("versions") or {}).get("packages")),
        "",
        "Export: " + _versions_text(package_versions()),
        "",
        "## Use",
        "",
        "```python",
        "from s3prl_ser.inference import EmotionRecognizer",
        'recognizer = EmotionRecognizer.from_pretrained("THIS_DIRECTORY")',
        'recognizer.predict("speech.wav")',
        *(['recognizer.predict("speech.wav").attributes  # on the corpus\'s scale'] if scale else []),
        "```",
        "",
    ]
    return "\n".join(lines)


def _ccc_table(scored: Sequence[FoldRecord]) -> list[str]:
    """Each fold's CCC per attribute and their mean, and with two or more folds the mean over folds."""
    folds = [{config: value for config, _, value in _ccc_metrics(f["test"])} for f in scored]
    names = list(folds[0])  # the attributes, then "mean"
    rows = [[markdown_text(f["fold"]), *(_ccc(fold.get(n)) for n in names)] for f, fold in zip(scored, folds)]
    if len(folds) > 1:
        columns = [[fold.get(n) for fold in folds] for n in names]
        rows.append(
            [f"mean over {len(folds)} folds", *(_ccc(sum(v) / len(v)) if None not in v else "n/a" for v in columns)]
        )
    return markdown_table(["fold", *(f"CCC {markdown_text(n)}" for n in names[:-1]), "CCC mean"], rows)


def _versions_text(packages: Mapping[str, Any] | None) -> str:
    if not packages:
        return "not recorded"
    return ", ".join(f"{markdown_text(k)} {markdown_text(v)}" for k, v in packages.items() if v)
