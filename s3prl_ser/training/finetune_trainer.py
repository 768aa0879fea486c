"""The fine-tuning loop of one fold: train on its train split, keep the k best by dev accuracy.

Files in the fold directory:

* ``states-<step>.ckpt``: everything a killed run needs to continue (model, optimizer,
  scheduler, grad scaler, step, RNG states, config); only the latest is kept. A new run in
  the same directory resumes from it: the step count continues, the data order is rebuilt
  from (seed, epoch) (:mod:`s3prl_ser.data.fold_data`) and the RNG that drives dropout is restored.
* ``dev-top-step<N>.ckpt`` + ``dev-top.json``: the ``best_k`` checkpoints by dev WA, each an
  s3prl converted upstream checkpoint with the head beside it (:mod:`s3prl_ser.hub.ft_export`; for
  text, ``model_weight`` is the Hugging Face encoder's state dict).
* ``log.log`` and TensorBoard events: train loss / lr, dev WA / UA / loss.

Dev is evaluated every ``eval_step`` updates before the states are saved, so a kill between
the two is re-evaluated by the resumed run. The test split plays no part here.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from tensorboardX import SummaryWriter
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from s3prl_ser.training.best_checkpoints import BestCheckpoints
from s3prl_ser.compat import atomic_torch_save, safe_torch_load
from s3prl_ser.training.metrics import ClassificationReport, classification_report
from s3prl_ser.training.run_identity import describe, significant_differences
from s3prl_ser.data.fold_data import FoldData, batches_per_epoch, eval_loader, train_loader
from s3prl_ser.training.distributed import Distributed
from s3prl_ser.hub.ft_export import converted_checkpoint
from s3prl_ser.models.finetune import AnyFineTuneModel
from s3prl_ser.training.optim import build_optimizer, warmup_linear_decay

__all__ = ["FoldTrainer", "latest_states"]

_STATES = re.compile(r"^states-(\d+)\.ckpt$")


def latest_states(fold_dir: Path) -> Path | None:
    """The states file with the highest step in ``fold_dir``, or None."""
    found = [(int(m.group(1)), p) for p in fold_dir.glob("states-*.ckpt") if (m := _STATES.match(p.name))]
    return max(found)[1] if found else None


class FoldTrainer:
    """Fine-tunes ``model`` on one fold in ``fold_dir``, resuming from its latest states file.

    Args:
        model: the speech or text fine-tuning model, on ``device`` (:mod:`s3prl_ser.models.finetune`).
        data: the fold's splits.
        config: the validated config (all sections).
        fold_dir: output directory of this fold.
        base_fields: configs of the base converted checkpoint (for the dev-top files).
        identity: what a states file must match to be resumed here (fold, upstream, ...).
        device: torch device string.
        dist: the process group (rank 0 evaluates, saves and logs).
        seed: seeds the data order.
    """

    def __init__(
        self,
        model: AnyFineTuneModel,
        data: FoldData,
        config: Mapping[str, Any],
        fold_dir: Path,
        *,
        base_fields: Mapping[str, Any],
        identity: Mapping[str, Any],
        device: str,
        dist: Distributed,
        seed: int,
    ) -> None:
        self.model, self.data, self.config = model, data, config
        self.fold_dir, self.base_fields, self.identity = fold_dir, base_fields, dict(identity)
        self.device, self.dist, self.seed = torch.device(device), dist, seed
        runner = config["runner"]
        self.optimizer = build_optimizer(model, config["optimizer"])
        self.scheduler = warmup_linear_decay(self.optimizer, config["scheduler"]["warmup_steps"], runner["total_steps"])
        self.fp16 = bool(runner["fp16"])
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.fp16)
        self.best = BestCheckpoints(fold_dir, config["checkpoint_averaging"]["best_k"], prefix="dev-top")
        self.objective = nn.CrossEntropyLoss()
        self.trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.writer = SummaryWriter(str(fold_dir)) if dist.is_leader else None

    # ---------------------------------------------------------------- bookkeeping
    def log(self, line: str) -> None:
        """Print and append to ``log.log`` (rank 0 only)."""
        if self.dist.is_leader:
            tqdm.write(f"[upstream_ft] {self.data.fold}: {line}")
            with open(self.fold_dir / "log.log", "a", encoding="utf-8") as handle:
                handle.write(line + "\n")

    def _scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{self.data.fold}/{prefix}-{name}", value, global_step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    # ---------------------------------------------------------------- states
    def _save_states(self, step: int) -> None:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        states = {
            "step": step,
            "upstream": self.model.upstream.state_dict(),
            "head": self.model.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "config": dict(self.config),
            "identity": self.identity,
        }
        path = self.fold_dir / f"states-{step}.ckpt"
        atomic_torch_save(states, path)
        for older in self.fold_dir.glob("states-*.ckpt"):
            if older != path and _STATES.match(older.name):
                older.unlink()

    def _resume(self) -> int:
        """Load the latest states file if any; return the number of updates already done."""
        path = latest_states(self.fold_dir)
        if path is None:
            return 0
        states = safe_torch_load(path)
        changed = significant_differences(states.get("identity"), self.identity)
        if changed:
            raise ValueError(
                f"{path} belongs to a run with other settings ({describe(changed)}); "
                "use another -p FT_DIR or delete the fold directory"
            )
        self.model.upstream.load_state_dict(states["upstream"])
        self.model.head.load_state_dict(states["head"])
        self.optimizer.load_state_dict(states["optimizer"])
        self.scheduler.load_state_dict(states["scheduler"])
        self.scaler.load_state_dict(states["scaler"])
        torch.set_rng_state(states["rng"]["torch"])
        if "cuda" in states["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["rng"]["cuda"])
        self.log(f"resumed from {path} at step {states['step']}")
        return int(states["step"])

    # ---------------------------------------------------------------- evaluation
    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16)

    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[ClassificationReport, float]:
        """WA/UA report and mean cross-entropy of ``split`` (``dev`` or ``test``), in one process."""
        dataset = {"dev": self.data.dev, "test": self.data.test}[split]
        self.model.eval()
        truth, predicted, losses = [], [], []
        try:
            for wavs, labels, names in tqdm(eval_loader(dataset, self.config["datarc"]), desc=split, leave=False):
                with self._autocast():
                    logits = self.model(wavs, names).float()
                labels_t = torch.as_tensor(labels, device=logits.device)
                losses.append(self.objective(logits, labels_t).item() * len(labels))
                truth += [self.data.class_names[i] for i in labels]
                predicted += [self.data.class_names[i] for i in logits.argmax(dim=-1).tolist()]
        finally:
            self.model.train()
        report = classification_report(truth, predicted, self.data.class_names)
        return report, sum(losses) / len(truth)

    def _evaluate_dev(self, step: int) -> None:
        report, loss = self.evaluate("dev")
        self._scalars("dev", {"wa": report.wa, "ua": report.ua, "loss": loss}, step)
        self.log(f"dev at step {step}: wa {report.wa:.4f} ua {report.ua:.4f} loss {loss:.4f}")
        for name in self.best.offer(step, report.wa):  # dev accuracy only, never test
            state = converted_checkpoint(self.base_fields, self.model.upstream.model.state_dict(),
                                         self.model.head.state_dict())
            atomic_torch_save(state, self.fold_dir / name)

    # ---------------------------------------------------------------- training
    def _update(self) -> float:
        """Clip, step (skipped on a non-finite gradient norm), schedule; return the grad norm."""
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.config["runner"]["gradient_clipping"])
        if torch.isfinite(norm) or self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # an enabled scaler skips non-finite steps itself
        else:
            self.log(f"non-finite gradient norm {float(norm)}: update skipped")
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return float(norm)

    def train(self) -> None:
        """Run (or finish) ``total_steps`` updates; evaluate/save every ``eval_step``/``save_step``
        and at the last step. Returns at once when the states file already holds the last step."""
        runner = self.config["runner"]
        total, accumulate = runner["total_steps"], runner["gradient_accumulate_steps"]
        freeze_steps = self.config["upstream"]["freeze_transformer_steps"]
        step = self._resume()
        if step >= total:
            return
        self.model.train()
        # find_unused_parameters: pretraining-only modules (HuBERT's final_proj, wav2vec 2.0's
        # quantizer, ...) and the upstream during its frozen phase get no gradient.
        model: nn.Module = self.model
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(self.model, device_ids=device_ids, find_unused_parameters=True)
        datarc = self.config["datarc"]
        per_epoch = batches_per_epoch(len(self.data.train), datarc["train_batch_size"], self.dist.world_size)
        micro = step * accumulate  # micro-batches consumed so far
        losses: list[float] = []
        bar = tqdm(total=total, initial=step, desc=f"fine-tuning {self.data.fold}", disable=not self.dist.is_leader)
        while step < total:
            epoch, skip = divmod(micro, per_epoch)
            loader = train_loader(self.data.train, datarc, seed=self.seed, epoch=epoch, skip_batches=skip,
                                  rank=self.dist.rank, world_size=self.dist.world_size)
            for wavs, labels, names in loader:
                micro += 1
                last_micro = micro % accumulate == 0
                # Gradients are all-reduced once per update, on its last micro-batch.
                sync = contextlib.nullcontext() if last_micro or not self.dist.enabled else model.no_sync()
                with sync:
                    with self._autocast():
                        logits = model(wavs, names, train_upstream=step >= freeze_steps).float()
                        loss = self.objective(logits, torch.as_tensor(labels, device=logits.device))
                    self.scaler.scale(loss / accumulate).backward()
                losses.append(loss.item())
                if not last_micro:
                    continue
                lrs = [group["lr"] for group in self.optimizer.param_groups]  # this update's
                norm = self._update()
                step += 1
                bar.update()
                if step % runner["log_step"] == 0:
                    mean_loss = sum(losses) / len(losses)
                    self._scalars("train", {"loss": mean_loss, "lr_upstream": lrs[0], "lr_head": lrs[1],
                                            "grad_norm": norm}, step)
                    self.log(f"train at step {step}: loss {mean_loss:.4f} lr {lrs[0]:.2e}/{lrs[1]:.2e}")
                    losses.clear()
                if step % runner["eval_step"] == 0 or step == total:
                    if self.dist.is_leader:
                        self._evaluate_dev(step)
                    self.dist.barrier()
                if step % runner["save_step"] == 0 or step == total:
                    if self.dist.is_leader:
                        self._save_states(step)
                    self.dist.barrier()
                if step == total:
                    break
        bar.close()
