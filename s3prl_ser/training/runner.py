"""s3prl's Runner plus the paper's final step: average the k best checkpoints, then test once.

The training loop is s3prl's (evaluate on dev, save whatever the expert asks for; the
``emotion_ecapa`` expert asks for the k best by dev accuracy), with three fixes that need
the loop itself: under DDP, s3prl 0.4.18 advances the step counter on rank 0 only, so the
other ranks never stop; checkpoints are written atomically; AMP uses ``torch.amp``. After
training, :meth:`SERRunner.finalize` averages the k best (or takes the best one when averaging
is off), saves the result as a runner checkpoint (``dev-avg.ckpt`` / ``dev-best.ckpt``, usable
with ``-e`` / ``-i``), loads it and evaluates the test split exactly once. The test set takes
no part in any choice.
"""

from __future__ import annotations

import glob
import inspect
import json
import math
import os
import re
from collections import defaultdict
from pathlib import Path

import torch
from s3prl.downstream.runner import ModelEntry, Runner
from s3prl.utility.helper import get_model_state, is_leader_process
from tensorboardX import SummaryWriter
from torch import nn
from torch.distributed import barrier, get_rank, get_world_size, is_initialized
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from s3prl_ser import compat
from s3prl_ser.training.checkpoint_averaging import average_checkpoint_files
from s3prl_ser.data.folds import resolve_fold
from s3prl_ser.hub.multi_upstream import build_featurizer, build_upstreams
from s3prl_ser.training.run_identity import run_identity

__all__ = ["SERRunner"]

FINAL_RECORD = "final.json"


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class SERRunner(Runner):
    """s3prl ``Runner`` with atomic checkpoints, safe loading, several upstreams
    (``-u NAME1,NAME2``), per-fold fine-tuned upstreams, DDP on CPU, and checkpoint averaging."""

    def __init__(self, args, config) -> None:  # s3prl's, with a weights-only checkpoint load
        self.args = args
        self.config = config
        self.init_ckpt = compat.safe_torch_load(args.init_ckpt) if args.init_ckpt else {}
        self.upstream = self._get_upstream()
        self.featurizer = self._get_featurizer()
        self.downstream = self._get_downstream()
        self.all_entries = [self.upstream, self.featurizer, self.downstream]

    def test_fold(self) -> str | None:
        """The fold being trained or evaluated, as the expert will read it."""
        datarc = self.config.get("downstream_expert", {}).get("datarc", {})
        return resolve_fold(datarc.get("test_fold"), getattr(self.args, "downstream_variant", None))

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
        """s3prl's upstream construction (torch hub only) for one or several upstreams,
        passing the fold to ``*_ft_avg`` entries."""
        refresh = self.args.upstream_refresh
        if is_initialized() and get_rank() > 0:
            barrier()  # rank 0 downloads/converts first
            refresh = False
        model = build_upstreams(
            self.args.upstream, self.args.upstream_ckpt, self.args.upstream_model_config, refresh, self.test_fold()
        ).to(self.args.device)
        if is_initialized() and get_rank() == 0:
            barrier()
        return self._init_model(
            model=model, name="Upstream", trainable=self.args.upstream_trainable,
            interfaces=["get_downsample_rates"],
        )

    def _get_featurizer(self):
        model = build_featurizer(
            _unwrap(self.upstream.model), self.args.upstream_feature_selection, self.args.upstream_layer_selection,
            self.args.device, self.args.upstream_feature_normalize,
        ).to(self.args.device)
        return self._init_model(model=model, name="Featurizer", trainable=True,
                                interfaces=["output_dim", "downsample_rate"])

    def _save(self, names: list[str], optimizer, scheduler, step: int, epoch: int) -> None:
        states = {"Optimizer": optimizer.state_dict(), "Step": step, "Epoch": epoch,
                  "Args": self.args, "Config": self.config}
        class_names = getattr(_unwrap(self.downstream.model), "class_names", None)
        if class_names is not None:  # inference needs the class order without the corpus at hand
            states["ClassNames"] = list(class_names)
        for entry in self.all_entries:
            if entry.trainable:
                states[entry.name] = get_model_state(entry.model)
        if scheduler:
            states["Scheduler"] = scheduler.state_dict()
        if is_initialized():
            states["WorldSize"] = get_world_size()
        for name in names:
            path = os.path.join(self.args.expdir, name)
            tqdm.write(f"[Runner] - Save the checkpoint to: {path}")
            compat.atomic_torch_save(states, path)

    def _prune_states(self) -> None:
        """Keep at most ``max_keep - 1`` states files before the next one is written."""
        paths = glob.glob(os.path.join(self.args.expdir, "states-*.ckpt"))
        paths.sort(key=lambda p: int(re.search(r"states-(\d+)\.ckpt$", p).group(1)))
        for path in paths[: max(len(paths) - self.config["runner"]["max_keep"] + 1, 0)]:
            os.remove(path)

    def train(self) -> None:
        """s3prl's training loop (see the module docstring for what differs), then :meth:`finalize`."""
        runner = self.config["runner"]
        device = torch.device(self.args.device)
        trainable_models, trainable_params = [], []
        for entry in self.all_entries:
            if entry.trainable:
                entry.model.train()
                trainable_models.append(entry.model)
                trainable_params += list(entry.model.parameters())
            else:
                entry.model.eval()
        amp = bool(runner.get("fp16", False)) and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        optimizer = self._get_optimizer(trainable_models)
        scheduler = self._get_scheduler(optimizer) if self.config.get("scheduler") else None
        specaug = None
        if self.config.get("specaug"):
            from s3prl.downstream.specaug import SpecAug

            specaug = SpecAug(**self.config["specaug"])
        leader = is_leader_process()
        logger = SummaryWriter(self.args.expdir) if leader else None
        step, epoch = self.init_ckpt.get("Step", 0), self.init_ckpt.get("Epoch", 0)
        total, accumulate = runner["total_steps"], runner.get("gradient_accumulate_steps", 1)
        split = runner.get("train_dataloader", "train")
        pbar = tqdm(total=total, initial=step, desc="overall", dynamic_ncols=True, disable=not leader)
        records, batch_ids, backward_steps = defaultdict(list), [], 0
        takes_epoch = "epoch" in inspect.signature(self.downstream.model.get_dataloader).parameters
        while step < total:
            if takes_epoch:
                dataloader = self.downstream.model.get_dataloader(split, epoch=epoch)
            else:  # stock s3prl experts
                dataloader = self.downstream.model.get_dataloader(split)
                if isinstance(getattr(dataloader, "sampler", None), DistributedSampler):
                    dataloader.sampler.set_epoch(epoch)
            for batch_id, (wavs, *others) in enumerate(
                tqdm(dataloader, desc="train", dynamic_ncols=True, leave=False, disable=not leader)
            ):
                if step >= total:
                    break
                wavs = [torch.as_tensor(wav, dtype=torch.float32, device=device) for wav in wavs]
                with torch.autocast(device.type, enabled=amp):
                    with torch.set_grad_enabled(self.upstream.trainable):
                        features = self.upstream.model(wavs)
                    features = self.featurizer.model(wavs, features)
                    if specaug:
                        features, _ = specaug(features)
                    loss = self.downstream.model(split, features, *others, records=records)
                batch_ids.append(batch_id)
                scaler.scale(loss / accumulate).backward()
                backward_steps += 1
                if backward_steps % accumulate:
                    continue
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable_params, runner["gradient_clipping"])
                if amp or math.isfinite(grad_norm):
                    scaler.step(optimizer)  # with AMP, the scaler itself skips non-finite steps
                else:
                    tqdm.write(f"[Runner] - grad norm is {grad_norm} at step {step + 1}; update skipped")
                scaler.update()
                optimizer.zero_grad()
                if scheduler:
                    scheduler.step()
                step += 1  # on every rank: all of them must leave the loop together
                pbar.update(1)
                if not leader:
                    records, batch_ids = defaultdict(list), []
                    continue
                if step % runner["log_step"] == 0:
                    self.downstream.model.log_records(split, records=records, logger=logger, global_step=step,
                                                      batch_ids=batch_ids, total_batch_num=len(dataloader))
                    records, batch_ids = defaultdict(list), []
                save_names = []
                if step % runner["eval_step"] == 0:
                    for eval_split in runner["eval_dataloaders"]:
                        save_names += self.evaluate(eval_split, logger, step)
                if step % runner["save_step"] == 0:
                    self._prune_states()
                    save_names.append(f"states-{step}.ckpt")
                if save_names:
                    self._save(save_names, optimizer, scheduler, step, epoch)
            epoch += 1
        pbar.close()
        if leader:
            logger.close()
            if hasattr(_unwrap(self.downstream.model), "best"):
                self.finalize()

    def evaluate(self, split=None, logger=None, global_step=0):
        """s3prl's; a standalone ``-m evaluate`` (no split/logger given) of an emotion_ecapa
        checkpoint writes to ``expdir/evaluate_<checkpoint>/`` and selects nothing."""
        expert = _unwrap(self.downstream.model)
        if split is None and logger is None and hasattr(expert, "evaluate_separately"):
            output = expert.evaluate_separately(Path(self.args.init_ckpt or "model").stem)
            print(f"[SERRunner] - evaluating {self.args.init_ckpt}; results in {output}")
        return super().evaluate(split, logger, global_step)

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
            state = compat.safe_torch_load(expdir / entries[0].name)
        state["ClassNames"] = list(expert.class_names)  # also for checkpoints of older versions
        compat.atomic_torch_save(state, final)
        for entry in self.all_entries:
            if entry.name in state:
                _unwrap(entry.model).load_state_dict(state[entry.name])
        step = max(e.step for e in entries)
        logger = SummaryWriter(str(expdir))
        try:
            self.evaluate("test", logger, global_step=step)
        finally:
            logger.close()
        record = {
            "checkpoint": final.name,
            "averaged": expert.averaging.get("average", True),
            "selected": [{"step": e.step, "dev_acc": e.score, "file": e.name} for e in entries],
            "test_metrics": f"test_{expert.fold}_metrics.json",
            "identity": run_identity(self.args, self.config),
        }
        (expdir / FINAL_RECORD).write_text(json.dumps(record, indent=1))
        print(f"[SERRunner] - reported model {final} ({len(entries)} checkpoint(s), steps "
              f"{sorted(e.step for e in entries)}); test results in {expdir / record['test_metrics']}")
        return final
