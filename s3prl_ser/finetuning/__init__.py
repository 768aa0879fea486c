"""Stage 1 (paper 2.2-2.3): fine-tune an upstream per fold, average its k best checkpoints, export.

``config`` (defaults ``config.yaml`` and ``config_builtin.yaml``, package data, and their checks),
``model`` (the Figure 2 models), ``optim`` (two learning rates, warm-up + decay), ``trainer``
(one fold's training loop and dev selection), ``upstream_checkpoint`` (converted checkpoints and the averaged
export), ``fold`` (one fold end to end), ``stage`` (the requested folds, skipping exported ones),
``hub_entries`` (``<base>_ft_avg`` entries that load an export for the fold being evaluated).
The fold guard is :mod:`s3prl_ser.data.protocol`'s.
"""
