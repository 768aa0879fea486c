"""The paper's Table 1: experiments 1-11, 5-fold CV each, beside the paper's numbers (:class:`Table1Spec`,
:func:`run_table1`; the command is ``python -m s3prl_ser.cli.table1``).

The speech upstreams default to the paper's: Robust wav2vec 2.0 Large
(``wav2vec2_large_lv60_cv_swbd_fsh``, the paper's ref. [14]) and HuBERT Large
(``hubert_large_ll60k``; the paper names no size); ``--base`` takes ``wav2vec2`` and ``hubert``.
For every experiment it runs what the experiment needs, skipping what already finished:

1. stage 1 (:func:`s3prl_ser.finetuning.stage.fine_tune`, as ``python -m upstream_ft``) per fold, once per base model (``OUT_DIR/upstream_ft/<base>``):
   W2V2 / HuBERT / BERT fine-tuned with mean pooling + linear; the 5 best dev checkpoints
   averaged (``<base>/<fold>``, experiments 3-11) and the same run's single best
   (``<base>/best/<fold>``, experiments 1-2), as in the paper;
2. stage 2, :func:`~s3prl_ser.experiments.cross_validation.cross_validate` with ``downstream/emotion_ecapa/paper/exp<N>.yaml``
   on the fold's own fine-tuned upstream(s) (``OUT_DIR/exp<N>``);

then writes ``OUT_DIR/table1.md`` and ``OUT_DIR/table1.json``: WA/UA mean ± std over folds per
experiment, with the paper's WA/UA in adjacent columns. ``targets`` (``--targets attributes|both``)
runs the same experiments, both stages, on continuous attributes instead of or beside the
categories (:func:`target_overrides`); the tables then give each attribute's test CCC and their
mean (mean ± std over folds) beside WA/UA, which the paper has no counterpart for. ``superb`` (``--superb fbank,hubert,...``) also runs
SUPERB's ER protocol for stock upstreams (frozen, 256-d projector, mean pooling + linear, best dev checkpoint, no
averaging; ``OUT_DIR/superb/<name>``), and ``OUT_DIR/superb_er.md`` puts every WA run so far
beside the public SUPERB ER leaderboard. Upstreams are s3prl hub entries (``NAME`` or
``NAME:CKPT``, e.g. ``hubert_local:tiny.pt``); ``base_config`` (``--base-config``) replaces each experiment's
runner/optimizer/size settings by another config's (e.g. ``config_builtin.yaml``), keeping every
key the experiment's file sets and its aggregator, fusion, averaging and text settings.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from s3prl_ser.config import ConfigError, Override, load_config, read_yaml
from s3prl_ser.data.attributes import DEFAULT_ATTRIBUTES
from s3prl_ser.data.emotion_dataset import SESSION_CORPORA
from s3prl_ser.experiments.cross_validation import cross_validate
from s3prl_ser.experiments.launch import RunRequest
from s3prl_ser.fileio import atomic_write_json, atomic_write_text, read_json
from s3prl_ser.finetuning.hub_entries import FT_CHECKPOINT
from s3prl_ser.finetuning.stage import StageResult, fine_tune, stage1_request, summary_table
from s3prl_ser.markdown import markdown_table
from s3prl_ser.training.cv_report import mean_std_text
from s3prl_ser.training.targets import TargetSpec
from s3prl_ser.upstreams.registry import DOWNSTREAM_DIR

__all__ = [
    "Experiment",
    "EXPERIMENTS",
    "SUPERB_ER",
    "PAPER_UPSTREAMS",
    "BASE_UPSTREAMS",
    "SUPERB_PROTOCOL",
    "parse_experiments",
    "model_overrides",
    "TARGET_KINDS",
    "table1_targets",
    "target_overrides",
    "write_tables",
    "stage1",
    "Table1Spec",
    "run_table1",
]

logger = logging.getLogger(__name__)

PAPER_DIR = DOWNSTREAM_DIR / "emotion_ecapa" / "paper"
# The paper's "latest release of Wav2Vec 2.0 [14]" is Robust wav2vec 2.0; it names no HuBERT
# size, and its state-of-the-art claim suggests Large.
PAPER_UPSTREAMS = {"wav2vec2": "wav2vec2_large_lv60_cv_swbd_fsh", "hubert": "hubert_large_ll60k"}
BASE_UPSTREAMS = {"wav2vec2": "wav2vec2", "hubert": "hubert"}


@dataclass(frozen=True)
class Experiment:
    """One row of Table 1. ``streams`` are bases: wav2vec2 / hubert (fine-tuned), fbank, bert."""

    number: int
    set: str
    modality: str
    feature: str
    ft: bool
    upstream_avg: bool
    aggregator: str
    downstream_avg: bool
    paper_wa: float
    paper_ua: float
    streams: tuple[str, ...]


EXPERIMENTS = {
    e.number: e
    for e in (
        Experiment(1, "1.A", "S", "W2V2", True, False, "Mean", False, 74.09, 74.56, ("wav2vec2",)),
        Experiment(2, "1.A", "S", "huBERT", True, False, "Mean", False, 72.99, 73.45, ("hubert",)),
        Experiment(3, "1.A", "S", "W2V2", True, True, "Mean", True, 76.47, 76.86, ("wav2vec2",)),
        Experiment(4, "1.A", "S", "huBERT", True, True, "Mean", True, 75.20, 75.80, ("hubert",)),
        Experiment(5, "1.B", "S", "W2V2", True, True, "ECAPA", True, 76.58, 77.07, ("wav2vec2",)),
        Experiment(6, "1.B", "S", "huBERT", True, True, "ECAPA", True, 75.56, 76.78, ("hubert",)),
        Experiment(7, "1.B", "S", "huBERT + W2V2", True, True, "ECAPA", True, 77.36, 77.76, ("hubert", "wav2vec2")),
        Experiment(8, "1.B", "S", "huBERT & W2V2", True, True, "ECAPA", True, 77.04, 77.52, ("hubert", "wav2vec2")),
        Experiment(9, "2", "S", "Fbank", False, False, "ECAPA", True, 56.52, 57.60, ("fbank",)),
        Experiment(10, "2", "T", "BERT", True, True, "ECAPA", True, 69.34, 70.07, ("bert",)),
        Experiment(11, "2", "S + T", "Fbank & BERT", True, True, "ECAPA", True, 70.56, 71.46, ("fbank", "bert")),
    )
}

# SUPERB ER leaderboard (Oct 2021) and the WavLM paper, Table 3: accuracy = WA, frozen upstreams.
SUPERB_ER = {
    "fbank": 35.39,
    "wav2vec2": 63.43,
    "wav2vec2_large_ll60k": 65.64,
    "hubert": 64.92,
    "hubert_large_ll60k": 67.62,
    "wavlm_base": 65.94,
    "wavlm_base_plus": 67.98,
    "wavlm_large": 70.03,
    "distilhubert": 63.02,
}


def parse_experiments(spec: str) -> list[int]:
    """``"1-4,7,9-11"`` -> ``[1, 2, 3, 4, 7, 9, 10, 11]`` (each must be a Table 1 row); ``"none"`` -> ``[]``."""
    if spec.strip().lower() == "none":
        return []
    numbers: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ConfigError(f"--experiments: cannot read {part!r} (use e.g. 1-11 or 3,5,7)")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        numbers.update(range(low, high + 1))
    unknown = sorted(numbers - set(EXPERIMENTS))
    if unknown or not numbers:
        raise ConfigError(f"--experiments: Table 1 has experiments 1-11, got {unknown or spec!r}")
    return sorted(numbers)


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and non-dicts are leaves)."""
    leaves: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def model_overrides(config_path: Path) -> list[Override]:
    """An ``exp<N>.yaml`` as overrides that survive ``base_config``: every key the file
    sets, and the experiment-defining keys it leaves to the task's defaults (aggregator,
    fusion, checkpoint averaging, the text stream but its encoder)."""
    own = read_yaml(config_path)
    expert = load_config(DOWNSTREAM_DIR / "emotion_ecapa" / "config.yaml", config_path)["downstream_expert"]
    keys = {
        "downstream_expert.modelrc.aggregator": expert["modelrc"]["aggregator"],
        "downstream_expert.modelrc.fusion": expert["modelrc"].get("fusion"),
    }
    keys.update({f"downstream_expert.checkpoint_averaging.{k}": v for k, v in expert["checkpoint_averaging"].items()})
    keys.update({f"downstream_expert.text.{k}": v for k, v in (expert.get("text") or {}).items() if k != "encoder"})
    keys.update(_leaves(own))
    return [(f"config.{key}", value) for key, value in keys.items()]


TARGET_KINDS = ("categories", "attributes", "both")


def table1_targets(kind: str, attributes: Sequence[str] = DEFAULT_ATTRIBUTES) -> TargetSpec:
    """What every run of the table learns: ``categories`` (the paper), ``attributes`` (regressed
    alone) or ``both`` (multi-task, selected by dev WA as the paper's runs); the defaults of
    :class:`~s3prl_ser.training.targets.TargetSpec` for the rest (1 - CCC loss).

    Example:
        >>> table1_targets("attributes", ["arousal"]).selection_metric, table1_targets("categories") == TargetSpec()
        ('ccc_mean', True)
    """
    if kind not in TARGET_KINDS:
        raise ConfigError(f"--targets must be one of {', '.join(TARGET_KINDS)}, got {kind!r}")
    if kind == "categories":
        return TargetSpec()
    return TargetSpec(categories=kind == "both", attributes=tuple(attributes))


def target_overrides(targets: TargetSpec, section: str) -> list[Override]:
    """``targets`` as overrides of the config section ``section`` (stage 2:
    ``config.downstream_expert.targets``, stage 1: ``config.targets``); none for categories only, so
    the paper's runs keep exactly their configs.

    Example:
        >>> target_overrides(TargetSpec(), "config.targets")
        []
        >>> target_overrides(table1_targets("attributes", ["arousal"]), "config.targets")[:2]
        [('config.targets.categories', False), ('config.targets.attributes', ['arousal'])]
    """
    if targets == TargetSpec():
        return []
    record = targets.to_dict()
    return [(f"{section}.{key}", record[key]) for key in (f.name for f in fields(TargetSpec))]


def _entry(spec: str) -> tuple[str, str | None]:
    name, _, ckpt = spec.partition(":")
    return name, ckpt or None


def stage1(
    upstream: str,
    upstream_ckpt: str | None,
    ft_dir: Path,
    folds: Sequence[str],
    *,
    config_path: str | Path | None = None,
    overrides: Sequence[Override] = (),
    seed: int | None = None,
    device: str = "cpu",
) -> StageResult:
    """Stage 1 as ``python -m upstream_ft -u UPSTREAM [-k CKPT] -p FT_DIR --folds ... [-c] [-o] [--seed]``
    runs it: the config (defaults, the ``config_path`` file, ``overrides``, ``seed``) checked, then
    :func:`~s3prl_ser.finetuning.stage.fine_tune`; prints its per-fold table.

    Raises:
        ConfigError: a bad config; and what :func:`~s3prl_ser.finetuning.stage.fine_tune` raises.
    """
    request = stage1_request(
        upstream,
        upstream_ckpt,
        ft_dir,
        folds=folds,
        config_path=config_path,
        overrides=overrides,
        seed=seed,
        device=device,
    )
    result = fine_tune(request)
    if result.is_leader:
        for fold, fold_dir in result.skipped.items():
            logger.info(f"[upstream_ft] {fold}: already exported to {fold_dir / FT_CHECKPOINT}, skipped")
        logger.info(summary_table(result.records, result.skipped))
    return result


def _mean_std(summary: dict, metric: str) -> str:
    """``mean ± std`` over folds of WA, UA (``metric``), or CCC (``ccc_<attribute>``, ``ccc_mean``);
    an official test set's one number has no spread to show; ``-`` for what the run did not learn."""
    if metric.startswith("ccc_"):
        attributes = summary.get("attributes") or {}
        name = metric[len("ccc_") :]
        stats = (
            attributes.get("ccc_mean") if name == "mean" else (attributes.get("mean") or {}).get(name, {}).get("ccc")
        )
        digits = 3
    else:
        stats, digits = summary.get(metric), 2
    if stats is None:
        return "-"
    if (summary.get("corpus") or {}).get("official_test"):
        return f"{stats['mean']:.{digits}f}"
    return mean_std_text(stats, digits)


def _attribute_names(summaries: Iterable[dict | None]) -> list[str]:
    """The attributes any of the runs learned, in their first run's order."""
    names: list[str] = []
    for summary in summaries:
        for name in ((summary or {}).get("attributes") or {}).get("names", []):
            if name not in names:
                names.append(name)
    return names


def _protocol_note(summaries: dict) -> str:
    """The table's footnote: the corpus and its folds, as the runs' reports record them."""
    corpora = {json.dumps(s.get("corpus") or {}, sort_keys=True) for s in summaries.values() if s}
    record = json.loads(corpora.pop()) if len(corpora) == 1 else {}
    learned = [s for s in summaries.values() if s]
    measures = " and ".join(
        kind
        for kind, present in (("WA/UA", any("wa" in s for s in learned)), ("CCC", _attribute_names(learned)))
        if present
    )
    measures = measures or "WA/UA"
    if record.get("official_test"):
        return (
            f"{measures} on {record['name']}'s official test set {record['official_test']} "
            "(one split: no std over folds)."
        )
    if record.get("name") and record["name"] not in SESSION_CORPORA:
        return f"{measures}: mean ± sample std over the folds run ({record['name']}, {record.get('num_folds')} folds)."
    return f"{measures}: mean ± sample std over the folds run (5-fold leave-one-session-out)."


def _row(experiment: Experiment, summary: dict | None, attributes: Sequence[str] = ()) -> list[object]:
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    metrics = ["wa", "ua", *(f"ccc_{name}" for name in attributes), *(["ccc_mean"] if attributes else [])]
    ours = [_mean_std(summary, m) if summary else "not run" for m in metrics]
    return [
        experiment.set,
        experiment.number,
        experiment.modality,
        experiment.feature,
        yes(experiment.ft),
        yes(experiment.upstream_avg),
        experiment.aggregator,
        "Linear",
        yes(experiment.downstream_avg),
        *ours,
        f"{experiment.paper_wa:.2f}",
        f"{experiment.paper_ua:.2f}",
    ]


SUPERB_PROTOCOL: tuple[Override, ...] = (
    ("config.downstream_expert.modelrc.aggregator", "mean"),
    ("config.downstream_expert.modelrc.projector_dim", 256),  # s3prl's emotion downstream
    ("config.downstream_expert.modelrc.fusion", None),
    ("config.downstream_expert.checkpoint_averaging.average", False),
    ("config.downstream_expert.datarc.bucket_by_length", False),  # s3prl's random batches
)


def write_tables(
    out_dir: Path, summaries: dict[int, dict | None], note: str, superb: dict[str, dict] | None = None
) -> dict[str, Path]:
    """``table1.md``/``table1.json`` (every experiment, run or not) and ``superb_er.md``
    (the SUPERB-protocol runs in ``superb``: upstream name -> summary). Runs with attributes add a
    test CCC column per attribute and their mean (``-`` for a run without them; WA/UA ``-`` for
    a run without categories)."""
    attributes = _attribute_names(summaries.values())
    header = ["Set", "#", "Input", "Feature", "FT", "AVG", "AGG", "Classifier", "AVG", "WA (%)", "UA (%)"]
    header += [*(f"CCC {name}" for name in attributes), *(["CCC mean"] if attributes else [])]
    lines = ["# Table 1 (Morais et al., ICASSP 2022) reproduced", "", note, ""]
    lines += markdown_table(
        [*header, "paper WA", "paper UA"],
        [_row(EXPERIMENTS[n], summaries.get(n), attributes) for n in sorted(EXPERIMENTS)],
    )
    lines += ["", _protocol_note(summaries), ""]
    if attributes:
        lines += [
            "The paper reports categories only (WA/UA on IEMOCAP): the CCC columns have no published "
            "counterpart in it; docs/table1.md lists the attribute figures published elsewhere.",
            "",
        ]
    paths = {"md": out_dir / "table1.md", "json": out_dir / "table1.json", "superb": out_dir / "superb_er.md"}
    atomic_write_text(paths["md"], "\n".join(lines))
    atomic_write_json(
        paths["json"],
        {str(n): {"experiment": vars(EXPERIMENTS[n]), "ours": summaries.get(n)} for n in sorted(EXPERIMENTS)},
        indent=1,
    )
    superb = superb or {}
    with_ccc = bool(_attribute_names(superb.values()))
    rows = []
    for name in list(SUPERB_ER) + sorted(set(superb) - set(SUPERB_ER)):
        ours = superb.get(name)
        leaderboard = f"{SUPERB_ER[name]:.2f}" if name in SUPERB_ER else "-"
        if ours:
            ua = f"{ours['ua']['mean']:.2f}" if "ua" in ours else "-"
            cells = [_mean_std(ours, "wa"), ua, *([_mean_std(ours, "ccc_mean")] if with_ccc else [])]
        else:
            cells = ["not run", "", *([""] if with_ccc else [])]
        rows.append([name, leaderboard, *cells])
    lines = ["# SUPERB ER view (frozen upstream, accuracy = WA)", "", note, ""]
    header = ["upstream", "SUPERB ER acc", "this project, SUPERB protocol (WA)", "UA"]
    lines += markdown_table([*header, *(["CCC mean"] if with_ccc else [])], rows)
    lines += [
        "",
        "SUPERB protocol: frozen upstream, weighted sum of layers, 256-d projector, mean pooling + linear, best dev "
        "checkpoint, no averaging, 5-fold mean. s3prl's fbank is normalised per utterance, so mean pooling "
        "sees a constant and predicts one class.",
        "",
    ]
    atomic_write_text(paths["superb"], "\n".join(lines))
    return paths


@dataclass(frozen=True)
class Table1Spec:
    """What :func:`run_table1` runs, and where.

    Attributes:
        out_dir: output directory (``exp<N>/``, ``upstream_ft/``, ``superb/``, the tables).
        experiments: Table 1 rows to run (:func:`parse_experiments`).
        folds: the folds every run covers.
        root: the corpus release root (set for both stages).
        meta: its meta data directory (set for both stages).
        overrides: for every stage-2 run, after the corpus and the experiment's own.
        ft_overrides: for every stage-1 run, after the corpus.
        wav2vec2, hubert: the speech base models to fine-tune, s3prl hub entries ``NAME`` or
            ``NAME:CKPT`` (default: the paper's, :data:`PAPER_UPSTREAMS`).
        bert: the base text encoder directory (Hugging Face format); experiments 10-11 need it.
        base_config: a config whose runner/optimizer/size settings replace each experiment's
            (:func:`model_overrides` keeps the experiment's keys).
        ft_config: a stage-1 ``-c`` file.
        device: the device of every run.
        note: a line under the tables' titles.
        superb: stock upstreams (``NAME`` or ``NAME:CKPT``) to run with SUPERB's ER protocol.
        targets: what every run learns, both stages (:func:`table1_targets`; default: the paper's categories).
    """

    out_dir: Path
    experiments: tuple[int, ...]
    folds: tuple[str, ...]
    root: Path
    meta: Path
    overrides: tuple[Override, ...] = field(default=(), hash=False)
    ft_overrides: tuple[Override, ...] = field(default=(), hash=False)
    wav2vec2: str = PAPER_UPSTREAMS["wav2vec2"]
    hubert: str = PAPER_UPSTREAMS["hubert"]
    bert: str | None = None
    base_config: str | None = None
    ft_config: str | None = None
    device: str = "cpu"
    note: str = ""
    superb: tuple[str, ...] = ()
    targets: TargetSpec = TargetSpec()


def run_table1(spec: Table1Spec) -> dict[int, dict]:
    """Run (or resume) the experiments of ``spec`` and write the tables; return the summaries run.

    Raises:
        ConfigError: an experiment needs a base model ``spec`` does not name, or a bad config;
            and what stage 1 and :func:`~s3prl_ser.experiments.cross_validation.cross_validate` raise.
    """
    root, meta = Path(spec.root).resolve(), Path(spec.meta).resolve()
    overrides = (
        ("config.downstream_expert.datarc.root", str(root)),
        ("config.downstream_expert.datarc.meta_data", str(meta)),
        *target_overrides(spec.targets, "config.downstream_expert.targets"),
        *spec.overrides,
    )
    ft_overrides = (
        ("config.datarc.root", str(root)),
        ("config.datarc.meta_data", str(meta)),
        *target_overrides(spec.targets, "config.targets"),
        *spec.ft_overrides,
    )

    bases = {"wav2vec2": spec.wav2vec2, "hubert": spec.hubert, "bert": spec.bert}
    summaries: dict[int, dict] = {}
    for number in spec.experiments:
        experiment = EXPERIMENTS[number]
        config = PAPER_DIR / f"exp{number}.yaml"
        names, ckpts, text_dir = [], [], None
        for stream in experiment.streams:
            if stream == "fbank":
                names.append("fbank")
                ckpts.append("")
                continue
            if bases[stream] is None:
                raise ConfigError(f"experiment {number} needs --{stream} (a base model to fine-tune)")
            ft_dir = spec.out_dir / "upstream_ft" / stream
            # The k best averaged in ft_dir/<fold> and, from the same run, the single best in ft_dir/best/<fold>.
            name, ckpt = ("text", bases[stream]) if stream == "bert" else _entry(bases[stream])
            stage1(
                name,
                ckpt,
                ft_dir,
                spec.folds,
                config_path=spec.ft_config,
                overrides=(*ft_overrides, ("config.checkpoint_averaging.export_best", True)),
                device=spec.device,
            )
            if not experiment.upstream_avg:
                ft_dir = ft_dir / "best"
            if stream == "bert":
                text_dir = ft_dir
            else:
                names.append(f"{stream}_ft_avg")
                ckpts.append(str(ft_dir))
        if not names:  # text only: the runner still needs a (cheap) speech upstream, which is ignored
            names, ckpts = ["fbank"], [""]
        exp_overrides = [*overrides]
        if spec.base_config:
            exp_overrides += model_overrides(config)
        if text_dir is not None:
            exp_overrides.append(("config.downstream_expert.text.encoder", str(text_dir)))
        request = RunRequest(
            upstream=",".join(names),
            upstream_ckpt=",".join(ckpts),
            downstream="emotion_ecapa",
            device=spec.device,
            config=spec.base_config or str(config),
            overrides=tuple(exp_overrides),
        )
        summaries[number] = cross_validate(
            spec.out_dir / f"exp{number}",
            request,
            spec.folds,
            title=f"Table 1, experiment {number}: {experiment.feature}",
        )
    for entry in spec.superb:
        name, ckpt = _entry(entry)
        request = RunRequest(
            upstream=name,
            upstream_ckpt=ckpt,
            downstream="emotion_ecapa",
            device=spec.device,
            config=spec.base_config or str(DOWNSTREAM_DIR / "emotion_ecapa" / "config.yaml"),
            overrides=(*overrides, *SUPERB_PROTOCOL),
        )
        cross_validate(spec.out_dir / "superb" / name, request, spec.folds, title=f"SUPERB ER protocol: {name}")
    # Runs finished by earlier invocations in out_dir join the tables too.
    out_dir = spec.out_dir
    everything = {
        n: read_json(out_dir / f"exp{n}" / "results.json")
        for n in EXPERIMENTS
        if (out_dir / f"exp{n}" / "results.json").is_file()
    }
    superb_runs = {p.parent.name: read_json(p) for p in sorted(out_dir.glob("superb/*/results.json"))}
    paths = write_tables(out_dir, everything, spec.note, superb_runs)
    logger.info(f"[table1] - {paths['md']}, {paths['json']}, {paths['superb']}")
    return summaries
