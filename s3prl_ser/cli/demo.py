"""The main job on the built-in data: corpus -> meta data -> 5-fold emotion_ecapa -> results.

    python -m s3prl_ser.cli.demo [--out result/demo] [--pipeline fbank|finetune|table1]

1. generates the built-in synthetic corpus in IEMOCAP's raw layout (cached, deterministic);
2. prepares its leave-one-session-out meta data exactly as for real IEMOCAP;
3. ``--pipeline fbank`` (default): 5-fold cross-validation of ``fbank`` + ``emotion_ecapa``
   (ECAPA-TDNN, 5-best averaging) with ``downstream/emotion_ecapa/config_builtin.yaml``, once
   for each of 5 seeds, reported as the mean over seeds: one seed's 5-fold mean moves by
   several points with the seed (and the CPU), the mean of five by about 1 point. Every
   (seed, fold) trains in a single-thread worker process, ``--workers`` at once, so the
   figures do not depend on the machine's core count;
   ``--pipeline finetune``: the paper's two stages with a tiny random-init HuBERT in place of
   pretrained weights -- ``python -m upstream_ft`` fine-tunes, averages and exports it for each
   fold, then ``emotion_ecapa`` runs 5-fold on ``-u hubert_ft_avg -k FT_DIR``;
   ``--pipeline table1``: the paper's whole Table 1 (experiments 1-11) with tiny random-init
   wav2vec 2.0, HuBERT and BERT, at reduced steps (``--steps``);
4. prints the results table and where it is.

Re-running resumes: finished folds are reused, a killed fold continues from its checkpoint.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

from s3prl_ser.cli.cross_validate import FoldRun, cross_validate, train_in_workers
from s3prl_ser.cli.errors import EXPECTED_ERRORS, exit_on_error
from s3prl_ser.config import ConfigError
from s3prl_ser.data.corpora.iemocap import prepare
from s3prl_ser.hub.registry import DOWNSTREAM_DIR
from s3prl_ser.toy.builtin_corpus import BuiltinCorpusError, default_corpus_dir, generate_corpus
from s3prl_ser.toy.tiny_upstream import write_tiny_upstream
from s3prl_ser.training.cv_report import mean_std_text, summarize_seeds, write_seed_report

UPSTREAM_FT_DIR = Path(__file__).resolve().parents[2] / "upstream_ft"

__all__ = ["build_parser", "main"]


def _table1(args: argparse.Namespace, corpus: Path, meta: Path) -> None:
    from s3prl_ser.cli.table1 import run_table1
    from s3prl_ser.toy.tiny_bert import write_tiny_bert

    bases = args.out / "tiny_upstreams"
    for arch in ("wav2vec2", "hubert"):
        if not (bases / f"tiny_{arch}.pt").is_file():
            write_tiny_upstream(arch, bases / f"tiny_{arch}.pt")
    if not (bases / "tiny_bert" / "config.json").is_file():
        write_tiny_bert(bases / "tiny_bert")
    every = max(args.steps // 6, 1)
    run_table1(
        args.out / "table1",
        list(range(1, 12)),
        args.folds.split(","),
        corpus,
        meta,
        f"config.runner.total_steps={args.steps},,config.runner.eval_step={every},,config.runner.save_step={every}",
        wav2vec2=f"wav2vec2_local:{bases / 'tiny_wav2vec2.pt'}",
        hubert=f"hubert_local:{bases / 'tiny_hubert.pt'}",
        bert=str(bases / "tiny_bert"),
        base_config=str(DOWNSTREAM_DIR / "emotion_ecapa" / "config_builtin.yaml"),
        ft_config=str(UPSTREAM_FT_DIR / "config_builtin.yaml"),
        ft_overrides=f"config.runner.total_steps={args.steps},,config.runner.eval_step={every},,"
        f"config.runner.save_step={every},,config.scheduler.warmup_steps={every}",
        device=args.device,
        superb=["fbank"],
        note=f"Built-in synthetic corpus, tiny random-init upstreams, {args.steps} steps per stage, folds "
        f"{args.folds}: a run of the whole pipeline, not a reproduction of the paper's numbers.",
    )


MAIN_JOB_SEEDS = (0, 1, 2, 3, 4)


def _seeds(spec: str | None, pipeline: str) -> list[int | None]:
    """The training seeds of a pipeline; ``[None]``: each command's default seed.

    Raises:
        ConfigError: not integers, or more than one seed where a pipeline runs one.
    """
    if spec is None:
        return list(MAIN_JOB_SEEDS) if pipeline == "fbank" else [None]
    try:
        seeds = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers, got {spec!r}") from None
    if (pipeline != "fbank" and len(seeds) > 1) or pipeline == "table1" or not seeds:
        raise ConfigError(f"--seeds: the fbank pipeline takes several seeds, finetune one, table1 none; got {spec!r}")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    """``python -m s3prl_ser.cli.demo``'s command line."""
    parser = argparse.ArgumentParser(prog="python -m s3prl_ser.cli.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("result/demo"), help="output directory")
    parser.add_argument("--corpus", type=Path, default=None, help="built-in corpus location (default: cache)")
    parser.add_argument("--folds", default="fold1,fold2,fold3,fold4,fold5")
    parser.add_argument("--pipeline", choices=["fbank", "finetune", "table1"], default="fbank")
    parser.add_argument("--steps", type=int, default=150, help="training steps per stage (table1 only)")
    parser.add_argument(
        "--seeds",
        help="training seeds: fbank runs the cross-validation once per seed and reports the mean over seeds "
        f"(default {','.join(map(str, MAIN_JOB_SEEDS))}); finetune takes one (default: each command's own)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="single-thread processes training folds at once (default: this machine's cores); "
        "the results do not depend on it",
    )
    parser.add_argument("--device", default="cpu")
    return parser


@exit_on_error(BuiltinCorpusError, *EXPECTED_ERRORS)  # e.g. espeak-ng missing, a bad --folds
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    seeds = _seeds(args.seeds, args.pipeline)

    corpus = generate_corpus(args.corpus or default_corpus_dir())
    print(f"[demo] - built-in corpus: {corpus}")
    meta = args.out / "meta_data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the built-in corpus has no missing audio
        prepare(corpus, meta)
    if args.pipeline == "table1":
        _table1(args, corpus, meta)
        return
    if args.pipeline == "fbank":
        expdir, upstream, title = args.out / "fbank_ecapa", ["-u", "fbank"], "fbank + ECAPA-TDNN"
    else:
        from s3prl_ser.cli.finetune import main as finetune

        tiny = args.out / "tiny_hubert.pt"
        if not tiny.is_file():
            write_tiny_upstream("hubert", tiny)
        ft_dir = args.out / "upstream_ft" / "tiny_hubert"
        finetune(
            [
                "-u",
                "hubert_local",
                "-k",
                str(tiny),
                "-p",
                str(ft_dir),
                "--folds",
                args.folds,
                "--device",
                args.device,
                "-c",
                str(UPSTREAM_FT_DIR / "config_builtin.yaml"),
                "-o",
                f"config.datarc.root={corpus.resolve()},,config.datarc.meta_data={meta.resolve()}",
                *(["--seed", str(seeds[0])] if seeds[0] is not None else []),
            ]
        )
        print(f"[demo] - fine-tuned upstreams: {ft_dir}/<fold>/upstream.ckpt")
        expdir = args.out / "hubert_ft_ecapa"
        upstream = ["-u", "hubert_ft_avg", "-k", str(ft_dir)]
        title = "tiny HuBERT FT+AVG + ECAPA-TDNN"
    title = f"{title} (5-best averaged), built-in corpus"
    run_args = [*upstream, "-d", "emotion_ecapa", "-c", str(DOWNSTREAM_DIR / "emotion_ecapa" / "config_builtin.yaml")]
    overrides = (
        f"config.downstream_expert.datarc.root={corpus.resolve()},,"
        f"config.downstream_expert.datarc.meta_data={meta.resolve()}"
    )
    experiments = {
        seed: (
            expdir / f"seed{seed}" if seed is not None and len(seeds) > 1 else expdir,
            [*run_args, "--device", args.device, *(["--seed", str(seed)] if seed is not None else [])],
        )
        for seed in seeds
    }
    # Every (seed, fold) at once in single-thread workers; the per-seed reports below reuse them.
    train_in_workers(
        [
            FoldRun(root, tuple(argv), fold, overrides)
            for root, argv in experiments.values()
            for fold in args.folds.split(",")
        ],
        args.workers,
    )
    summaries = {
        seed: cross_validate(
            root,
            argv,
            folds=args.folds.split(","),
            overrides=overrides,
            title=title + (f", seed {seed}" if seed is not None else ""),
        )
        for seed, (root, argv) in experiments.items()
    }
    if len(seeds) > 1:
        combined = summarize_seeds(summaries)
        write_seed_report(combined, expdir, title)
        spread = f"mean ± std over {len(seeds)} seeds of the {len(args.folds.split(','))}-fold means"
    else:
        combined = next(iter(summaries.values()))
        spread = f"mean ± std over {len(combined['folds'])} folds"
    print(f"[demo] - WA {mean_std_text(combined['wa'])}, UA {mean_std_text(combined['ua'])} ({spread})")
    print(f"[demo] - results: {(expdir / 'results.md').resolve()}")


if __name__ == "__main__":
    main()
