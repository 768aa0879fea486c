"""``run_downstream.py``: s3prl's command line, driving :class:`~s3prl_ser.training.runner.SERRunner`.

Same flags and behaviour as s3prl's ``run_downstream.py`` (``-m train|evaluate|inference``,
``-u -k -g -r -f -s -l -d -v -c -o -n -p -e -i -a``, ``--seed``, ``--device``, torchrun); the
command line becomes a :class:`~s3prl_ser.experiments.launch.RunRequest` (``-o`` parsed once, its
values as YAML), run by :mod:`s3prl_ser.experiments.launch`, which lists what differs from s3prl.
"""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack

import torch

from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.cli.logs import add_verbosity_options, setup_logging
from s3prl_ser.experiments.launch import (
    RUN_DEFAULTS,
    RunRequest,
    build_runner,
    default_device,
    experiment_lock,
    prepare_run,
)
from s3prl_ser.feature_cache.speech import CacheSpaceError
from s3prl_ser.upstreams.registry import register

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """``run_downstream.py``'s command line (s3prl's flags); unstated options are None, resolved by
    :class:`~s3prl_ser.experiments.launch.RunRequest` (a resume takes its checkpoint's)."""
    parser = argparse.ArgumentParser(description="Train or evaluate an s3prl downstream task (s3prl-ser).")
    parser.add_argument(
        "-m",
        "--mode",
        choices=["train", "evaluate", "inference"],
        required=True,
        help="train; evaluate a checkpoint (-e) on a split (-t); or infer one audio file (-t)",
    )
    parser.add_argument(
        "-t",
        "--evaluate_split",
        help=f"split for -m evaluate; the audio file for -m inference (default: {RUN_DEFAULTS['evaluate_split']})",
    )
    parser.add_argument(
        "-o", "--override", help='overrides, e.g. "config.optimizer.lr=1.0e-3,,args.seed=3"; keys must exist'
    )
    parser.add_argument("--backend", help="torch.distributed backend (default: nccl on CUDA, gloo on CPU)")
    parser.add_argument("--local_rank", type=int, help="set by the launcher; torchrun's LOCAL_RANK is read too")
    parser.add_argument("-e", "--past_exp", metavar="{CKPT_PATH,CKPT_DIR}", help="resume from a checkpoint")
    parser.add_argument("-i", "--init_ckpt", metavar="CKPT_PATH", help="load weights only (for evaluation)")
    parser.add_argument(
        "-c", "--config", help="yaml config merged over downstream/<task>/config.yaml (may hold only what differs)"
    )
    parser.add_argument("-d", "--downstream", help="downstream task, e.g. emotion_ecapa or emotion")
    parser.add_argument("-v", "--downstream_variant", help="task variant, e.g. the fold (fold1..fold5)")
    parser.add_argument("--hub", choices=["torch"], help="upstream hub (offline: torch only; default: torch)")
    parser.add_argument("-u", "--upstream", help="an s3prl hub entry (see `s3prl.hub.options()`)")
    parser.add_argument("-k", "--upstream_ckpt", metavar="PATH", help="checkpoint for *_local upstreams")
    parser.add_argument("-g", "--upstream_model_config", help="config file of the upstream model")
    parser.add_argument("-r", "--upstream_refresh", action="store_true", help="re-download cached upstreams")
    parser.add_argument("-f", "--upstream_trainable", action="store_true", help="fine-tune the upstream")
    parser.add_argument(
        "-s",
        "--upstream_feature_selection",
        help=f"which upstream output to use (default: {RUN_DEFAULTS['upstream_feature_selection']})",
    )
    parser.add_argument(
        "-l", "--upstream_layer_selection", type=int, help="use this one layer (default: a learned weighted sum)"
    )
    parser.add_argument("--upstream_feature_normalize", action="store_true", help="layer-normalize each layer")
    parser.add_argument("-n", "--expname", help="experiment name: result/downstream/<expname>")
    parser.add_argument("-p", "--expdir", help="experiment directory (overrides -n)")
    parser.add_argument("-a", "--auto_resume", action="store_true", help="resume if expdir has checkpoints")
    # s3prl's --upstream_model_name/--upstream_revision (for --hub huggingface, not offered) and
    # --push_to_hf_hub/--hf_hub_org are not taken: publish an exported model with
    # `python -m s3prl_ser.export RUN -o MODEL_DIR --push-to-hub USER/NAME`.
    parser.add_argument("--seed", type=int, help=f"random seed (default: {RUN_DEFAULTS['seed']})")
    parser.add_argument("--device", help=f"torch device (default: {default_device()})")
    parser.add_argument("--cache_dir", help="torch hub cache directory")
    parser.add_argument(
        "--no_feature_cache", action="store_true", help="run a frozen upstream at every step (config.feature_cache)"
    )
    parser.add_argument("--feature_cache_dir", help="feature cache directory (default ~/.cache/s3prl_ser/features)")
    parser.add_argument("--verbose", action="store_true", help="print the models; debug messages too")
    parser.add_argument("--disable_cudnn", action="store_true", help="turn cuDNN off")
    add_verbosity_options(parser, short_verbose=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    parsed = build_parser().parse_args(argv)
    setup_logging(parsed)  # before register(), whose s3prl import logs
    torch.multiprocessing.set_sharing_strategy("file_system")
    register()
    with ExitStack() as lock:
        with exit_on_error():
            args, config = prepare_run(RunRequest.from_arguments(parsed))
            lock.enter_context(experiment_lock(args))
            runner = build_runner(args, config)
        with exit_on_error(CacheSpaceError):  # found when a split is first read, mid-run
            result = getattr(runner, args.mode)()
    if args.mode == "inference":
        for row in result:
            print(json.dumps(row))


if __name__ == "__main__":
    main()
