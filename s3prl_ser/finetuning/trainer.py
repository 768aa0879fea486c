"""The fine-tuning loop of one fold: train on its train split, keep the k best by a dev metric.

Files in the fold directory:

* ``states-<step>.ckpt``: everything a killed run needs to continue (model, and the training
  core's optimizer, scheduler, grad scaler, position and RNG states, see
  :mod:`s3prl_ser.training.states`); only the latest is kept. A new run in the same
  directory resumes from it exactly: the interrupted epoch at its next batch.
* ``dev-top-step<N>.ckpt`` + ``dev-top.json``: the ``best_k`` checkpoints by the dev metric
  ``targets.selection`` names (WA by default with categories, mean CCC without), each an
  s3prl converted upstream checkpoint with the head beside it (:mod:`s3prl_ser.finetuning.upstream_checkpoint`; for
  text, ``model_weight`` is the Hugging Face encoder's state dict).
* ``log.log`` and TensorBoard events: train loss / lr, dev WA / UA (categories), CCC per
  attribute and their mean (attributes), loss.

The loss is the targets' (:class:`~s3prl_ser.training.objective.TargetObjective`): cross-entropy
(optionally class-weighted or focal), the attribute loss (1 - CCC or MSE over the known values),
or both; attribute metrics are computed on the corpus's own scale.

Training runs in the loop shared with the downstream stage (:mod:`s3prl_ser.training.loop`).
Dev is evaluated every ``eval_step`` updates before the states are saved, so a kill between
the two is re-evaluated by the resumed run. The test split plays no part here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensorboardX import SummaryWriter
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from s3prl_ser.data.attributes import denormalise
from s3prl_ser.data.fold_data import FoldData, eval_loader, train_loader
from s3prl_ser.data.sampler import global_batches_per_epoch
from s3prl_ser.fileio import atomic_torch_save, safe_torch_load
from s3prl_ser.finetuning.model import AnyFineTuneModel
from s3prl_ser.finetuning.optim import build_optimizer, warmup_linear_decay
from s3prl_ser.finetuning.upstream_checkpoint import converted_checkpoint
from s3prl_ser.models.fusion import split_outputs
from s3prl_ser.training.best_checkpoints import BestCheckpoints
from s3prl_ser.training.distributed import Distributed
from s3prl_ser.training.loop import OptimizerStep, Schedule, TrainingLoop, UpdateResult
from s3prl_ser.training.metrics import ClassificationReport, RegressionReport, classification_report, regression_report
from s3prl_ser.training.objective import TargetObjective, selection_scores, selection_value, split_labels
from s3prl_ser.training.run_identity import describe, significant_differences
from s3prl_ser.training.states import Progress, StatesFiles, restore_progress, training_state
from s3prl_ser.training.targets import LossSpec, TargetSpec

__all__ = ["Evaluation", "FoldTrainer"]


@dataclass(frozen=True)
class Evaluation:
    """One split scored: the class report (with categories), the attribute report on the
    corpus's scale (with attributes) and the mean loss per utterance.

    Example:
        >>> regression = regression_report([[1.0], [3.0]], [[1.0], [3.0]], ["arousal"])
        >>> evaluation = Evaluation(classification_report(["a", "b"], ["a", "a"], ["a", "b"]), regression, 0.5)
        >>> evaluation.summary()
        'wa 0.5000 ua 0.5000 ccc_mean 1.0000 (arousal 1.0000) loss 0.5000'
        >>> evaluation.scores["ccc_arousal"], evaluation.to_dict()["attributes"]["arousal"]["n"]
        (1.0, 2)
    """

    classification: ClassificationReport | None
    regression: RegressionReport | None
    loss: float

    @property
    def scores(self) -> dict[str, float]:
        """Every metric checkpoints can be selected by (:func:`~s3prl_ser.training.objective.selection_scores`)."""
        return selection_scores(self.classification, self.regression)

    def summary(self) -> str:
        """The log line's figures: ``wa .. ua ..`` (categories), ``ccc_mean .. (arousal .., ...)``
        (attributes), ``loss ..``."""
        parts = []
        if self.classification is not None:
            parts.append(f"wa {self.classification.wa:.4f} ua {self.classification.ua:.4f}")
        if self.regression is not None:
            each = ", ".join(f"{name} {value:.4f}" for name, value in self.regression.ccc.items())
            parts.append(f"ccc_mean {self.regression.ccc_mean:.4f} ({each})")
        return " ".join(parts + [f"loss {self.loss:.4f}"])

    def to_dict(self) -> dict[str, Any]:
        """The metrics record: the class report's fields, the attribute report's, and ``loss``."""
        record: dict[str, Any] = {}
        for report in (self.classification, self.regression):
            if report is not None:
                record.update(report.to_dict())
        return dict(record, loss=self.loss)


class FoldTrainer:
    """Fine-tunes ``model`` on one fold in ``fold_dir``, resuming from its latest states file.

    Args:
        model: the speech or text fine-tuning model, on ``device`` (:mod:`s3prl_ser.finetuning.model`),
            with C + A outputs.
        data: the fold's splits, loaded for ``targets``.
        targets, loss: what the head learns and the cross-entropy's options (``config.targets``
            and ``config.loss``).
        config: the validated config (all sections).
        fold_dir: output directory of this fold.
        base_fields: what every dev-top file carries besides the weights: the base converted
            checkpoint's configs, the fold protocol and the loader (the fold guard reads them).
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
        targets: TargetSpec,
        loss: LossSpec,
        base_fields: Mapping[str, Any],
        identity: Mapping[str, Any],
        device: str,
        dist: Distributed,
        seed: int,
    ) -> None:
        self.model, self.data, self.config = model, data, config
        self.fold_dir, self.base_fields, self.identity = fold_dir, base_fields, dict(identity)
        self.device, self.dist, self.seed = torch.device(device), dist, seed
        self.targets, self.loss_spec = targets, loss
        self.class_names = list(data.class_names) if targets.categories else []
        self.attribute_scale = [tuple(data.attribute_scale[name]) for name in targets.attributes]
        counts = np.bincount(data.train.labels(), minlength=len(self.class_names)) if targets.categories else []
        self.objective = TargetObjective(targets, loss, list(counts)).to(self.device)
        self.schedule = Schedule.from_runner(config["runner"])
        optimizer = build_optimizer(model, config["optimizer"])
        self.optimizer_step = OptimizerStep(
            optimizer,
            warmup_linear_decay(optimizer, config["scheduler"]["warmup_steps"], self.schedule.total_steps),
            clipping=self.schedule.clipping,
            accumulate=self.schedule.accumulate,
            amp=bool(config["runner"]["fp16"]),
            device_type=self.device.type,
        )
        self.states = StatesFiles(fold_dir, keep=1)
        self.best = BestCheckpoints(fold_dir, config["checkpoint_averaging"]["best_k"], prefix="dev-top")
        self.writer = SummaryWriter(str(fold_dir)) if dist.is_leader else None
        self.losses: list[float] = []
        self.last_update: UpdateResult | None = None

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
    def _save_states(self, progress: Progress) -> None:
        states = {
            **training_state(progress, self.optimizer_step),
            "Upstream": self.model.upstream.state_dict(),
            "Head": self.model.head.state_dict(),
            "Config": dict(self.config),
            "Identity": self.identity,
        }
        self.states.save(progress.step, states)

    def _resume(self) -> Progress:
        """Load the latest states file if any; return where the run stands."""
        path = self.states.latest()
        if path is None:
            return Progress()
        states = safe_torch_load(path)
        if "Identity" not in states:
            raise ValueError(f"{path} was written by an older version of upstream_ft; move the fold directory away")
        changed = significant_differences(states["Identity"], self.identity)
        if changed:
            raise ValueError(
                f"{path} belongs to a run with other settings ({describe(changed)}); "
                "use another -p FT_DIR or delete the fold directory"
            )
        self.model.upstream.load_state_dict(states["Upstream"])
        self.model.head.load_state_dict(states["Head"])
        progress = restore_progress(states, self.optimizer_step, self.schedule.accumulate, rank=self.dist.rank)
        self.log(f"resumed from {path} at step {progress.step}")
        return progress

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, split: str) -> Evaluation:
        """Metrics and mean loss of ``split`` (``dev`` or ``test``), in one process."""
        dataset = {"dev": self.data.dev, "test": self.data.test}[split]
        self.model.eval()
        truth, predicted, true_values, predicted_values, losses = [], [], [], [], []
        try:
            for wavs, labels, names in tqdm(eval_loader(dataset, self.config["datarc"]), desc=split, leave=False):
                with self.optimizer_step.autocast():
                    outputs = self.model(wavs, names).float()
                losses.append(self.objective(outputs, labels).item() * len(labels))
                class_ids, values = split_labels(labels, self.targets)
                logits, attributes = split_outputs(outputs, len(self.class_names))
                if self.targets.categories:
                    truth += [self.class_names[i] for i in class_ids]
                    predicted += [self.class_names[i] for i in logits.argmax(dim=-1).tolist()]
                if values is not None:
                    true_values.append(values.astype(np.float64))
                    predicted_values.append(attributes.double().cpu().numpy())
        finally:
            self.model.train()
        classification = regression = None
        if self.targets.categories:
            classification = classification_report(truth, predicted, self.class_names)
        if self.targets.attributes:  # on the corpus's own scale
            regression = regression_report(
                denormalise(np.concatenate(true_values), self.attribute_scale),
                denormalise(np.concatenate(predicted_values), self.attribute_scale),
                self.targets.attributes,
            )
        return Evaluation(classification, regression, sum(losses) / len(dataset))

    # ---------------------------------------------------------------- loop hooks
    def after_update(self, step: int, result: UpdateResult) -> None:
        self.last_update = result

    def log_train(self, step: int) -> None:
        """The mean training loss since the last such line, and this update's learning rates."""
        lrs, norm = self.last_update.lrs, self.last_update.grad_norm
        mean_loss = sum(self.losses) / len(self.losses)
        self.losses.clear()
        self._scalars("train", {"loss": mean_loss, "lr_upstream": lrs[0], "lr_head": lrs[1], "grad_norm": norm}, step)
        self.log(f"train at step {step}: loss {mean_loss:.4f} lr {lrs[0]:.2e}/{lrs[1]:.2e}")

    def evaluate_dev(self, step: int) -> list[str]:
        evaluation = self.evaluate("dev")
        scores = evaluation.scores
        self._scalars("dev", {**scores, "loss": evaluation.loss}, step)
        self.log(f"dev at step {step}: {evaluation.summary()}")
        score = selection_value(scores, self.targets.selection_metric)
        for name in self.best.offer(step, score):  # dev metrics only, never test
            state = converted_checkpoint(
                self.base_fields, self.model.upstream.model.state_dict(), self.model.head.state_dict()
            )
            atomic_torch_save(state, self.fold_dir / name)
        return []  # the dev-top files are written above, in the converted format

    def save(self, progress: Progress, names: list[str], states: bool) -> None:
        if states:
            self._save_states(progress)

    # ---------------------------------------------------------------- training
    def train(self) -> None:
        """Run (or finish) ``total_steps`` updates; evaluate/save every ``eval_step``/``save_step``
        and at the last step. Returns at once when the states file already holds the last step."""
        if self.dist.is_leader:
            self.states.remove_leftovers()
        progress = self._resume()
        if progress.step >= self.schedule.total_steps:
            return
        self.model.train()
        # find_unused_parameters: pretraining-only modules (HuBERT's final_proj, wav2vec 2.0's
        # quantizer, ...) and the upstream during its frozen phase get no gradient.
        model: nn.Module = self.model
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(self.model, device_ids=device_ids, find_unused_parameters=True)
        datarc = self.config["datarc"]
        freeze_steps = self.config["upstream"]["freeze_transformer_steps"]

        def compute_loss(batch: tuple, step: int) -> torch.Tensor:
            wavs, labels, names = batch
            outputs = model(wavs, names, train_upstream=step >= freeze_steps).float()
            loss = self.objective(outputs, labels)
            self.losses.append(loss.item())
            return loss

        loop = TrainingLoop(
            self.schedule,
            self.optimizer_step,
            batches=lambda epoch, start: train_loader(
                self.data.train,
                datarc,
                seed=self.seed,
                epoch=epoch,
                start=start,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
                balanced=self.loss_spec.balanced_sampler,
            ),
            batches_per_epoch=global_batches_per_epoch(len(self.data.train), datarc["train_batch_size"]),
            ddp_modules=[model] if self.dist.enabled else [],
            leader=self.dist.is_leader,
            barrier=self.dist.barrier,
            gather=self.dist.gather,
            description=f"fine-tuning {self.data.fold}",
        )
        loop.run(progress, compute_loss, _Hooks(self))


class _Hooks:
    """The loop's hooks (:class:`~s3prl_ser.training.loop.LoopHooks`) of a :class:`FoldTrainer`."""

    def __init__(self, trainer: FoldTrainer) -> None:
        self.after_update, self.log = trainer.after_update, trainer.log_train
        self.evaluate, self.save = trainer.evaluate_dev, trainer.save
