"""Stage 1 over the requested folds: each fold not exported yet is fine-tuned, exported and tested.

Folds run one after another, each under its own lock (so folds may also run side by side, one
command each, but a fold only once); a fold whose export is complete with the same settings is
skipped and its recorded metadata reused. Under ``torchrun`` the processes share each fold's
training; rank 0 evaluates, saves and exports (:func:`s3prl_ser.finetuning.fold.run_fold`).
"""

from __future__ import annotations

import importlib.metadata
import os
from argparse import Namespace
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3prl_ser.config import Override, apply_overrides, load_config
from s3prl_ser.data.emotion_dataset import corpus_folds
from s3prl_ser.data.folds import check_fold
from s3prl_ser.finetuning.config import DEFAULT_CONFIG, validate_config
from s3prl_ser.finetuning.fold import best_export_dir, exported_metadata, run_fold
from s3prl_ser.markdown import markdown_table
from s3prl_ser.training.distributed import setup_distributed
from s3prl_ser.training.run_lock import leader_lock
from s3prl_ser.versions import environment_record

__all__ = ["FineTuneRequest", "StageResult", "fine_tune", "summary_table"]


@dataclass(frozen=True)
class FineTuneRequest:
    """One stage-1 run, as ``python -m upstream_ft`` states it.

    Attributes:
        upstream: s3prl hub entry (``hubert``, ``wav2vec2``, ``hubert_local``, ...) or ``text``.
        upstream_ckpt: its ``-k`` checkpoint; for ``text``, the Hugging Face encoder directory.
        ft_dir: the output directory (``FT_DIR/<fold>/upstream.ckpt``).
        config: the loaded, overridden and validated config (:mod:`s3prl_ser.finetuning.config`).
        folds: the folds to run, checked names, in order.
        device: ``cpu`` or ``cuda``.
        environment: the versions record every fold's metadata carries.
    """

    upstream: str
    upstream_ckpt: str | None
    ft_dir: Path
    config: Mapping[str, Any]
    folds: Sequence[str]
    device: str
    environment: Mapping[str, Any]


@dataclass
class StageResult:
    """What :func:`fine_tune` did: each fold's metadata and which folds an earlier run exported.

    ``records`` and ``skipped`` are filled on rank 0 only (``is_leader``).
    """

    is_leader: bool
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, Path] = field(default_factory=dict)


def stage1_request(
    upstream: str,
    upstream_ckpt: str | None,
    ft_dir: str | os.PathLike,
    *,
    folds: Sequence[str] | None = None,
    config_path: str | os.PathLike | None = None,
    overrides: str | Iterable[Override] = (),
    seed: int | None = None,
    device: str = "cpu",
) -> FineTuneRequest:
    """The stage-1 run that ``python -m upstream_ft -u UPSTREAM [-k CKPT] -p FT_DIR [--folds]
    [-c CONFIG] [-o OVERRIDES] [--seed] [--device]`` states: the defaults (:data:`DEFAULT_CONFIG`),
    the ``config_path`` file and the ``overrides`` laid over them (``args.*`` overrides set this
    function's own arguments), ``seed`` as ``config.runner.seed``, the config checked; ``folds``
    default to every fold of ``config.datarc.meta_data``.

    Raises:
        ConfigError: a bad config, override or fold name.
    """
    config = load_config(DEFAULT_CONFIG, config_path)
    args = Namespace(
        upstream=upstream, upstream_ckpt=upstream_ckpt, ft_dir=ft_dir, folds=folds, seed=seed, device=device
    )
    apply_overrides(overrides, args, config)
    if args.seed is not None:
        config["runner"]["seed"] = args.seed
    validate_config(config, args.device)
    names = args.folds.split(",") if isinstance(args.folds, str) else args.folds
    names = names or corpus_folds(config["datarc"]["meta_data"])
    environment = environment_record()
    # -u text runs on transformers, which the shared record does not list.
    environment["packages"]["transformers"] = importlib.metadata.version("transformers")
    return FineTuneRequest(
        args.upstream,
        args.upstream_ckpt,
        Path(args.ft_dir),
        config,
        [check_fold(fold) for fold in names if fold],
        args.device,
        environment,
    )


def fine_tune(request: FineTuneRequest) -> StageResult:
    """Fine-tune and export each requested fold not exported yet (skipping the others).

    Raises:
        UnsupportedUpstreamError: the upstream cannot be exported (before any training).
        FoldMismatchError, ProtocolMismatchError: the starting checkpoint was fine-tuned on
            another fold, corpus or split.
        ValueError: a fold directory holds a run or an export with other settings.
    """
    dist, device = setup_distributed(request.device)
    result = StageResult(dist.is_leader)
    config = request.config
    try:
        for fold in request.folds:
            fold_dir = request.ft_dir / fold
            fold_dir.mkdir(parents=True, exist_ok=True)
            with leader_lock(fold_dir):
                asked = {"base_upstream": request.upstream, "base_ckpt": request.upstream_ckpt, "config": config}
                done = exported_metadata(fold_dir, asked)
                if (
                    config["checkpoint_averaging"]["export_best"]
                    and exported_metadata(best_export_dir(fold_dir)) is None
                ):
                    done = None  # killed between the two exports: the resumed fold writes both
                if done is not None:
                    if dist.is_leader:
                        result.records[fold], result.skipped[fold] = done, fold_dir
                    continue
                record = run_fold(
                    request.upstream,
                    request.upstream_ckpt,
                    fold,
                    config,
                    fold_dir,
                    device=device,
                    dist=dist,
                    seed=config["runner"]["seed"],
                    environment=request.environment,
                )
                dist.barrier()
            if record is not None:
                result.records[fold] = record
    finally:
        dist.close()
    return result


def summary_table(records: Mapping[str, Mapping[str, Any]], skipped: Collection[str]) -> str:
    """Markdown table: one row per fold (the export's test metrics: WA/UA with categories, mean CCC
    with attributes; the steps it holds with their dev score; whether an earlier run exported it:
    ``fold in skipped``), then the means.

    Example:
        >>> record = {"test_session": "Session1", "test": {"wa": 0.5, "ua": 0.25}, "averaged": True,
        ...           "checkpoints": [{"step": 10, "dev_wa": 0.5}]}
        >>> print(summary_table({"fold1": record}, {"fold1"}))
        | fold | test session | test WA | test UA | model | steps (dev WA) | |
        |---|---|---|---|---|---|---|
        | fold1 | Session1 | 50.00 | 25.00 | average | 10 (0.500) | earlier run |
        mean test WA over 1 fold(s): 50.00
        mean test UA over 1 fold(s): 25.00
    """
    first = next(iter(records.values()), {"test": {"wa": 0, "ua": 0}})
    shown = [(metric, _TITLES[metric]) for metric in ("wa", "ua", "ccc_mean") if metric in first["test"]]
    selected = (first.get("targets") or {}).get("selection_metric", "wa")
    rows = [
        [
            fold,
            record["test_session"],
            *(_figure(metric, record["test"][metric]) for metric, _ in shown),
            "average" if record["averaged"] else "best",
            ", ".join(f"{c['step']} ({c['dev_' + selected]:.3f})" for c in record["checkpoints"]),
            "earlier run" if fold in skipped else "",
        ]
        for fold, record in records.items()
    ]
    by = _TITLES.get(selected, selected)
    header = ["fold", "test session", *(f"test {title}" for _, title in shown), "model", f"steps (dev {by})", ""]
    lines = markdown_table(header, rows)
    if records:
        for metric, title in shown:
            values = [record["test"][metric] for record in records.values()]
            mean = _figure(metric, sum(values) / len(values))
            lines.append(f"mean test {title} over {len(values)} fold(s): {mean}")
    return "\n".join(lines)


_TITLES = {"wa": "WA", "ua": "UA", "macro_f1": "macro-F1", "ccc_mean": "CCC mean"}


def _figure(metric: str, value: float) -> str:
    """Accuracies and F1 in percent as the paper gives them; CCC as is."""
    return f"{value:.3f}" if metric.startswith("ccc") else f"{value * 100:.2f}"
