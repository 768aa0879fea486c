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
from pathlib import Path
from typing import Any

import torch

from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.cli.logs import add_verbosity_options, setup_logging
from s3prl_ser.finetuning.hub_entries import FT_CHECKPOINT
from s3prl_ser.finetuning.stage import fine_tune, stage1_request, summary_table

__all__ = ["build_parser", "main"]


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
    parser.add_argument("-c", "--config", help="yaml config merged over s3prl_ser/finetuning/config.yaml")
    parser.add_argument(
        "-o",
        "--override",
        default="",
        help='overrides, e.g. "config.runner.total_steps=500,,config.datarc.root=/data"; keys must exist',
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        choices=["cpu", "cuda"],
        help="torch device (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, help="overrides config.runner.seed")
    add_verbosity_options(parser)
    return parser


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the command line; return each fold's metadata (rank 0; empty on other ranks)."""
    args = build_parser().parse_args(argv)
    setup_logging(args)
    with exit_on_error():
        request = stage1_request(
            args.upstream,
            args.upstream_ckpt,
            args.ft_dir,
            folds=args.folds.split(",") if args.folds else None,
            config_path=args.config,
            overrides=args.override,
            seed=args.seed,
            device=args.device,
        )
    with exit_on_error():  # incl. UnsupportedUpstreamError
        result = fine_tune(request)
    if not result.is_leader:
        return {}
    for fold, fold_dir in result.skipped.items():
        print(f"[upstream_ft] {fold}: already exported to {fold_dir / FT_CHECKPOINT}, skipped")
    print(summary_table(result.records, result.skipped))
    return result.records
