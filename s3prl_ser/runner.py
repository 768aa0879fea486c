"""s3prl's Runner plus the paper's final step: average the k best checkpoints, then test once.

s3prl's ``Runner.train`` evaluates on dev and saves whatever the expert asks for; the
``emotion_ecapa`` expert asks for the k best by dev accuracy. After training,
:meth:`SERRunner.finalize` averages those (or takes the best one when averaging is off),
saves the result as a runner checkpoint (``dev-avg.ckpt`` / ``dev-best.ckpt``, usable with
``-e`` / ``-i``), loads it and evaluates the test split exactly once. The test set takes no
part in any choice.
"""

from __future__ import annotations

import json
from pathlib import Path

from s3prl.downstream.runner import Runner
from s3prl.utility.helper import is_leader_process
from tensorboardX import SummaryWriter
from torch import nn
from torch.distributed import barrier, get_rank, is_initialized

from s3prl_ser import compat
from s3prl_ser.checkpoint_averaging import average_checkpoint_files
from s3prl_ser.upstreams import build_upstream

__all__ = ["SERRunner"]

FINAL_RECORD = "final.json"


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class SERRunner(Runner):
    """s3prl ``Runner`` with atomic checkpoints, safe loading and checkpoint averaging."""

    def __init__(self, args, config) -> None:
        compat.patch_runner_checkpoint_io()
        super().__init__(args, config)

    def test_fold(self) -> str | None:
        """The fold being trained or evaluated, as the expert will read it."""
        datarc = self.config.get("downstream_expert", {}).get("datarc", {})
        return datarc.get("test_fold") or getattr(self.args, "downstream_variant", None)

    def _get_upstream(self):
        """s3prl's upstream construction (torch hub only), passing the fold to ``*_ft_avg`` entries."""
        refresh = self.args.upstream_refresh
        if is_initialized() and get_rank() > 0:
            barrier()  # rank 0 downloads/converts first
            refresh = False
        model = build_upstream(
            self.args.upstream, self.args.upstream_ckpt, self.args.upstream_model_config, refresh, self.test_fold()
        ).to(self.args.device)
        if is_initialized() and get_rank() == 0:
            barrier()
        return self._init_model(
            model=model, name="Upstream", trainable=self.args.upstream_trainable,
            interfaces=["get_downsample_rates"],
        )

    def train(self) -> None:
        super().train()
        expert = _unwrap(self.downstream.model)
        if is_leader_process() and hasattr(expert, "best"):
            self.finalize()

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
        # Inference needs the class order without the corpus' meta data at hand.
        state["ClassNames"] = list(expert.class_names)
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
        }
        (expdir / FINAL_RECORD).write_text(json.dumps(record, indent=1))
        print(f"[SERRunner] - reported model {final} ({len(entries)} checkpoint(s), steps "
              f"{sorted(e.step for e in entries)}); test results in {expdir / record['test_metrics']}")
        return final
