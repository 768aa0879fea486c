"""Launching one ``run_downstream.py`` run from a typed :class:`RunRequest`.

The library form of s3prl's command line (``python run_downstream.py`` parses its arguments
into a :class:`RunRequest` and calls :func:`launch`); cross-validation, the deployment run,
Table 1 and the benchmarks build requests directly. Beyond s3prl's behaviour:

* this project's tasks registered (``-d emotion_ecapa``) next to s3prl's;
* the ``-c`` file merged over the task's defaults, ``downstream/<task>/config.yaml`` wherever
  the task lives, so it may hold only what differs (:mod:`s3prl_ser.config`);
* ``-c`` and override keys the defaults lack refused (a typo is an error, not a new key);
* ``config.runner.fp16`` refused for training on a device other than CUDA (s3prl ignores it),
  and the ``runner`` section's values checked before anything is built;
* a missing ``-m inference -t`` file named (s3prl: a bare ``AssertionError``);
* checkpoints loaded weights-only, written atomically;
* one training at a time in an experiment directory (:mod:`s3prl_ser.training.run_lock`);
* the effective config, args and package versions saved in the experiment directory.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from argparse import Namespace
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import yaml

from s3prl_ser.config import (
    S3PRL_FREE_FORM,
    ConfigError,
    Override,
    apply_overrides,
    check_fp16,
    load_config,
    parse_overrides,
    read_yaml,
)
from s3prl_ser.feature_cache.attach import apply_cache_flags
from s3prl_ser.fileio import atomic_write_text, safe_torch_load
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
from s3prl_ser.upstreams.registry import default_config, is_project_task
from s3prl_ser.versions import environment_record

if TYPE_CHECKING:  # the runner imports s3prl's; loaded only when a run starts
    from s3prl_ser.training.runner import SERRunner

__all__ = [
    "RunRequest",
    "RUN_DEFAULTS",
    "default_device",
    "latest_states",
    "load_task_config",
    "requested_run",
    "prepare_run",
    "build_runner",
    "experiment_lock",
    "run",
    "launch",
]

logger = logging.getLogger(__name__)


def default_device() -> str:
    """``cuda`` where a GPU is visible, else ``cpu``: a run's device when none is stated."""
    return "cuda" if torch.cuda.is_available() else "cpu"


# The options whose unstated value is not None/False (run_downstream.py's --help shows them).
RUN_DEFAULTS: dict[str, Any] = {
    "evaluate_split": "test",
    "hub": "torch",
    "upstream_feature_selection": "hidden_states",
    "seed": 1337,
}


@dataclass(frozen=True)
class RunRequest:
    """One ``run_downstream.py`` run: the options it states, and its config overrides.

    Fields are run_downstream.py's options (its parser's destinations, e.g. ``upstream`` for
    ``-u``). ``None`` (``False`` for flags) means "not stated": a fresh run takes the default
    (:data:`RUN_DEFAULTS`, :func:`default_device`), a resumed run its checkpoint's value.
    ``overrides`` are typed ``-o`` entries, ``("config.runner.total_steps", 40)``, applied in order.

    Example:
        >>> base = RunRequest(upstream="fbank", downstream="emotion_ecapa", seed=3)
        >>> fold = base.with_overrides(("config.downstream_expert.datarc.test_fold", "fold2"))
        >>> fold.overrides, fold.stated()["seed"]
        ((('config.downstream_expert.datarc.test_fold', 'fold2'),), 3)
    """

    mode: str = "train"
    expdir: str | None = None
    expname: str | None = None
    upstream: str | None = None
    upstream_ckpt: str | None = None
    downstream: str | None = None
    downstream_variant: str | None = None
    config: str | None = None
    overrides: tuple[Override, ...] = field(default=(), hash=False)  # values may be lists
    evaluate_split: str | None = None
    past_exp: str | None = None
    init_ckpt: str | None = None
    auto_resume: bool = False
    seed: int | None = None
    device: str | None = None
    upstream_model_config: str | None = None
    upstream_refresh: bool = False
    upstream_trainable: bool = False
    upstream_feature_selection: str | None = None
    upstream_layer_selection: int | None = None
    upstream_feature_normalize: bool = False
    hub: str | None = None
    backend: str | None = None
    local_rank: int | None = None
    cache_dir: str | None = None
    no_feature_cache: bool = False
    feature_cache_dir: str | None = None
    verbose: bool = False
    disable_cudnn: bool = False

    @classmethod
    def from_arguments(cls, arguments: Namespace) -> RunRequest:
        """The request of a parsed run_downstream.py command line (unstated options None/False;
        its ``-o`` string, a user's, parsed here by :func:`~s3prl_ser.config.parse_overrides`).

        Raises:
            ConfigError: an ``-o`` entry is not ``key=value``.
        """
        values = {name: getattr(arguments, name, None) for name in _OPTION_NAMES}
        values = {name: value for name, value in values.items() if value is not None}
        override = getattr(arguments, "override", None)
        return cls(**values, overrides=tuple(parse_overrides(override)) if override else ())

    def with_overrides(self, *overrides: Override) -> RunRequest:
        """This request with ``overrides`` applied after its own."""
        return dataclasses.replace(self, overrides=(*self.overrides, *overrides))

    def stated(self) -> dict[str, Any]:
        """The options this request states (what a command line would give), overrides left out."""
        return {
            name: value for name in _OPTION_NAMES if (value := getattr(self, name)) is not None and value is not False
        }

    def arguments(self) -> Namespace:
        """Every option, unstated ones at their defaults, as s3prl's runner reads them
        (``override`` holds the overrides as written on a command line, for the run's record)."""
        values = {name: getattr(self, name) for name in _OPTION_NAMES}
        for name, default in {**RUN_DEFAULTS, "device": default_device()}.items():
            if values[name] is None:
                values[name] = default
        return Namespace(**values, override=_override_text(self.overrides))


_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(RunRequest) if f.name != "overrides")


def _override_text(overrides: Iterable[Override]) -> str | None:
    """Overrides as s3prl's ``-o`` would write them (the record in ``args_*.yaml`` and checkpoints)."""
    dump = lambda value: yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()  # noqa: E731
    return ",,".join(f"{key}={dump(value)}" for key, value in overrides) or None


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


def latest_states(directory: str | os.PathLike) -> str | None:
    """The newest ``states-<N>.ckpt`` in ``directory``, or None."""
    path = StatesFiles(str(directory)).latest()
    return str(path) if path else None


def _free_form(task: str) -> tuple[str, ...]:
    """The config sections of ``task`` that a ``-c`` file or override replaces whole instead of merging."""
    if is_project_task(task):
        return S3PRL_FREE_FORM
    # s3prl's own experts read modelrc[modelrc["select"]]: one section per selectable model class.
    return (*S3PRL_FREE_FORM, "downstream_expert.modelrc")


def load_task_config(task: str, path: str | os.PathLike | None = None) -> dict:
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


def _apply_overrides(args: Namespace, config: dict, overrides: Iterable[Override]) -> None:
    """``overrides`` on ``config`` (and ``args``); then the feature-cache flags."""
    apply_overrides(copy.deepcopy(tuple(overrides)), args, config, free_form=_free_form(args.downstream))
    apply_cache_flags(args, config)


def requested_run(request: RunRequest) -> tuple[Namespace, dict]:
    """The args and config a fresh run of ``request`` would use; reads the config, writes nothing.

    Raises:
        ConfigError: no downstream/upstream, an unknown key in the ``-c`` file or overrides, and
            for training an invalid ``config.runner`` value or ``config.runner.fp16`` off CUDA.
        FileNotFoundError: a config file is missing.
    """
    args = request.arguments()
    if args.downstream is None:
        raise ConfigError("choose a downstream task with -d (e.g. -d emotion_ecapa)")
    if args.upstream is None:
        raise ConfigError("choose an upstream with -u (e.g. -u fbank, -u hubert_local -k CKPT)")
    config = load_task_config(args.downstream, args.config)
    args.config = args.config or str(default_config(args.downstream))
    _apply_overrides(args, config, request.overrides)
    if args.mode == "train":
        _check_runner(config, args.device)
    return args, config


def _check_runner(config: dict, device: str) -> None:
    """Refuse, before anything is built or written, a ``runner`` section that training would
    refuse (the loop's own checks) or ``fp16`` off CUDA."""
    runner = config.get("runner") or {}
    check_fp16(runner.get("fp16", False), device)
    Schedule.from_runner(runner)


def _check_resume(ckpt_path: str, ckpt: dict, args: Namespace, config: dict, request: RunRequest) -> None:
    """Refuse a resumed training that would not continue the checkpoint's own run.

    ``args``/``config``: the resumed ones after the request's overrides. Run arguments the
    request states (which a resume otherwise ignores), a ``-c`` file, or overrides that
    change anything outside ``config.runner`` and data-feeding settings are refused, and so is
    resuming into another directory than the checkpoint's (its k-best record lives there).
    """
    stated = request.stated()
    requested_args = {key: getattr(args, key, None) for key in RUN_ARGS} | {
        key: value for key, value in stated.items() if key in RUN_ARGS
    }
    requested_config = config
    if "config" in stated:
        requested_config = load_task_config(args.downstream, stated["config"])
        _apply_overrides(Namespace(**vars(args)), requested_config, request.overrides)
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


def prepare_run(request: RunRequest) -> tuple[Namespace, dict]:
    """The args and config ``request`` runs with: resumed from a checkpoint (``past_exp``, or
    ``auto_resume`` in a directory with states), else fresh; overrides applied.

    Training refuses to start afresh in a directory holding an earlier run, and refuses to
    resume a run with arguments or config (outside ``runner``) that differ from its checkpoint's.
    A resumed run works in the directory given by ``expdir``/``expname``, else in its checkpoint's
    directory (s3prl uses the directory stored in the checkpoint, which is wrong once moved).

    Raises:
        ConfigError, FileNotFoundError, ValueError: bad arguments or config (as
            :func:`requested_run`), a run that cannot be resumed or reused, or a missing
            ``-t`` audio file for ``-m inference``.
    """
    args = request.arguments()
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
        args, config = requested_run(request)
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
    logger.info(f"[Runner] - Resume from {ckpt_path}")
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
    _apply_overrides(args, config, request.overrides)
    if args.mode == "train":
        _check_runner(config, args.device)
        _check_resume(ckpt_path, ckpt, args, config, request)
    os.makedirs(args.expdir, exist_ok=True)
    return args, config


def _save_run_record(args: Namespace, config: dict) -> None:
    from s3prl.utility.helper import get_time_tag

    tag = get_time_tag()
    for name, record in (("args", vars(args)), ("config", config), ("versions", environment_record())):
        atomic_write_text(os.path.join(args.expdir, f"{name}_{tag}.yaml"), yaml.safe_dump(record))


def _seed_everything(args: Namespace) -> None:
    seed_everything(args.seed)
    torch.backends.cudnn.enabled = not args.disable_cudnn
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def build_runner(args: Namespace, config: dict) -> SERRunner:
    """Join the process group (torchrun), check a resumed checkpoint's launch, seed, and build
    the runner for prepared ``args``/``config``; a training run then records its config, args
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
            logger.info(entry.model)
    return runner


def experiment_lock(args: Namespace) -> AbstractContextManager[object]:
    """The lock of ``args.expdir`` that a training holds in its leader process (entering it
    raises :class:`~s3prl_ser.training.run_lock.DirectoryInUseError` while another process
    trains there). Evaluation and inference take none, so a checkpoint can be checked while its
    run trains: emotion_ecapa's evaluation writes only to its own ``evaluate_<checkpoint>/``."""
    return leader_lock(args.expdir) if args.mode == "train" else nullcontext()


def run(args: Namespace, config: dict) -> SERRunner:
    """Build the runner for prepared ``args``/``config`` and execute ``args.mode``, holding
    :func:`experiment_lock`."""
    with experiment_lock(args):
        runner = build_runner(args, config)
        getattr(runner, args.mode)()
    return runner


def launch(request: RunRequest) -> SERRunner:
    """Run ``request`` (train, evaluate or infer) in this process: :func:`prepare_run`, then :func:`run`.

    Raises:
        ConfigError, FileNotFoundError, ValueError: as :func:`prepare_run` and :func:`build_runner`.
        DirectoryInUseError: another process trains in the experiment directory.
    """
    return run(*prepare_run(request))
