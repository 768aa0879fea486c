"""The main job on the built-in data: corpus -> meta data -> 5-fold emotion_ecapa -> results
(:class:`MainJob`, :func:`run_main_job`; the command is ``python -m s3prl_ser.cli.demo``).

1. generates the built-in synthetic corpus in IEMOCAP's raw layout (cached, deterministic);
2. prepares its leave-one-session-out meta data exactly as for real IEMOCAP;
3. ``--pipeline fbank`` (default): 5-fold cross-validation of ``fbank`` + ``emotion_ecapa``
   (ECAPA-TDNN, 5-best averaging) with ``downstream/emotion_ecapa/config_builtin.yaml``, once
   for each of 5 seeds, reported as the mean over seeds: one seed's 5-fold mean moves by
   several points with the seed (and the CPU), the mean of five by about 1 point. Every
   (seed, fold) trains in a single-thread worker process, ``workers`` at once, so the
   figures do not depend on the machine's core count;
   ``finetune``: the paper's two stages with a tiny random-init HuBERT in place of
   pretrained weights -- ``python -m upstream_ft`` fine-tunes, averages and exports it for each
   fold, then ``emotion_ecapa`` runs 5-fold on ``-u hubert_ft_avg -k FT_DIR``;
   ``table1``: the paper's whole Table 1 (experiments 1-11) with tiny random-init
   wav2vec 2.0, HuBERT and BERT, at reduced steps (``steps``);
4. prints the results table and where it is.

Re-running resumes: finished folds are reused, a killed fold continues from its checkpoint.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from s3prl_ser.config import ConfigError
from s3prl_ser.data.corpora.iemocap import prepare
from s3prl_ser.data.folds import FOLDS
from s3prl_ser.experiments.cross_validation import FoldRun, cross_validate, train_in_workers
from s3prl_ser.experiments.launch import RunRequest
from s3prl_ser.experiments.table1 import EXPERIMENTS, Table1Spec, run_table1, stage1
from s3prl_ser.finetuning.config import BUILTIN_CONFIG as FT_BUILTIN_CONFIG
from s3prl_ser.toy.builtin_corpus import default_corpus_dir, generate_corpus
from s3prl_ser.toy.tiny_bert import write_tiny_bert
from s3prl_ser.toy.tiny_upstream import write_tiny_upstream
from s3prl_ser.training.cv_report import mean_std_text, summarize_seeds, write_seed_report
from s3prl_ser.upstreams.registry import DOWNSTREAM_DIR

__all__ = ["MAIN_JOB_SEEDS", "PIPELINES", "main_job_seeds", "MainJob", "MainJobResult", "run_main_job"]

logger = logging.getLogger(__name__)

MAIN_JOB_SEEDS = (0, 1, 2, 3, 4)
PIPELINES = ("fbank", "finetune", "table1")
_ECAPA_BUILTIN = DOWNSTREAM_DIR / "emotion_ecapa" / "config_builtin.yaml"


def main_job_seeds(spec: str | None, pipeline: str) -> list[int | None]:
    """The training seeds of a pipeline from ``--seeds`` text; ``[None]``: each run's default seed.

    Example:
        >>> main_job_seeds(None, "fbank"), main_job_seeds("5", "finetune")
        ([0, 1, 2, 3, 4], [5])

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


@dataclass(frozen=True)
class MainJob:
    """The main job's settings.

    Attributes:
        out: output directory.
        pipeline: one of :data:`PIPELINES`.
        seeds: training seeds (:func:`main_job_seeds`); ``(None,)``: each run's default.
        workers: single-thread processes training folds at once (the results do not depend on it).
        corpus: where the built-in corpus is (default: its cache).
        folds: the folds every run covers.
        steps: training steps per stage (``table1`` only).
        device: the device of every run.
    """

    out: Path
    pipeline: str = "fbank"
    seeds: tuple[int | None, ...] = MAIN_JOB_SEEDS
    workers: int = 1
    corpus: Path | None = None
    folds: tuple[str, ...] = FOLDS
    steps: int = 150
    device: str = "cpu"


def _table1(job: MainJob, corpus: Path, meta: Path) -> None:
    bases = job.out / "tiny_upstreams"
    for arch in ("wav2vec2", "hubert"):
        if not (bases / f"tiny_{arch}.pt").is_file():
            write_tiny_upstream(arch, bases / f"tiny_{arch}.pt")
    if not (bases / "tiny_bert" / "config.json").is_file():
        write_tiny_bert(bases / "tiny_bert")
    every = max(job.steps // 6, 1)
    schedule = (
        ("config.runner.total_steps", job.steps),
        ("config.runner.eval_step", every),
        ("config.runner.save_step", every),
    )
    run_table1(
        Table1Spec(
            out_dir=job.out / "table1",
            experiments=tuple(EXPERIMENTS),
            folds=job.folds,
            root=corpus,
            meta=meta,
            overrides=schedule,
            ft_overrides=(*schedule, ("config.scheduler.warmup_steps", every)),
            wav2vec2=f"wav2vec2_local:{bases / 'tiny_wav2vec2.pt'}",
            hubert=f"hubert_local:{bases / 'tiny_hubert.pt'}",
            bert=str(bases / "tiny_bert"),
            base_config=str(_ECAPA_BUILTIN),
            ft_config=str(FT_BUILTIN_CONFIG),
            device=job.device,
            superb=("fbank",),
            note=f"Built-in synthetic corpus, tiny random-init upstreams, {job.steps} steps per stage, folds "
            f"{','.join(job.folds)}: a run of the whole pipeline, not a reproduction of the paper's numbers.",
        )
    )


@dataclass(frozen=True)
class MainJobResult:
    """What the main job reports: the summary (over seeds when there are several; see
    :mod:`s3prl_ser.training.cv_report`), its one-line headline, and ``results.md``."""

    summary: dict
    headline: str
    results: Path


def run_main_job(job: MainJob) -> MainJobResult | None:
    """Generate the corpus and its meta data, run ``job.pipeline``, write and print the results.

    Returns:
        The reported summary, its headline and the report's path, or None for the ``table1``
        pipeline (its tables are in ``out/table1``).

    Raises:
        BuiltinCorpusError: the corpus cannot be generated (e.g. espeak-ng missing).
        ConfigError, DirectoryInUseError, ...: as :func:`~s3prl_ser.experiments.cross_validation.cross_validate`.
    """
    seeds = list(job.seeds)
    corpus = generate_corpus(job.corpus or default_corpus_dir())
    logger.info(f"[demo] - built-in corpus: {corpus}")
    meta = job.out / "meta_data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the built-in corpus has no missing audio
        prepare(corpus, meta)
    if job.pipeline == "table1":
        _table1(job, corpus, meta)
        return None
    if job.pipeline == "fbank":
        expdir, title = job.out / "fbank_ecapa", "fbank + ECAPA-TDNN"
        upstream, upstream_ckpt = "fbank", None
    else:
        tiny = job.out / "tiny_hubert.pt"
        if not tiny.is_file():
            write_tiny_upstream("hubert", tiny)
        ft_dir = job.out / "upstream_ft" / "tiny_hubert"
        stage1(
            "hubert_local",
            str(tiny),
            ft_dir,
            job.folds,
            config_path=FT_BUILTIN_CONFIG,
            overrides=(("config.datarc.root", str(corpus.resolve())), ("config.datarc.meta_data", str(meta.resolve()))),
            seed=seeds[0],
            device=job.device,
        )
        logger.info(f"[demo] - fine-tuned upstreams: {ft_dir}/<fold>/upstream.ckpt")
        expdir, title = job.out / "hubert_ft_ecapa", "tiny HuBERT FT+AVG + ECAPA-TDNN"
        upstream, upstream_ckpt = "hubert_ft_avg", str(ft_dir)
    title = f"{title} (5-best averaged), built-in corpus"
    base = RunRequest(
        upstream=upstream,
        upstream_ckpt=upstream_ckpt,
        downstream="emotion_ecapa",
        config=str(_ECAPA_BUILTIN),
        device=job.device,
        overrides=(
            ("config.downstream_expert.datarc.root", str(corpus.resolve())),
            ("config.downstream_expert.datarc.meta_data", str(meta.resolve())),
        ),
    )
    experiments = {
        seed: (
            expdir / f"seed{seed}" if seed is not None and len(seeds) > 1 else expdir,
            RunRequest(**{**vars(base), "seed": seed}),
        )
        for seed in seeds
    }
    # Every (seed, fold) at once in single-thread workers; the per-seed reports below reuse them.
    train_in_workers(
        [FoldRun(root, request, fold) for root, request in experiments.values() for fold in job.folds], job.workers
    )
    summaries = {
        seed: cross_validate(
            root, request, folds=job.folds, title=title + (f", seed {seed}" if seed is not None else "")
        )
        for seed, (root, request) in experiments.items()
    }
    if len(seeds) > 1:
        combined = summarize_seeds(summaries)
        write_seed_report(combined, expdir, title)
        spread = f"mean ± std over {len(seeds)} seeds of the {len(job.folds)}-fold means"
    else:
        combined = next(iter(summaries.values()))
        spread = f"mean ± std over {len(combined['folds'])} folds"
    headline = f"WA {mean_std_text(combined['wa'])}, UA {mean_std_text(combined['ua'])} ({spread})"
    return MainJobResult(summary=combined, headline=headline, results=(expdir / "results.md").resolve())
