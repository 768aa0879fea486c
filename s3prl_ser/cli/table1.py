"""The paper's Table 1 in one command: experiments 1-11, 5-fold CV each, beside the paper's numbers.

    python -m s3prl_ser.cli.table1 --experiments 1-11 -p OUT_DIR --root IEMOCAP --meta META \\
        [--folds fold1,...] [-o overrides] [--base] [--wav2vec2 NAME] [--hubert NAME] [--bert BERT_DIR]

The speech upstreams default to the paper's: Robust wav2vec 2.0 Large
(``wav2vec2_large_lv60_cv_swbd_fsh``, the paper's ref. [14]) and HuBERT Large
(``hubert_large_ll60k``; the paper names no size); ``--base`` takes ``wav2vec2`` and ``hubert``.
For every experiment it runs what the experiment needs, skipping what already finished:

1. stage 1, ``python -m upstream_ft`` per fold, once per base model (``OUT_DIR/upstream_ft/<base>``):
   W2V2 / HuBERT / BERT fine-tuned with mean pooling + linear; the 5 best dev checkpoints
   averaged (``<base>/<fold>``, experiments 3-11) and the same run's single best
   (``<base>/best/<fold>``, experiments 1-2), as in the paper;
2. stage 2, ``s3prl_ser.cli.cross_validate`` with ``downstream/emotion_ecapa/paper/exp<N>.yaml``
   on the fold's own fine-tuned upstream(s) (``OUT_DIR/exp<N>``);

then writes ``OUT_DIR/table1.md`` and ``OUT_DIR/table1.json``: WA/UA mean ± std over folds per
experiment, with the paper's WA/UA in adjacent columns. ``--superb fbank,hubert,...`` also runs
SUPERB's ER protocol for stock upstreams (frozen, 256-d projector, mean pooling + linear, best dev checkpoint, no
averaging; ``OUT_DIR/superb/<name>``), and ``OUT_DIR/superb_er.md`` puts every WA run so far
beside the public SUPERB ER leaderboard. Upstreams are s3prl hub entries (``NAME`` or
``NAME:CKPT``, e.g. ``hubert_local:tiny.pt``); ``--base-config`` replaces each experiment's
runner/optimizer/size settings by another config's (e.g. ``config_builtin.yaml``), keeping every
key the experiment's file sets and its aggregator, fusion, averaging and text settings.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.config import ConfigError, load_config, read_yaml
from s3prl_ser.data.emotion_dataset import corpus_folds
from s3prl_ser.hub.registry import DOWNSTREAM_DIR
from s3prl_ser.training.cv_report import mean_std_text

__all__ = [
    "Experiment",
    "EXPERIMENTS",
    "SUPERB_ER",
    "PAPER_UPSTREAMS",
    "BASE_UPSTREAMS",
    "parse_experiments",
    "model_overrides",
    "build_parser",
    "main",
]

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


def _yaml(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and non-dicts are leaves)."""
    leaves: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def model_overrides(config_path: Path) -> list[str]:
    """An ``exp<N>.yaml`` as ``-o`` overrides that survive ``--base-config``: every key the file
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
    return [f"config.{key}={_yaml(value)}" for key, value in keys.items()]


def _entry(spec: str) -> tuple[str, str | None]:
    name, _, ckpt = spec.partition(":")
    return name, ckpt or None


def _finetune(
    base: str, spec: str, ft_dir: Path, folds: list[str], datarc: str, ft_config: str | None, device: str
) -> None:
    """Stage 1 for one base model: the k best averaged in ``ft_dir/<fold>`` and, from the same
    run, the single best in ``ft_dir/best/<fold>``."""
    from s3prl_ser.cli.finetune import main as finetune

    name, ckpt = ("text", spec) if base == "bert" else _entry(spec)
    argv = ["-u", name, "-p", str(ft_dir), "--folds", ",".join(folds), "--device", device]
    argv += ["-o", ",,".join(filter(None, [datarc, "config.checkpoint_averaging.export_best=true"]))]
    if ckpt:
        argv[2:2] = ["-k", ckpt]
    if ft_config:
        argv += ["-c", ft_config]
    finetune(argv)


def _mean_std(summary: dict, metric: str) -> str:
    """``mean ± std`` over folds; an official test set's one number has no spread to show."""
    if (summary.get("corpus") or {}).get("official_test"):
        return f"{summary[metric]['mean']:.2f}"
    return mean_std_text(summary[metric])


def _protocol_note(summaries: dict) -> str:
    """The table's footnote: the corpus and its folds, as the runs' reports record them."""
    corpora = {json.dumps(s.get("corpus") or {}, sort_keys=True) for s in summaries.values() if s}
    record = json.loads(corpora.pop()) if len(corpora) == 1 else {}
    if record.get("official_test"):
        return (
            f"WA/UA on {record['name']}'s official test set {record['official_test']} (one split: no std over folds)."
        )
    if record.get("name") and record["name"] != "IEMOCAP":
        return f"WA/UA: mean ± sample std over the folds run ({record['name']}, {record.get('num_folds')} folds)."
    return "WA/UA: mean ± sample std over the folds run (5-fold leave-one-session-out)."


def _row(experiment: Experiment, summary: dict | None) -> str:
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    ours = f"{_mean_std(summary, 'wa')} | {_mean_std(summary, 'ua')}" if summary else "not run | not run"
    return (
        f"| {experiment.set} | {experiment.number} | {experiment.modality} | {experiment.feature} | "
        f"{yes(experiment.ft)} | {yes(experiment.upstream_avg)} | {experiment.aggregator} | Linear | "
        f"{yes(experiment.downstream_avg)} | {ours} | {experiment.paper_wa:.2f} | {experiment.paper_ua:.2f} |"
    )


SUPERB_PROTOCOL = [
    "config.downstream_expert.modelrc.aggregator=mean",
    "config.downstream_expert.modelrc.projector_dim=256",  # s3prl's emotion downstream
    "config.downstream_expert.modelrc.fusion=null",
    "config.downstream_expert.checkpoint_averaging.average=false",
    "config.downstream_expert.datarc.bucket_by_length=false",  # s3prl's random batches
]


def write_tables(
    out_dir: Path, summaries: dict[int, dict | None], note: str, superb: dict[str, dict] | None = None
) -> dict[str, Path]:
    """``table1.md``/``table1.json`` (every experiment, run or not) and ``superb_er.md``
    (the SUPERB-protocol runs in ``superb``: upstream name -> summary)."""
    lines = [
        "# Table 1 (Morais et al., ICASSP 2022) reproduced",
        "",
        note,
        "",
        "| Set | # | Input | Feature | FT | AVG | AGG | Classifier | AVG | WA (%) | UA (%) | paper WA | paper UA |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(EXPERIMENTS[n], summaries.get(n)) for n in sorted(EXPERIMENTS)]
    lines += ["", _protocol_note(summaries), ""]
    paths = {"md": out_dir / "table1.md", "json": out_dir / "table1.json", "superb": out_dir / "superb_er.md"}
    paths["md"].write_text("\n".join(lines))
    paths["json"].write_text(
        json.dumps(
            {str(n): {"experiment": vars(EXPERIMENTS[n]), "ours": summaries.get(n)} for n in sorted(EXPERIMENTS)},
            indent=1,
        )
    )
    superb = superb or {}
    lines = [
        "# SUPERB ER view (frozen upstream, accuracy = WA)",
        "",
        note,
        "",
        "| upstream | SUPERB ER acc | this project, SUPERB protocol (WA) | UA |",
        "|---|---|---|---|",
    ]
    for name in list(SUPERB_ER) + sorted(set(superb) - set(SUPERB_ER)):
        ours = superb.get(name)
        leaderboard = f"{SUPERB_ER[name]:.2f}" if name in SUPERB_ER else "-"
        lines.append(
            f"| {name} | {leaderboard} | "
            + (f"{_mean_std(ours, 'wa')} | {ours['ua']['mean']:.2f} |" if ours else "not run | |")
        )
    lines += [
        "",
        "SUPERB protocol: frozen upstream, weighted sum of layers, 256-d projector, mean pooling + linear, best dev "
        "checkpoint, no averaging, 5-fold mean. s3prl's fbank is normalised per utterance, so mean pooling "
        "sees a constant and predicts one class.",
        "",
    ]
    paths["superb"].write_text("\n".join(lines))
    return paths


def run_table1(
    out_dir: Path,
    experiments: list[int],
    folds: list[str],
    root: Path,
    meta: Path,
    overrides: str = "",
    *,
    wav2vec2: str = PAPER_UPSTREAMS["wav2vec2"],
    hubert: str = PAPER_UPSTREAMS["hubert"],
    bert: str | None = None,
    base_config: str | None = None,
    ft_config: str | None = None,
    ft_overrides: str = "",
    device: str = "cpu",
    note: str = "",
    superb: Sequence[str] = (),
) -> dict[int, dict]:
    """Run (or resume) the experiments and write the tables; return the summaries run.

    ``overrides`` go to every stage-2 run, ``ft_overrides`` to every stage-1 run; the corpus
    (``root``, ``meta``) is set for both.
    """
    from s3prl_ser.cli.cross_validate import cross_validate

    root, meta = Path(root).resolve(), Path(meta).resolve()
    overrides = ",,".join(
        filter(
            None,
            [
                f"config.downstream_expert.datarc.root={root}",
                f"config.downstream_expert.datarc.meta_data={meta}",
                overrides,
            ],
        )
    )
    ft_overrides = ",,".join(
        filter(None, [f"config.datarc.root={root}", f"config.datarc.meta_data={meta}", ft_overrides])
    )

    bases = {"wav2vec2": wav2vec2, "hubert": hubert, "bert": bert}
    summaries: dict[int, dict] = {}
    for number in experiments:
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
            ft_dir = out_dir / "upstream_ft" / stream
            _finetune(stream, bases[stream], ft_dir, folds, ft_overrides, ft_config, device)
            if not experiment.upstream_avg:
                ft_dir = ft_dir / "best"
            if stream == "bert":
                text_dir = ft_dir
            else:
                names.append(f"{stream}_ft_avg")
                ckpts.append(str(ft_dir))
        if not names:  # text only: the runner still needs a (cheap) speech upstream, which is ignored
            names, ckpts = ["fbank"], [""]
        run_args = ["-u", ",".join(names), "-k", ",".join(ckpts), "-d", "emotion_ecapa", "--device", device]
        exp_overrides = [overrides]
        if base_config:
            run_args += ["-c", base_config]
            exp_overrides += model_overrides(config)
        else:
            run_args += ["-c", str(config)]
        if text_dir is not None:
            exp_overrides.append(f"config.downstream_expert.text.encoder={text_dir}")
        summaries[number] = cross_validate(
            out_dir / f"exp{number}",
            run_args,
            folds,
            ",,".join(filter(None, exp_overrides)),
            title=f"Table 1, experiment {number}: {experiment.feature}",
        )
    for spec in superb:
        name, ckpt = _entry(spec)
        run_args = [
            "-u",
            name,
            "-d",
            "emotion_ecapa",
            "--device",
            device,
            "-c",
            base_config or str(DOWNSTREAM_DIR / "emotion_ecapa" / "config.yaml"),
        ]
        if ckpt:
            run_args += ["-k", ckpt]
        cross_validate(
            out_dir / "superb" / name,
            run_args,
            folds,
            ",,".join([overrides] + SUPERB_PROTOCOL),
            title=f"SUPERB ER protocol: {name}",
        )
    # Runs finished by earlier invocations in out_dir join the tables too.
    everything = {
        n: json.loads((out_dir / f"exp{n}" / "results.json").read_text())
        for n in EXPERIMENTS
        if (out_dir / f"exp{n}" / "results.json").is_file()
    }
    superb_runs = {p.parent.name: json.loads(p.read_text()) for p in sorted(out_dir.glob("superb/*/results.json"))}
    paths = write_tables(out_dir, everything, note, superb_runs)
    print(paths["md"].read_text())
    print(f"[table1] - {paths['md']}, {paths['json']}, {paths['superb']}")
    return summaries


def build_parser() -> argparse.ArgumentParser:
    """``python -m s3prl_ser.cli.table1``'s command line."""
    parser = argparse.ArgumentParser(prog="python -m s3prl_ser.cli.table1", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", default="1-11")
    parser.add_argument("-p", "--out", type=Path, required=True, help="output directory")
    parser.add_argument("--root", type=Path, required=True, help="IEMOCAP release root")
    parser.add_argument("--meta", type=Path, required=True, help="META_DIR of s3prl_ser.data.corpora.iemocap")
    parser.add_argument("--folds", help="comma-separated folds (default: every fold of --meta)")
    parser.add_argument("-o", "--override", default="", help="run_downstream.py overrides for every experiment")
    parser.add_argument("--ft-override", default="", help="python -m upstream_ft overrides for stage 1")
    parser.add_argument(
        "--base", action="store_true", help="Base models (wav2vec2, hubert) instead of the paper's Large ones"
    )
    parser.add_argument(
        "--wav2vec2",
        help=f"W2V2 hub entry, NAME or NAME:CKPT (default {PAPER_UPSTREAMS['wav2vec2']}; --base: wav2vec2)",
    )
    parser.add_argument(
        "--hubert", help=f"HuBERT hub entry, NAME or NAME:CKPT (default {PAPER_UPSTREAMS['hubert']}; --base: hubert)"
    )
    parser.add_argument("--bert", help="base text encoder directory (Hugging Face format)")
    parser.add_argument("--base-config", help="runner/optimizer/sizes for every experiment (model keys kept)")
    parser.add_argument("--ft-config", help="upstream_ft config for stage 1")
    parser.add_argument(
        "--superb", default="", help="stock upstreams (NAME or NAME:CKPT) to run with SUPERB's ER protocol"
    )
    parser.add_argument("--device", default="cpu")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    defaults = BASE_UPSTREAMS if args.base else PAPER_UPSTREAMS
    with exit_on_error():
        experiments = parse_experiments(args.experiments)
        folds = args.folds.split(",") if args.folds else corpus_folds(args.meta)
        run_table1(
            args.out,
            experiments,
            folds,
            args.root,
            args.meta,
            args.override,
            wav2vec2=args.wav2vec2 or defaults["wav2vec2"],
            hubert=args.hubert or defaults["hubert"],
            bert=args.bert,
            base_config=args.base_config,
            ft_config=args.ft_config,
            ft_overrides=args.ft_override,
            device=args.device,
            note=f"Folds: {','.join(folds)}.",
            superb=[s for s in args.superb.split(",") if s],
        )


if __name__ == "__main__":
    main()
