"""Optimizer with separate upstream / head learning rates, and the warm-up + linear decay schedule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_linear_schedule_with_warmup

from s3prl_ser.config import ConfigError
from s3prl_ser.finetuning.model import AnyFineTuneModel

__all__ = ["build_optimizer", "warmup_linear_decay"]


def build_optimizer(model: AnyFineTuneModel, optimizer_config: Mapping[str, Any]) -> Optimizer:
    """``torch.optim.<name>`` over two groups: the upstream's trainable parameters at
    ``upstream_lr`` (group 0) and the head's at ``head_lr`` (group 1).

    Frozen parameters (``requires_grad=False``, e.g. the CNN) are left out entirely.
    """
    name = optimizer_config["name"]
    optimizer_class = getattr(torch.optim, name, None)
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)):
        raise ConfigError(f"config.optimizer.name: {name!r} is not a torch.optim optimizer (e.g. Adam, AdamW)")
    groups = [
        {"params": [p for p in model.upstream.parameters() if p.requires_grad], "lr": optimizer_config["upstream_lr"]},
        {"params": [p for p in model.head.parameters() if p.requires_grad], "lr": optimizer_config["head_lr"]},
    ]
    return optimizer_class(groups, weight_decay=optimizer_config["weight_decay"])


def warmup_linear_decay(optimizer: Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Every group's lr rises linearly from 0 over ``warmup_steps`` updates to its peak, then
    decays linearly to 0 at ``total_steps`` (``transformers.get_linear_schedule_with_warmup``)."""
    return get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
