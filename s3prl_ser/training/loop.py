"""The one training loop of both stages: fine-tuning (``python -m upstream_ft``) and the
downstream (``run_downstream.py -d emotion_ecapa``).

* :class:`OptimizerStep` is the single optimizer-step implementation (SpeechBrain's
  ``Brain.fit_batch`` split in its two halves): ``backward`` scales a micro-batch's loss for
  gradient accumulation and AMP; ``update`` unscales, clips the global gradient norm, skips a
  non-finite update, steps the optimizer (its parameter groups keep their own learning rates)
  and the warm-up/decay scheduler.
* :class:`TrainingLoop` walks the global batches of :class:`~s3prl_ser.data.sampler.GlobalBatchSampler`
  from a :class:`~s3prl_ser.training.states.Progress`, so a resumed run re-enters the
  interrupted epoch at the very next batch. It calls the stage's hooks to log, evaluate dev
  (which keeps the k best) and save states, on the leader process only, with barriers under DDP.
  ``train_batch_size`` is the global batch: under DDP each process takes its share of every
  global batch, and DDP's gradient averaging makes the update the single-process one up to
  float rounding, for models whose outputs do not depend on the other utterances in the
  batch (BatchNorm statistics are per process) and that draw no random numbers (dropout).

What differs between the stages is only what a batch's loss is (``compute_loss``, which also
receives the update count, e.g. to keep the upstream frozen for its first updates) and what
the hooks write.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from tqdm import tqdm

from s3prl_ser.config import check_fp16, check_int, check_positive
from s3prl_ser.training.states import Progress, capture_rng

__all__ = ["Schedule", "UpdateResult", "OptimizerStep", "LoopHooks", "TrainingLoop"]


@dataclass(frozen=True)
class Schedule:
    """When a run updates, logs, evaluates dev and saves its states (in optimizer updates).

    Dev is evaluated and states are saved every ``eval_step`` / ``save_step`` updates and at
    the last one, so the final model is always a candidate and a finished run is resumable.

    Raises:
        ConfigError: a step count that is not an integer >= 1, or a clipping norm that is not
            a number > 0 (the message names the ``config.runner`` key).

    Example:
        >>> s = Schedule(total_steps=10, accumulate=2, clipping=1.0, log_step=5, eval_step=4, save_step=4)
        >>> [step for step in range(1, 11) if s.evaluates(step)]
        [4, 8, 10]
    """

    total_steps: int
    accumulate: int = 1
    clipping: float = 1.0
    log_step: int = 100
    eval_step: int = 1000
    save_step: int = 1000

    def __post_init__(self) -> None:
        for name in ("total_steps", "accumulate", "log_step", "eval_step", "save_step"):
            check_int(getattr(self, name), f"config.runner.{_RUNNER_KEYS.get(name, name)}")
        check_positive(self.clipping, "config.runner.gradient_clipping")

    @classmethod
    def from_runner(cls, runner: Mapping[str, Any]) -> Schedule:
        """From a config's ``runner`` section (s3prl's key names), checked as the class says."""
        return cls(
            total_steps=runner["total_steps"],
            accumulate=runner.get("gradient_accumulate_steps", 1),
            clipping=runner["gradient_clipping"],
            log_step=runner["log_step"],
            eval_step=runner["eval_step"],
            save_step=runner["save_step"],
        )

    def logs(self, step: int) -> bool:
        return step % self.log_step == 0

    def evaluates(self, step: int) -> bool:
        return step % self.eval_step == 0 or step == self.total_steps

    def saves(self, step: int) -> bool:
        return step % self.save_step == 0 or step == self.total_steps


_RUNNER_KEYS = {"accumulate": "gradient_accumulate_steps"}


@dataclass(frozen=True)
class UpdateResult:
    """One optimizer update: the gradient norm before clipping, whether the update was
    skipped (non-finite gradients), and each parameter group's learning rate it used."""

    grad_norm: float
    skipped: bool
    lrs: list[float]


class OptimizerStep:
    """Gradient accumulation, AMP, clipping, non-finite skipping and the lr schedule.

    Args:
        optimizer: any torch optimizer; its parameter groups keep their own learning rates.
        scheduler: stepped once per update (None: constant learning rates).
        clipping: max global gradient norm.
        accumulate: micro-batches per update; each micro-batch loss is divided by it.
        amp: mixed precision (float16 autocast with a grad scaler); CUDA only.
        device_type: ``cuda`` or ``cpu``.

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> stepper = OptimizerStep(torch.optim.SGD(layer.parameters(), lr=0.1), clipping=1.0, accumulate=2)
        >>> for x in (torch.ones(1, 2), -torch.ones(1, 2)):  # gradients cancel
        ...     stepper.backward(layer(x).sum())
        >>> before = layer.bias.detach().clone()
        >>> result = stepper.update()
        >>> result.skipped, result.grad_norm == 1.0, torch.allclose(layer.bias, before - 0.1)
        (False, True, True)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        scheduler: Any | None = None,
        *,
        clipping: float,
        accumulate: int = 1,
        amp: bool = False,
        device_type: str = "cpu",
    ) -> None:
        check_fp16(amp, device_type)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.clipping, self.accumulate = clipping, accumulate
        self.device_type = device_type
        self.scaler = torch.amp.GradScaler(device_type, enabled=amp)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's autocast (float16 under AMP, a no-op otherwise)."""
        return torch.autocast(self.device_type, dtype=torch.float16, enabled=self.scaler.is_enabled())

    def backward(self, loss: Tensor) -> None:
        """Accumulate the gradients of one micro-batch's mean loss."""
        self.scaler.scale(loss / self.accumulate).backward()

    def update(self) -> UpdateResult:
        """Apply the accumulated gradients (or skip them if not finite), then reset them."""
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.scaler.unscale_(self.optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.clipping))
        finite = math.isfinite(norm)
        if finite or self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # an enabled scaler skips non-finite steps itself
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        return UpdateResult(norm, not finite, lrs)

    def state_dict(self) -> dict[str, Any]:
        states = {"Optimizer": self.optimizer.state_dict(), "Scaler": self.scaler.state_dict()}
        if self.scheduler is not None:
            states["Scheduler"] = self.scheduler.state_dict()
        return states

    def load_state_dict(self, states: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(states["Optimizer"])
        if self.scheduler is not None and "Scheduler" in states:
            self.scheduler.load_state_dict(states["Scheduler"])
        if states.get("Scaler"):
            self.scaler.load_state_dict(states["Scaler"])


class LoopHooks(Protocol):
    """What a stage does around the updates. ``evaluate`` and ``save`` run on the leader only."""

    def after_update(self, step: int, result: UpdateResult) -> None:
        """Every process, after every update (collect what the next log line reports)."""

    def log(self, step: int) -> None:
        """Every ``log_step`` updates."""

    def evaluate(self, step: int) -> list[str]:
        """Dev at ``step``; return the names of extra checkpoint files ``save`` must write."""

    def save(self, progress: Progress, names: list[str], states: bool) -> None:
        """Write the files ``names`` and, if ``states``, the states file of ``progress``."""


class TrainingLoop:
    """Runs a stage's updates from ``progress`` to ``schedule.total_steps``.

    Args:
        schedule: updates, logging, evaluation and saving.
        optimizer_step: the run's :class:`OptimizerStep`.
        batches: ``(epoch, start)`` -> this process's batches of that epoch from global batch
            ``start`` on (a :class:`~s3prl_ser.data.sampler.GlobalBatchSampler` loader).
        batches_per_epoch: global batches in an epoch.
        ddp_modules: the DDP-wrapped modules; their gradients are all-reduced once per update,
            on its last micro-batch.
        leader: this process evaluates and saves (rank 0).
        barrier: waits for every process (a no-op in one process).
        gather: every process's value of its argument, in rank order (``[value]`` in one
            process); collects the RNG states that checkpoints store.
        description: the progress bar's label.
    """

    def __init__(
        self,
        schedule: Schedule,
        optimizer_step: OptimizerStep,
        *,
        batches: Callable[[int, int], Iterable[Any]],
        batches_per_epoch: int,
        ddp_modules: Sequence[nn.Module] = (),
        leader: bool = True,
        barrier: Callable[[], None] = lambda: None,
        gather: Callable[[Any], list[Any]] = lambda value: [value],
        description: str = "train",
    ) -> None:
        if batches_per_epoch < 1:
            raise ValueError("the training split yields no batch")
        self.schedule, self.optimizer_step = schedule, optimizer_step
        self.batches, self.batches_per_epoch = batches, batches_per_epoch
        self.ddp_modules, self.leader, self.barrier, self.gather = list(ddp_modules), leader, barrier, gather
        self.description = description

    def _no_sync(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        for module in self.ddp_modules:
            stack.enter_context(module.no_sync())
        return stack

    def run(self, progress: Progress, compute_loss: Callable[[Any, int], Tensor], hooks: LoopHooks) -> Progress:
        """Train until ``total_steps`` updates; ``compute_loss(batch, step)`` is a micro-batch's
        mean loss, ``step`` the number of updates done before it. Returns the final progress."""
        schedule = self.schedule
        if progress.step == 0 and progress.micro == 0:
            # states-0 before the first update: a kill at any later moment (e.g. while the first
            # dev evaluation's k-best record is written) leaves a states file to resume from.
            progress.rng = self.gather(capture_rng())
            if self.leader:
                hooks.save(progress, [], True)
            self.barrier()
        bar = tqdm(
            total=schedule.total_steps,
            initial=progress.step,
            desc=self.description,
            dynamic_ncols=True,
            # Stated only off the leader, so that tqdm's TQDM_DISABLE (a command's -q) applies on it.
            **({} if self.leader else {"disable": True}),
        )
        try:
            while progress.step < schedule.total_steps:
                epoch, start = divmod(progress.micro, self.batches_per_epoch)
                for batch in self.batches(epoch, start):
                    progress.micro += 1
                    last_micro = progress.micro % schedule.accumulate == 0
                    with contextlib.nullcontext() if last_micro else self._no_sync():
                        with self.optimizer_step.autocast():
                            loss = compute_loss(batch, progress.step)
                        self.optimizer_step.backward(loss)
                    if not last_micro:
                        continue
                    result = self.optimizer_step.update()
                    progress.step += 1
                    bar.update()
                    if result.skipped and self.leader:
                        tqdm.write(f"non-finite gradient norm {result.grad_norm} at update {progress.step}: skipped")
                    self._after_update(progress, result, hooks)
                    if progress.step >= schedule.total_steps:
                        break
        finally:
            bar.close()
        return progress

    def _after_update(self, progress: Progress, result: UpdateResult, hooks: LoopHooks) -> None:
        step, schedule = progress.step, self.schedule
        hooks.after_update(step, result)
        if schedule.logs(step):
            hooks.log(step)
        evaluates, saves = schedule.evaluates(step), schedule.saves(step)
        if not (evaluates or saves):
            return
        names = hooks.evaluate(step) if evaluates and self.leader else []
        # Every process's RNG after the leader's evaluation: each resumes with its own draws.
        progress.rng = self.gather(capture_rng())
        if self.leader and (names or saves):
            hooks.save(progress, names, saves)
        self.barrier()
