"""s3prl's Runner plus the paper's final step: average the k best checkpoints, then test once.

Training runs in the project's loop (:mod:`s3prl_ser.training.loop`, shared with the
fine-tuning stage) instead of s3prl's: it evaluates dev and saves whatever the expert asks
for (the ``emotion_ecapa`` expert asks for the k best by the dev metric its ``targets.selection``
names: dev accuracy by default), like s3prl's, and
also resumes exactly (the interrupted epoch at its next batch, every RNG restored), stops
every DDP rank together (s3prl 0.4.18 advances the step on rank 0 only), writes checkpoints
atomically and refuses AMP off CUDA. Dev is also evaluated, and states saved, at the last
update. After
training, :meth:`SERRunner.finalize` averages the k best (or takes the best one when averaging
is off), saves the result as a runner checkpoint (``dev-avg.ckpt`` / ``dev-best.ckpt``, usable
with ``-e`` / ``-i``), loads it and evaluates the test split exactly once. The test set takes
no part in any choice.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import logging
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch
from s3prl.downstream.runner import ModelEntry, Runner
from s3prl.optimizers import get_optimizer
from s3prl.schedulers import get_scheduler
from s3prl.utility.helper import get_model_state, is_leader_process
from tensorboardX import SummaryWriter
from torch import nn
from torch.distributed import barrier, get_rank, get_world_size, is_initialized
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from s3prl_ser import fileio
from s3prl_ser.data.fold_data import FoldData, load_fold_data
from s3prl_ser.data.folds import check_run_fold, is_deployment, resolve_fold
from s3prl_ser.data.protocol import PROTOCOL_KEY, FoldSpec, check_protocol_record, checkpoint_protocol
from s3prl_ser.feature_cache.attach import FeatureCaches, attach_feature_cache, cache_settings
from s3prl_ser.training.checkpoint_averaging import average_checkpoint_files
from s3prl_ser.training.distributed import all_gather
from s3prl_ser.training.loop import OptimizerStep, Schedule, TrainingLoop, UpdateResult
from s3prl_ser.training.run_dir import RunDir
from s3prl_ser.training.run_identity import run_identity
from s3prl_ser.training.states import Progress, StatesFiles, restore_progress, training_state
from s3prl_ser.training.targets import TargetSpec, expert_targets
from s3prl_ser.upstreams.multi_upstream import build_featurizer, build_upstreams, raise_min_samples

__all__ = ["SERRunner"]

# Not `logger`: s3prl's runner names its TensorBoard writer so (evaluate's argument, finalize's).
_log = logging.getLogger(__name__)


class _RunnerHooks:
    """The downstream stage's side of the loop: s3prl's logging, dev evaluation (the expert
    keeps the k best) and runner checkpoints."""

    def __init__(self, runner: SERRunner, split: str, optimizer_step: OptimizerStep, leader: bool) -> None:
        self.runner, self.split, self.optimizer_step = runner, split, optimizer_step
        self.leader = leader
        self.states = StatesFiles(runner.args.expdir, keep=runner.config["runner"].get("max_keep", 1))
        self.logger = SummaryWriter(runner.args.expdir) if leader else None
        self.records: defaultdict = defaultdict(list)
        self.batch_ids: list[int] = []
        if leader:
            self.states.remove_leftovers()

    def after_update(self, step: int, result: UpdateResult) -> None:
        if not self.leader:  # only the leader logs
            self.records, self.batch_ids = defaultdict(list), []

    def log(self, step: int) -> None:
        if self.leader:
            self.runner.downstream.model.log_records(
                self.split,
                records=self.records,
                logger=self.logger,
                global_step=step,
                batch_ids=self.batch_ids,
                total_batch_num=len(self.batch_ids),
            )
            self.records, self.batch_ids = defaultdict(list), []

    def evaluate(self, step: int) -> list[str]:
        names = []
        for split in self.runner.config["runner"]["eval_dataloaders"]:
            names += self.runner.evaluate(split, self.logger, step)
        return names

    def save(self, progress: Progress, names: list[str], states: bool) -> None:
        checkpoint = self.runner._states(progress, self.optimizer_step)
        for name in names:
            path = os.path.join(self.runner.args.expdir, name)
            tqdm.write(f"[Runner] - Save the checkpoint to: {path}")
            fileio.atomic_torch_save(checkpoint, path)
        if states:
            tqdm.write(f"[Runner] - Save the states to: {self.states.save(progress.step, checkpoint)}")

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _target_record(expert: nn.Module) -> dict:
    """What the expert's model predicts, for checkpoints and ``final.json``: ``Targets`` (its
    :class:`~s3prl_ser.training.targets.TargetSpec` record) and, with attributes, ``AttributeScale``
    (``{name: [lo, hi]}``, the corpus scale its outputs are normalised to); nothing for an expert
    without targets (s3prl's own)."""
    targets = getattr(expert, "targets", None)
    if targets is None:
        return {}
    record = {"Targets": targets.to_dict()}
    if targets.attributes:
        record["AttributeScale"] = {name: list(bounds) for name, bounds in expert.attribute_scale.items()}
    return record


class SERRunner(Runner):
    """s3prl ``Runner`` with atomic checkpoints, safe loading, several upstreams
    (``-u NAME1,NAME2``), per-fold fine-tuned upstreams, DDP on CPU, and checkpoint averaging."""

    def __init__(self, args, config) -> None:  # s3prl's, with a weights-only checkpoint load
        self.args = args
        self.config = config
        self.init_ckpt = fileio.safe_torch_load(args.init_ckpt) if args.init_ckpt else {}
        recorded = checkpoint_protocol(self.init_ckpt)
        if recorded is not None:
            # -e/-i of a trained model: never for a fold whose test set it trained on (a deployment model: any)
            check_protocol_record(recorded, self.test_fold(), args.init_ckpt)
        datarc = config.get("downstream_expert", {}).get("datarc")
        if datarc is not None:  # before the fold's audio check: fbank needs 560 samples, not 400
            raise_min_samples(datarc, args.upstream, args.upstream_model_config)
        self.fold_data = self._load_fold_data()
        self.upstream = self._get_upstream()
        self.featurizer = self._get_featurizer()
        self.feature_caches = self._attach_feature_cache()
        self.downstream = self._get_downstream()
        self.all_entries = [self.upstream, self.featurizer, self.downstream]

    def test_fold(self) -> str | None:
        """The fold being trained or evaluated, as the expert will read it."""
        datarc = self.config.get("downstream_expert", {}).get("datarc", {})
        return resolve_fold(datarc.get("test_fold"), getattr(self.args, "downstream_variant", None))

    def _expert_class(self) -> type[nn.Module]:
        """The task's ``DownstreamExpert``, as s3prl finds it."""
        return importlib.import_module(f"s3prl.downstream.{self.args.downstream}.expert").DownstreamExpert

    def _load_fold_data(self) -> FoldData | None:
        """The fold's data, built once here (audio headers checked) and handed to the expert,
        when the config names meta data in the emotion layout and the expert takes ``fold_data``
        (``emotion_ecapa``); None otherwise."""
        datarc = self.config.get("downstream_expert", {}).get("datarc", {})
        if datarc.get("root") is None or datarc.get("meta_data") is None:
            return None
        if "fold_data" not in inspect.signature(self._expert_class()).parameters:
            return None
        targets, _ = expert_targets(self.config.get("downstream_expert"))
        return load_fold_data(
            datarc, check_run_fold(self.test_fold()), where="downstream_expert.datarc", **targets.fold_data_options()
        )

    def fold_protocol(self) -> FoldSpec:
        """The fold's full protocol (corpus, split) when the config names meta data in the
        emotion layout, which fine-tuned upstreams are checked against; else the fold alone."""
        if self.fold_data is not None:
            return self.fold_data.protocol
        datarc = self.config.get("downstream_expert", {}).get("datarc", {})
        fold = check_run_fold(self.test_fold())
        if datarc.get("root") is None or datarc.get("meta_data") is None:
            return fold
        # An expert that reads its own data (s3prl's ``emotion``): its lists only, for the protocol.
        return load_fold_data(datarc, fold, where="downstream_expert.datarc", read_audio=False).protocol

    def _get_downstream(self) -> ModelEntry:
        """s3prl's, except that the expert is handed the fold's data when the runner built it."""
        handed = {"fold_data": self.fold_data} if self.fold_data is not None else {}
        model = self._expert_class()(
            upstream_dim=self.featurizer.model.output_dim,
            upstream_rate=self.featurizer.model.downsample_rate,
            **self.config,
            **vars(self.args),
            **handed,
        ).to(self.args.device)
        return self._init_model(
            model=model, name="Downstream", trainable=True, interfaces=["get_dataloader", "log_records"]
        )

    def _init_model(self, model: nn.Module, name: str, trainable: bool, interfaces=None) -> ModelEntry:
        """s3prl's, except that DDP gets ``device_ids`` only on CUDA (gloo on CPU refuses them)."""
        for interface in interfaces or []:
            if not hasattr(model, interface):
                raise AttributeError(f"{name} lacks the interface {interface!r} the runner needs")
        self._load_weight(model, name)
        if is_initialized() and trainable and any(p.requires_grad for p in model.parameters()):
            device_ids = [self.args.local_rank] if str(self.args.device).startswith("cuda") else None
            model = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)
            for interface in interfaces or []:
                setattr(model, interface, getattr(model.module, interface))
        return ModelEntry(model, name, trainable, interfaces)

    def _get_upstream(self):
        """s3prl's upstream construction (torch hub only) for one or several upstreams, each
        fine-tuned one checked against this run's fold, corpus and split."""
        refresh = self.args.upstream_refresh
        if is_initialized() and get_rank() > 0:
            barrier()  # rank 0 downloads/converts first
            refresh = False
        model = build_upstreams(
            self.args.upstream, self.args.upstream_ckpt, self.args.upstream_model_config, refresh, self.fold_protocol()
        ).to(self.args.device)
        if is_initialized() and get_rank() == 0:
            barrier()
        return self._init_model(
            model=model,
            name="Upstream",
            trainable=self.args.upstream_trainable,
            interfaces=["get_downsample_rates"],
        )

    def _get_featurizer(self):
        model = build_featurizer(
            _unwrap(self.upstream.model),
            self.args.upstream_feature_selection,
            self.args.upstream_layer_selection,
            self.args.device,
            self.args.upstream_feature_normalize,
        ).to(self.args.device)
        return self._init_model(
            model=model, name="Featurizer", trainable=True, interfaces=["output_dim", "downsample_rate"]
        )

    def _attach_feature_cache(self) -> FeatureCaches | None:
        """Frozen upstreams read their features from the feature cache
        (:mod:`s3prl_ser.feature_cache.attach`); None: the upstream runs at every step."""
        model, caches = attach_feature_cache(
            self.args,
            self.config,
            _unwrap(self.upstream.model),
            _unwrap(self.featurizer.model),
            self.test_fold() if cache_settings(self.config) else None,
        )
        if caches is not None:
            self.upstream.model = model
        return caches

    def _fill_feature_cache(self, split: str) -> None:
        """Extract what the cache lacks of ``split`` before the split is read."""
        if self.feature_caches is not None:
            self.feature_caches.fill_split(split, _unwrap(self.downstream.model).get_dataloader(split).dataset)

    def _train_batches(self, split: str, epoch: int, start: int) -> Iterable:
        """This process's batches of ``epoch`` from global batch ``start`` on."""
        expert = self.downstream.model
        if "start" in inspect.signature(expert.get_dataloader).parameters:
            return expert.get_dataloader(split, epoch=epoch, start=start)
        # A stock s3prl expert deals its own order: re-entering an epoch skips its first
        # ``start`` batches, which is the same data only if that order is fixed per epoch.
        dataloader = expert.get_dataloader(split)
        if isinstance(getattr(dataloader, "sampler", None), DistributedSampler):
            dataloader.sampler.set_epoch(epoch)
        return itertools.islice(dataloader, start, None)

    def _batches_per_epoch(self, split: str) -> int:
        expert = self.downstream.model
        if "start" in inspect.signature(expert.get_dataloader).parameters:
            return len(expert.get_dataloader(split, epoch=0, start=0))
        return len(expert.get_dataloader(split))

    def _states(self, progress: Progress, optimizer_step: OptimizerStep) -> dict:
        """A runner checkpoint: s3prl's (Args, Config, trainable models' weights) plus the
        training core's exact-resume state (:func:`~s3prl_ser.training.states.training_state`)."""
        states = {**training_state(progress, optimizer_step), "Args": self.args, "Config": self.config}
        class_names = getattr(_unwrap(self.downstream.model), "class_names", None)
        if class_names is not None:  # inference needs the class order without the corpus at hand
            states["ClassNames"] = list(class_names)
        protocol = getattr(_unwrap(self.downstream.model), "protocol", None)
        if protocol is not None:  # the corpus, fold, split and classes the model is trained on
            states[PROTOCOL_KEY] = protocol.to_dict()
        states.update(_target_record(_unwrap(self.downstream.model)))
        for entry in self.all_entries:
            if entry.trainable:
                states[entry.name] = get_model_state(entry.model)
        if is_initialized():
            states["WorldSize"] = get_world_size()
        return states

    def train(self) -> None:
        """The project's training loop (:mod:`s3prl_ser.training.loop`), then :meth:`finalize`."""
        runner = self.config["runner"]
        schedule = Schedule.from_runner(runner)
        device = torch.device(self.args.device)
        trainable_models = []
        for entry in self.all_entries:
            if entry.trainable:
                entry.model.train()
                trainable_models.append(entry.model)
            else:
                entry.model.eval()
        optimizer = get_optimizer(trainable_models, schedule.total_steps, self.config["optimizer"])
        scheduler = (
            get_scheduler(optimizer, schedule.total_steps, self.config["scheduler"])
            if self.config.get("scheduler")
            else None
        )
        optimizer_step = OptimizerStep(
            optimizer,
            scheduler,
            clipping=schedule.clipping,
            accumulate=schedule.accumulate,
            amp=bool(runner.get("fp16", False)),
            device_type=device.type,
        )
        progress = Progress()
        if "Step" in self.init_ckpt:  # resuming (-e / -a): a states or dev-top checkpoint (checked by the CLI)
            progress = restore_progress(
                self.init_ckpt, optimizer_step, schedule.accumulate, rank=get_rank() if is_initialized() else 0
            )
        specaug = None
        if self.config.get("specaug"):
            from s3prl.downstream.specaug import SpecAug

            specaug = SpecAug(**self.config["specaug"])
        split = runner.get("train_dataloader", "train")
        leader = is_leader_process()
        hooks = _RunnerHooks(self, split, optimizer_step, leader)
        expert = self.downstream.model

        def compute_loss(batch: tuple, step: int) -> torch.Tensor:
            wavs, *others = batch
            wavs = [torch.as_tensor(wav, dtype=torch.float32, device=device) for wav in wavs]
            with torch.set_grad_enabled(self.upstream.trainable):
                features = self.upstream.model(wavs)
            features = self.featurizer.model(wavs, features)
            if specaug:
                features, _ = specaug(features)
            hooks.batch_ids.append(len(hooks.batch_ids))
            return expert(split, features, *others, records=hooks.records)

        loop = TrainingLoop(
            schedule,
            optimizer_step,
            batches=lambda epoch, start: self._train_batches(split, epoch, start),
            batches_per_epoch=self._batches_per_epoch(split),
            ddp_modules=[m for m in trainable_models if isinstance(m, DistributedDataParallel)],
            leader=leader,
            barrier=barrier if is_initialized() else (lambda: None),
            gather=all_gather if is_initialized() else (lambda value: [value]),
            description="overall",
        )
        self._fill_feature_cache(split)
        try:
            loop.run(progress, compute_loss, hooks)
        finally:
            hooks.close()
        if leader and hasattr(_unwrap(expert), "best"):
            self.finalize()

    def evaluate(self, split=None, logger=None, global_step=0):
        """s3prl's; a standalone ``-m evaluate`` (no split/logger given) of an emotion_ecapa
        checkpoint writes to ``expdir/evaluate_<checkpoint>/`` and selects nothing."""
        expert = _unwrap(self.downstream.model)
        self._fill_feature_cache(split or self.args.evaluate_split)
        if split is None and logger is None and hasattr(expert, "evaluate_separately"):
            output = expert.evaluate_separately(Path(self.args.init_ckpt or "model").stem)
            _log.info(f"[SERRunner] - evaluating {self.args.init_ckpt}; results in {output}")
        # Only the leader evaluates: through DDP's wrapper, a forward would wait for the other
        # processes to broadcast buffers (BatchNorm statistics) with it, and never return.
        wrapped = [entry.model for entry in self.all_entries]
        for entry in self.all_entries:
            entry.model = _unwrap(entry.model)
        try:
            return super().evaluate(split, logger, global_step)
        finally:
            for entry, model in zip(self.all_entries, wrapped):
                entry.model = model

    def inference(self) -> list[dict]:
        """s3prl's ``-m inference`` of the file ``-t``; returns this project's expert's rows
        (``run_downstream.py`` prints them), which s3prl's runner drops: ``[]`` for s3prl's experts."""
        expert = _unwrap(self.downstream.model)
        if not hasattr(expert, "evaluate_separately"):  # s3prl's own expert prints its result itself
            super().inference()
            return []
        rows: list[dict] = []
        predict = expert.inference
        expert.inference = lambda features, filenames: rows.extend(predict(features, filenames))
        try:
            super().inference()
        finally:
            del expert.inference  # the method again
        return rows

    def finalize(self) -> Path:
        """Build the reported model from the k best dev checkpoints and score it on test."""
        expert = _unwrap(self.downstream.model)
        entries = expert.best.entries()
        if not entries:
            raise RuntimeError(
                f"{self.args.expdir}: no dev checkpoint was kept; is runner.eval_step larger than total_steps?"
            )
        expdir = Path(self.args.expdir)
        if expert.averaging.get("average", True):
            final = expdir / "dev-avg.ckpt"
            state = average_checkpoint_files([expdir / e.name for e in entries])
        else:
            final = expdir / "dev-best.ckpt"
            state = fileio.safe_torch_load(expdir / entries[0].name)
        state["ClassNames"] = list(expert.class_names)  # also for checkpoints of older versions
        if getattr(expert, "protocol", None) is not None:
            state[PROTOCOL_KEY] = expert.protocol.to_dict()
        state.update(_target_record(expert))
        fileio.atomic_torch_save(state, final)
        for entry in self.all_entries:
            if entry.name in state:
                _unwrap(entry.model).load_state_dict(state[entry.name])
        step = max(e.step for e in entries)
        tested = not is_deployment(expert.fold)  # a deployment run has no test set: no held-out score
        if tested:
            logger = SummaryWriter(str(expdir))
            try:
                self.evaluate("test", logger, global_step=step)
            finally:
                logger.close()
        targets = getattr(expert, "targets", TargetSpec())
        # dev_acc: the paper's dev accuracy (wa); else dev_<metric>, e.g. dev_ccc_mean
        metric = "acc" if targets.selection_metric == "wa" else targets.selection_metric
        record = {
            "checkpoint": final.name,
            "averaged": expert.averaging.get("average", True),
            "selected": [{"step": e.step, f"dev_{metric}": e.score, "file": e.name} for e in entries],
            "test_metrics": f"test_{expert.fold}_metrics.json" if tested else None,
            "identity": run_identity(self.args, self.config),
        }
        record.update(selection_metric=targets.selection_metric, targets=targets.to_dict())
        if targets.attributes:  # the scale the model's attribute outputs are normalised to
            record["attribute_scale"] = _target_record(expert)["AttributeScale"]
        RunDir(expdir).write_final(record)  # last: its presence marks the run finished
        _log.info(
            f"[SERRunner] - reported model {final} ({len(entries)} checkpoint(s), steps "
            f"{sorted(e.step for e in entries)}); "
            + (f"test results in {expdir / record['test_metrics']}" if tested else "deployment run: no test set")
        )
        return final
