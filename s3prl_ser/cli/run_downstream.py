"""``run_downstream.py``: s3prl's command line, driving :class:`~s3prl_ser.training.runner.SERRunner`.

Same flags and behaviour as s3prl's ``run_downstream.py`` (``-m train|evaluate|inference``,
``-u -k -g -r -f -s -l -d -v -c -o -n -p -e -i -a``, ``--seed``, ``--device``, torchrun), with:

* this project's tasks registered (``-d emotion_ecapa``) next to s3prl's;
* ``-c`` merged over the task's defaults, ``downstream/<task>/config.yaml`` wherever the task
  lives, so a ``-c`` file may hold only what differs (:mod:`s3prl_ser.config`);
* ``-c`` and ``-o`` keys the defaults lack refused (a typo is an error, not a new key), ``-o``
  values parsed as YAML;
* ``config.runner.fp16`` refused for training on a device other than CUDA (s3prl ignores it),
  and the ``runner`` section's values checked before anything is built;
* a missing ``-m inference -t`` file named (s3prl: a bare ``AssertionError``);
* checkpoints loaded weights-only, written atomically;
* one training at a time in an experiment directory (:mod:`s3prl_ser.training.run_lock`);
* the effective config, args and package versions saved in the experiment directory.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import subprocess
import sys
from argparse import Namespace
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

import s3prl_ser
from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.compat import safe_torch_load
from s3prl_ser.config import (
    S3PRL_FREE_FORM,
    ConfigError,
    apply_overrides,
    check_fp16,
    load_config,
    read_yaml,
)
from s3prl_ser.feature_cache.attach import apply_cache_flags
from s3prl_ser.feature_cache.speech import CacheSpaceError
from s3prl_ser.hub.registry import default_config, is_project_task, register
from s3prl_ser.training.loop import Schedule
from s3prl_ser.training.run_identity import (
    RUN_ARGS,
    describe,
    previous_run_files,
    run_identity,
    significant_differences,
)
from s3prl_ser.training.run_lock import leader_lock
from s3prl_ser.training.states import StatesFiles, seed_everything
from s3prl_ser.versions import installed_versions

if TYPE_CHECKING:  # the runner imports s3prl's; loaded only when a run starts
    from s3prl_ser.training.runner import SERRunner

__all__ = [
    "build_parser",
    "load_task_config",
    "requested_run",
    "get_downstream_args",
    "environment_record",
    "build_runner",
    "run",
    "main",
]

# Arguments a resumed run must not take from its checkpoint (as in s3prl).
_NOT_RESUMED = (
    "mode",
    "evaluate_split",
    "override",
    "backend",
    "local_rank",
    "past_exp",
    "device",
    "no_feature_cache",  # written into config.feature_cache, which the resume check compares
    "feature_cache_dir",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train or evaluate an s3prl downstream task (s3prl-ser).")
    parser.add_argument("-m", "--mode", choices=["train", "evaluate", "inference"], required=True)
    parser.add_argument(
        "-t", "--evaluate_split", default="test", help="split for -m evaluate; the audio file for -m inference"
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
    parser.add_argument("--hub", default="torch", choices=["torch"], help="upstream hub (offline: torch only)")
    parser.add_argument("-u", "--upstream", help="an s3prl hub entry (see `s3prl.hub.options()`)")
    parser.add_argument("-k", "--upstream_ckpt", metavar="PATH", help="checkpoint for *_local upstreams")
    parser.add_argument("-g", "--upstream_model_config", help="config file of the upstream model")
    parser.add_argument("-r", "--upstream_refresh", action="store_true", help="re-download cached upstreams")
    parser.add_argument("-f", "--upstream_trainable", action="store_true", help="fine-tune the upstream")
    parser.add_argument("-s", "--upstream_feature_selection", default="hidden_states")
    parser.add_argument("-l", "--upstream_layer_selection", type=int)
    parser.add_argument("--upstream_feature_normalize", action="store_true")
    parser.add_argument("-n", "--expname", help="experiment name: result/downstream/<expname>")
    parser.add_argument("-p", "--expdir", help="experiment directory (overrides -n)")
    parser.add_argument("-a", "--auto_resume", action="store_true", help="resume if expdir has checkpoints")
    # s3prl's --upstream_model_name/--upstream_revision (for --hub huggingface, not offered) and
    # --push_to_hf_hub/--hf_hub_org are not taken: publish an exported model with
    # `python -m s3prl_ser.export RUN -o MODEL_DIR --push-to-hub USER/NAME`.
    parser.add_argument("--seed", default=1337, type=int)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache_dir", help="torch hub cache directory")
    parser.add_argument(
        "--no_feature_cache", action="store_true", help="run a frozen upstream at every step (config.feature_cache)"
    )
    parser.add_argument("--feature_cache_dir", help="feature cache directory (default ~/.cache/s3prl_ser/features)")
    parser.add_argument("--verbose", action="store_true", help="print the models")
    parser.add_argument("--disable_cudnn", action="store_true")
    return parser


def latest_states(directory: str) -> str | None:
    """The newest ``states-<N>.ckpt`` in ``directory``, or None."""
    path = StatesFiles(directory).latest()
    return str(path) if path else None


def _explicit_args(argv: list[str] | None) -> dict:
    """The arguments the command line actually gives (defaults left out)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def _free_form(task: str) -> tuple[str, ...]:
    """The config sections of ``task`` that a ``-c`` file or ``-o`` replaces whole instead of merging."""
    if is_project_task(task):
        return S3PRL_FREE_FORM
    # s3prl's own experts read modelrc[modelrc["select"]]: one section per selectable model class.
    return (*S3PRL_FREE_FORM, "downstream_expert.modelrc")


def load_task_config(task: str, path: str | None = None) -> dict:
    """``downstream/<task>/config.yaml`` with the ``-c`` file ``path`` (if any) merged over it.

    A stock s3prl task without shipped defaults (the wheel has none) takes the ``-c`` file as is.

    Raises:
        FileNotFoundError: a file is missing, or neither defaults nor ``path`` exist.
        ConfigError: ``path`` has a key the defaults lack (named, with the closest known key).
    """
    try:
        defaults = default_config(task)
    except FileNotFoundError:
        if path is None:
            raise
        return read_yaml(path)
    return load_config(defaults, path, free_form=_free_form(task))


def _apply_overrides(args: Namespace, config: dict) -> None:
    """``-o`` on ``config`` (and ``args``), unless absent or s3prl's ``none``; then the feature-cache flags."""
    if args.override and args.override.lower() != "none":
        apply_overrides(args.override, args, config, free_form=_free_form(args.downstream))
    apply_cache_flags(args, config)


def requested_run(argv: list[str] | None = None) -> tuple[Namespace, dict]:
    """The args and config a fresh run of ``argv`` would use; reads the config, writes nothing.

    Raises:
        ConfigError: no ``-d``/``-u``, an unknown key in ``-c``/``-o``, and for training an
            invalid ``config.runner`` value or ``config.runner.fp16`` on a device other than CUDA.
        FileNotFoundError: a config file is missing.
    """
    args = build_parser().parse_args(argv)
    if args.downstream is None:
        raise ConfigError("choose a downstream task with -d (e.g. -d emotion_ecapa)")
    if args.upstream is None:
        raise ConfigError("choose an upstream with -u (e.g. -u fbank, -u hubert_local -k CKPT)")
    config = load_task_config(args.downstream, args.config)
    args.config = args.config or str(default_config(args.downstream))
    _apply_overrides(args, config)
    if args.mode == "train":
        _check_runner(config, args.device)
    return args, config


def _check_runner(config: dict, device: str) -> None:
    """Refuse, before anything is built or written, a ``runner`` section that training would
    refuse (the loop's own checks) or ``fp16`` off CUDA."""
    runner = config.get("runner") or {}
    check_fp16(runner.get("fp16", False), device)
    Schedule.from_runner(runner)


def _check_resume(ckpt_path: str, ckpt: dict, args: Namespace, config: dict, argv: list[str] | None) -> None:
    """Refuse a resumed training that would not continue the checkpoint's own run.

    ``args``/``config``: the resumed ones after this command's overrides. Run arguments given
    on the command line (which a resume otherwise ignores), a ``-c`` file, or overrides that
    change anything outside ``config.runner`` and data-feeding settings are refused, and so is
    resuming into another directory than the checkpoint's (its k-best record lives there).
    """
    explicit = _explicit_args(argv)
    requested_args = {key: getattr(args, key, None) for key in RUN_ARGS} | {
        key: value for key, value in explicit.items() if key in RUN_ARGS
    }
    requested_config = config
    if "config" in explicit:
        requested_config = load_task_config(args.downstream, explicit["config"])
        _apply_overrides(Namespace(**vars(args)), requested_config)
    changed = significant_differences(
        run_identity(ckpt["Args"], ckpt["Config"]), run_identity(requested_args, requested_config), resuming=True
    )
    if changed:
        raise ConfigError(
            f"{ckpt_path} belongs to a run with other settings ({describe(changed)}); resuming would mix "
            "two experiments: drop those arguments to resume it, or start a new run with another -p/-n"
        )
    home = os.path.dirname(os.path.abspath(ckpt_path))
    if os.path.abspath(args.expdir) != home:
        raise ConfigError(
            f"-p/-n {args.expdir} is not the directory of {ckpt_path}: a run resumes where its k-best "
            f"record is; move the run there first, or resume with -p {home}"
        )


def get_downstream_args(argv: list[str] | None = None) -> tuple[Namespace, dict]:
    """Parse the command line; resume args/config from a checkpoint; apply overrides.

    Training refuses to start afresh in a directory holding an earlier run, and refuses to
    resume a run with arguments or config (outside ``runner``) that differ from its checkpoint's.
    A resumed run works in the directory given by ``-p``/``-n``, else in its checkpoint's
    directory (s3prl uses the directory stored in the checkpoint, which is wrong once moved).

    Raises:
        ConfigError, FileNotFoundError, ValueError: bad arguments or config (as
            :func:`requested_run`), a run that cannot be resumed or reused, or a missing
            ``-t`` audio file for ``-m inference``.
    """
    args = build_parser().parse_args(argv)
    if args.mode == "inference" and not os.path.isfile(args.evaluate_split):
        raise FileNotFoundError(f"-t {args.evaluate_split}: audio file for -m inference not found")
    local_rank = (
        args.local_rank
        if args.local_rank is not None
        else (int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else None)
    )
    expdir = args.expdir or (f"result/downstream/{args.expname}" if args.expname else None)
    if expdir is None and args.past_exp is None:
        raise ConfigError("name the experiment with -n NAME or -p EXPDIR")

    past_exp = args.past_exp
    if args.auto_resume and expdir and os.path.isdir(expdir) and latest_states(expdir):
        past_exp = expdir

    if not past_exp:
        args, config = requested_run(argv)
        args.local_rank, args.expdir = local_rank, expdir
        earlier = previous_run_files(args.expdir) if args.mode == "train" else []
        if earlier:
            raise ConfigError(
                f"{args.expdir} already holds a run ({', '.join(earlier[:4])}{', ...' if len(earlier) > 4 else ''}): "
                "resume it with -a (or -e CKPT), or choose a new -p/-n; nothing was overwritten"
            )
        os.makedirs(args.expdir, exist_ok=True)
        return args, config

    ckpt_path = latest_states(past_exp) if os.path.isdir(past_exp) else past_exp
    if ckpt_path is None or not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"no checkpoint to resume from at {past_exp}")
    print(f"[Runner] - Resume from {ckpt_path}")
    ckpt = safe_torch_load(ckpt_path)
    if "Args" not in ckpt or "Config" not in ckpt:
        raise ValueError(f"{ckpt_path}: not an s3prl runner checkpoint (no Args/Config)")
    if args.mode == "train" and "Optimizer" not in ckpt:
        raise ConfigError(
            f"{ckpt_path} is a reported (averaged) model, not a training state: training cannot continue from "
            "it; resume the run from its states-<N>.ckpt (-a -p DIR), or evaluate this file with -m evaluate"
        )
    resumed = vars(ckpt["Args"]).copy()
    resumed.update({k: v for k, v in vars(args).items() if k in _NOT_RESUMED})
    args = Namespace(**resumed)
    args.past_exp, args.local_rank, args.init_ckpt = past_exp, local_rank, ckpt_path
    args.expdir = expdir or os.path.dirname(os.path.abspath(ckpt_path))
    config = copy.deepcopy(ckpt["Config"])
    _apply_overrides(args, config)
    if args.mode == "train":
        _check_runner(config, args.device)
        _check_resume(ckpt_path, ckpt, args, config, argv)
    os.makedirs(args.expdir, exist_ok=True)
    return args, config


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(s3prl_ser.__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment_record() -> dict:
    """Versions of the code and packages that produced a run."""
    packages = installed_versions(("s3prl-ser", "s3prl", "torch", "torchaudio", "numpy", "soundfile", "tensorboardX"))
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "packages": packages,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "command": sys.argv,
    }


def _save_run_record(args: Namespace, config: dict) -> None:
    from s3prl.utility.helper import get_time_tag

    tag = get_time_tag()
    with open(os.path.join(args.expdir, f"args_{tag}.yaml"), "w") as handle:
        yaml.safe_dump(vars(args), handle)
    with open(os.path.join(args.expdir, f"config_{tag}.yaml"), "w") as handle:
        yaml.safe_dump(config, handle)
    with open(os.path.join(args.expdir, f"versions_{tag}.yaml"), "w") as handle:
        yaml.safe_dump(environment_record(), handle)


def _seed_everything(args: Namespace) -> None:
    seed_everything(args.seed)
    torch.backends.cudnn.enabled = not args.disable_cudnn
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def build_runner(args: Namespace, config: dict) -> SERRunner:
    """Join the process group (torchrun), check a resumed checkpoint's launch, seed, and build
    the runner for parsed ``args``/``config``; a training run then records its config, args
    and versions in its directory.

    Raises:
        ConfigError, FileNotFoundError, ValueError: bad settings, data or checkpoints.
    """
    from s3prl.utility.helper import is_leader_process

    from s3prl_ser.training.runner import SERRunner

    # s3prl's run_downstream calls hack_isinstance(), a torch<1.8 DDP workaround that wraps
    # builtins.isinstance again on every call: repeated in-process runs (cross-validation)
    # would slow every isinstance check. It is not needed on torch >= 1.8, so it is not called.
    if args.cache_dir is not None:
        torch.hub.set_dir(args.cache_dir)
    if args.local_rank is not None and not torch.distributed.is_initialized():
        if args.device.startswith("cuda"):
            torch.cuda.set_device(args.local_rank)
        torch.distributed.init_process_group(args.backend or ("nccl" if args.device.startswith("cuda") else "gloo"))
    if args.mode == "train" and args.past_exp:
        ckpt = safe_torch_load(args.init_ckpt)
        was_ddp = ckpt["Args"].local_rank is not None
        if was_ddp != torch.distributed.is_initialized():
            raise ValueError(
                f"{args.init_ckpt} was trained {'with' if was_ddp else 'without'} DDP; resume it the same way"
            )
        if was_ddp and ckpt.get("WorldSize") != torch.distributed.get_world_size():
            raise ValueError(f"{args.init_ckpt} was trained with {ckpt.get('WorldSize')} processes")
    _seed_everything(args)
    runner = SERRunner(args, config)
    if args.mode == "train" and is_leader_process():
        _save_run_record(args, config)
    if args.verbose:
        for entry in runner.all_entries:
            print(entry.model)
    return runner


def _experiment_lock(args: Namespace) -> AbstractContextManager[object]:
    """The lock of ``args.expdir`` that a training holds in its leader process (entering it
    raises :class:`~s3prl_ser.training.run_lock.DirectoryInUseError` while another process
    trains there). Evaluation and inference take none, so a checkpoint can be checked while its
    run trains: emotion_ecapa's evaluation writes only to its own ``evaluate_<checkpoint>/``."""
    return leader_lock(args.expdir) if args.mode == "train" else nullcontext()


def run(args: Namespace, config: dict) -> SERRunner:
    """Build the runner for parsed ``args``/``config`` and execute ``args.mode``, holding
    :func:`_experiment_lock`."""
    with _experiment_lock(args):
        runner = build_runner(args, config)
        getattr(runner, args.mode)()
    return runner


def main(argv: list[str] | None = None) -> None:
    torch.multiprocessing.set_sharing_strategy("file_system")
    register()
    with ExitStack() as lock:
        with exit_on_error():
            args, config = get_downstream_args(argv)
            lock.enter_context(_experiment_lock(args))
            runner = build_runner(args, config)
        with exit_on_error(CacheSpaceError):  # found when a split is first read, mid-run
            getattr(runner, args.mode)()


if __name__ == "__main__":
    main()
