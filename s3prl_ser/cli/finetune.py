"""``python -m upstream_ft`` (stage 1): fine-tune, average and export an upstream for each IEMOCAP fold.

    python -m upstream_ft -u hubert -p FT_DIR \\
        -o "config.datarc.root=IEMOCAP_ROOT,,config.datarc.meta_data=META_DIR"

writes ``FT_DIR/<fold>/upstream.ckpt`` (loadable with ``-u hubert_local -k`` that file, or
``-u hubert_ft_avg -k FT_DIR`` for the fold being tested) and ``upstream.json`` beside it;
with ``config.checkpoint_averaging.export_best`` also the same run's single best checkpoint
in ``FT_DIR/best/<fold>/`` (``-k FT_DIR/best``). Each checkpoint records the fold, corpus and
train/dev split it was trained on; stage 2 refuses it for any other.
``-u text -k HF_DIR`` fine-tunes a local Hugging Face text encoder (BERT) on the transcripts
instead (``config.datarc.transcripts``, default ``META_DIR/transcripts.json``) and also writes
``FT_DIR/<fold>/text_encoder/`` (``save_pretrained``), which ``TextEncoder`` and the
downstream's text stream load.

Folds already exported are skipped; a killed fold resumes from its last states file when
the same command is run again. Under ``torchrun --nproc_per_node N -m upstream_ft ...`` the
processes share each fold's training; rank 0 evaluates, saves and exports.
"""

from __future__ import annotations

import argparse
import importlib.metadata
from pathlib import Path
from typing import Any

import torch

from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.cli.run_downstream import environment_record
from s3prl_ser.config import apply_overrides, load_config
from s3prl_ser.data.emotion_dataset import corpus_folds
from s3prl_ser.data.folds import check_fold
from s3prl_ser.hub.ft_hub import FT_CHECKPOINT
from s3prl_ser.training.distributed import Distributed, setup_distributed
from s3prl_ser.training.finetune import best_export_dir, exported_metadata, run_fold
from s3prl_ser.training.finetune_config import DEFAULT_CONFIG, validate_config
from s3prl_ser.training.run_lock import leader_lock

__all__ = ["build_parser", "summary_table", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m upstream_ft",
        description="Fine-tune, average and export an s3prl upstream for each IEMOCAP fold (paper 2.2-2.3).",
    )
    parser.add_argument(
        "-u",
        "--upstream",
        required=True,
        help="s3prl hub entry, e.g. hubert, wav2vec2, hubert_local; "
        "or text: the Hugging Face text encoder in -k DIR over the transcripts",
    )
    parser.add_argument(
        "-k",
        "--upstream_ckpt",
        metavar="CKPT",
        help="checkpoint for *_local entries; the encoder directory for -u text",
    )
    parser.add_argument("--folds", help="comma-separated folds (default: every fold of config.datarc.meta_data)")
    parser.add_argument("-p", "--ft_dir", required=True, type=Path, help="output: FT_DIR/<fold>/upstream.ckpt")
    parser.add_argument("-c", "--config", help="yaml config merged over upstream_ft/config.yaml")
    parser.add_argument(
        "-o",
        "--override",
        default="",
        help='overrides, e.g. "config.runner.total_steps=500,,config.datarc.root=/data"; keys must exist',
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, help="overrides config.runner.seed")
    return parser


def summary_table(records: dict[str, dict[str, Any]], skipped: set[str]) -> str:
    """Markdown table: one row per fold (test WA/UA of the export, the steps it holds)."""
    lines = ["| fold | test session | test WA | test UA | model | steps (dev WA) | |", "|---|---|---|---|---|---|---|"]
    for fold, record in records.items():
        steps = ", ".join(f"{c['step']} ({c['dev_wa']:.3f})" for c in record["checkpoints"])
        lines.append(
            f"| {fold} | {record['test_session']} | {record['test']['wa'] * 100:.2f} | {record['test']['ua'] * 100:.2f} "
            f"| {'average' if record['averaged'] else 'best'} | {steps} | {'earlier run' if fold in skipped else ''} |"
        )
    if records:
        for metric in ("wa", "ua"):
            values = [record["test"][metric] * 100 for record in records.values()]
            lines.append(f"mean test {metric.upper()} over {len(values)} fold(s): {sum(values) / len(values):.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the command line; return each fold's metadata (rank 0; empty on other ranks)."""
    args = build_parser().parse_args(argv)
    with exit_on_error():
        config = load_config(DEFAULT_CONFIG, args.config)
        apply_overrides(args.override, args, config)
        if args.seed is not None:
            config["runner"]["seed"] = args.seed
        validate_config(config, args.device)
        names = args.folds.split(",") if args.folds else corpus_folds(config["datarc"]["meta_data"])
        folds = [check_fold(fold) for fold in names if fold]
    dist, device = setup_distributed(args.device)
    try:
        with exit_on_error():  # incl. UnsupportedUpstreamError
            records, skipped = _run_folds(args, config, folds, dist, device)
    finally:
        dist.close()
    if not dist.is_leader:
        return {}
    print(summary_table(records, skipped))
    return records


def _run_folds(
    args: argparse.Namespace, config: dict[str, Any], folds: list[str], dist: Distributed, device: str
) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Fine-tune and export each fold not exported yet; return the folds' metadata and the skipped folds."""
    environment = environment_record()
    # -u text runs on transformers, which the shared record does not list.
    environment["packages"]["transformers"] = importlib.metadata.version("transformers")
    records: dict[str, dict[str, Any]] = {}
    skipped: set[str] = set()
    for fold in folds:
        fold_dir = args.ft_dir / fold
        fold_dir.mkdir(parents=True, exist_ok=True)
        # Per fold, not FT_DIR: folds may run side by side (one command each), a fold only once.
        with leader_lock(fold_dir):
            requested = {"base_upstream": args.upstream, "base_ckpt": args.upstream_ckpt, "config": config}
            done = exported_metadata(fold_dir, requested)
            if config["checkpoint_averaging"]["export_best"] and exported_metadata(best_export_dir(fold_dir)) is None:
                done = None  # killed between the two exports: the resumed fold writes both
            if done is not None:
                if dist.is_leader:
                    print(f"[upstream_ft] {fold}: already exported to {fold_dir / FT_CHECKPOINT}, skipped")
                records[fold] = done
                skipped.add(fold)
                continue
            record = run_fold(
                args.upstream,
                args.upstream_ckpt,
                fold,
                config,
                fold_dir,
                device=device,
                dist=dist,
                seed=config["runner"]["seed"],
                environment=environment,
            )
            dist.barrier()
        if record is not None:
            records[fold] = record
    return records, skipped
