"""Average model checkpoints (paper 2.3: the 5 best checkpoints by validation accuracy).

Averaging the weights of several checkpoints of one run reduces the variance of the final
model. Which checkpoints to average is decided elsewhere (:mod:`s3prl_ser.training.best_checkpoints`
keeps the k best by dev accuracy); this module only averages the files it is given.

Rules, and why:

* Every checkpoint must hold the same keys with the same shapes and dtypes; anything else is
  refused with :class:`CheckpointMismatchError` naming the checkpoint and the key, since it
  means the files come from different models.
* Floating-point tensors: arithmetic mean, accumulated in float64 and cast back to the original
  dtype, so fp16/bf16 weights neither overflow while summing nor lose precision.
* Integer and bool tensors (e.g. BatchNorm ``num_batches_tracked``): kept as they are when
  identical in every checkpoint, otherwise the floor of their mean (fairseq's rule; ESPnet sums
  them and SpeechBrain turns them into floats). For ``num_batches_tracked`` that is the mean
  count, which matters only to BatchNorm with ``momentum=None`` (cumulative average).
* Results are contiguous CPU tensors, in the key order of the first checkpoint.

Two file formats are understood (all files of one call must share the format):

* s3prl runner checkpoints (``Upstream`` / ``Featurizer`` / ``Downstream`` state dicts plus
  ``Step``, ``Epoch``, ``Args``, ``Config``, ``Optimizer``, ``Scheduler``): every model section
  present is averaged; the files must hold the same sections and equal ``Config``. The result
  carries ``Config``, ``Args`` and ``Epoch`` of the last file and the largest ``Step``, and no
  optimizer or scheduler state (they describe one training trajectory, not the average).
* s3prl converted upstream checkpoints (``task_cfg``, ``model_cfg``, ``model_weight``, ...),
  as loaded by ``hubert_local`` / ``wav2vec2_local``: ``model_weight`` is averaged, the configs
  must be equal, and the other entries come from the last file.

Either result records its inputs under ``Averaged`` (``{"paths": [...], "steps": [...]}``).
Files are read with weights-only loading only, so a checkpoint can never execute code.

Command line: ``python -m s3prl_ser.cli.average_checkpoints dev-top-step*.ckpt -o averaged.ckpt``
(:mod:`s3prl_ser.cli.average_checkpoints`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from s3prl_ser.data.protocol import PROTOCOL_KEY
from s3prl_ser.fileio import atomic_torch_save, safe_torch_load
from s3prl_ser.finetuning.hub_entries import LOADER_KEY
from s3prl_ser.training.run_identity import describe, run_identity, significant_differences

__all__ = ["CheckpointMismatchError", "average_state_dicts", "average_checkpoint_files"]

RUNNER_SECTIONS = ("Upstream", "Featurizer", "Downstream")
CONVERTED_CONFIGS = ("task_cfg", "model_cfg")


class CheckpointMismatchError(ValueError):
    """The checkpoints cannot be averaged: different keys, shapes, dtypes, configs or formats."""


def average_state_dicts(
    state_dicts: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Average state dicts key by key (rules in the module docstring).

    Args:
        state_dicts: one or more state dicts with identical keys, shapes and dtypes.
        names: how to call each state dict in error messages (default ``"checkpoint i"``).

    Raises:
        CheckpointMismatchError: the state dicts differ in keys, shapes or dtypes.
        TypeError: a value is not a tensor.

    Example:
        >>> a = {"weight": torch.tensor([1.0, 2.0]), "num_batches_tracked": torch.tensor(4)}
        >>> b = {"weight": torch.tensor([3.0, 6.0]), "num_batches_tracked": torch.tensor(7)}
        >>> average_state_dicts([a, b])  # float mean; integers: floor of the mean, (4 + 7) // 2
        {'weight': tensor([2., 4.]), 'num_batches_tracked': tensor(5)}
        >>> try:  # checkpoints of different models are refused
        ...     average_state_dicts([a, dict(b, weight=torch.zeros(3))])
        ... except CheckpointMismatchError as error:
        ...     print(error)
        checkpoint 1: weight has shape (3,), checkpoint 0 has (2,)
    """
    if not state_dicts:
        raise ValueError("nothing to average: no state dicts given")
    if names is None:
        names = [f"checkpoint {i}" for i in range(len(state_dicts))]
    elif len(names) != len(state_dicts):
        raise ValueError(f"got {len(names)} names for {len(state_dicts)} state dicts")

    first = state_dicts[0]
    for name, state in zip(names, state_dicts):
        missing = [key for key in first if key not in state]
        extra = [key for key in state if key not in first]
        if missing or extra:
            raise CheckpointMismatchError(
                f"{name} has different keys than {names[0]}: missing {missing}, extra {extra}"
            )
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name}: {key} is a {type(value).__name__}, not a tensor")
            reference = first[key]
            if value.shape != reference.shape:
                raise CheckpointMismatchError(
                    f"{name}: {key} has shape {tuple(value.shape)}, {names[0]} has {tuple(reference.shape)}"
                )
            if value.dtype != reference.dtype:
                raise CheckpointMismatchError(
                    f"{name}: {key} has dtype {value.dtype}, {names[0]} has {reference.dtype}"
                )

    count = len(state_dicts)
    averaged = {}
    for key, reference in first.items():
        values = [state[key].detach().cpu() for state in state_dicts]
        if reference.is_floating_point() or reference.is_complex():
            wide = torch.complex128 if reference.is_complex() else torch.float64
            mean = sum(value.to(wide) for value in values) / count
        elif all(torch.equal(value, values[0]) for value in values[1:]):
            mean = values[0]
        else:
            total = sum(value.to(torch.int64) for value in values)
            mean = torch.div(total, count, rounding_mode="floor")
        averaged[key] = mean.to(reference.dtype).contiguous()
    return averaged


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """The dotted path of the first entry where two (nested) configs differ, or None."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in [*a, *(k for k in b if k not in a)]:
            path = f"{where}.{key}" if where else str(key)
            if key not in a or key not in b:
                return path
            difference = _first_difference(a[key], b[key], path)
            if difference is not None:
                return difference
        return None
    return None if a == b else (where or "<top level>")


def _check_equal(checkpoints: Sequence[Mapping], names: Sequence[str], key: str) -> None:
    for name, checkpoint in zip(names[1:], checkpoints[1:]):
        difference = _first_difference(checkpoints[0].get(key), checkpoint.get(key))
        if difference is not None:
            raise CheckpointMismatchError(
                f"{name} and {names[0]} have different configs: {key} differs at {difference}"
            )


def _format(checkpoint: Any, name: str) -> str:
    if isinstance(checkpoint, Mapping):
        if any(section in checkpoint for section in RUNNER_SECTIONS):
            return "runner"
        if all(key in checkpoint for key in (*CONVERTED_CONFIGS, "model_weight")):
            return "converted upstream"
    raise CheckpointMismatchError(f"{name} is neither an s3prl runner checkpoint nor a converted upstream checkpoint")


def _average_runner(checkpoints: Sequence[Mapping], names: Sequence[str]) -> dict[str, Any]:
    sections = [s for s in RUNNER_SECTIONS if s in checkpoints[0]]
    for name, checkpoint in zip(names[1:], checkpoints[1:]):
        other = [s for s in RUNNER_SECTIONS if s in checkpoint]
        if other != sections:
            raise CheckpointMismatchError(f"{name} holds sections {other}, {names[0]} holds {sections}")
    # The same run's checkpoints: equal Config and run arguments (upstream, features, seed),
    # except what a resumed run may change (schedule, data-feeding settings).
    for name, checkpoint in zip(names[1:], checkpoints[1:]):
        changed = significant_differences(
            run_identity(checkpoints[0].get("Args"), checkpoints[0].get("Config")),
            run_identity(checkpoint.get("Args"), checkpoint.get("Config")),
            resuming=True,
        )
        if changed:
            raise CheckpointMismatchError(f"{name} and {names[0]} come from different runs: {describe(changed)}")
    named = [(n, c) for n, c in zip(names, checkpoints) if "ClassNames" in c]
    _check_equal([c for _, c in named], [n for n, _ in named], "ClassNames")

    last = checkpoints[-1]
    steps = [checkpoint.get("Step") for checkpoint in checkpoints]
    known_steps = [step for step in steps if step is not None]
    averaged: dict[str, Any] = {key: last[key] for key in ("Args", "Config") if key in last}
    if named:
        averaged["ClassNames"] = named[-1][1]["ClassNames"]
    if known_steps:
        # Position of the latest checkpoint (the micro-batches, or stock s3prl's epoch,
        # consumed), whatever order the files were given in.
        latest = max((c for c in checkpoints if c.get("Step") is not None), key=lambda c: c["Step"])
        averaged.update({key: latest[key] for key in ("Step", "Micro", "Epoch") if key in latest})
    for section in sections:
        averaged[section] = average_state_dicts(
            [checkpoint[section] for checkpoint in checkpoints],
            [f"{name} [{section}]" for name in names],
        )
    averaged["Averaged"] = {"paths": list(names), "steps": steps}
    return averaged


def _average_converted(checkpoints: Sequence[Mapping], names: Sequence[str]) -> dict[str, Any]:
    # Fine-tuned files also record their fold and split: averaging two folds' would mix their data.
    for key in (*CONVERTED_CONFIGS, PROTOCOL_KEY, LOADER_KEY):
        _check_equal(checkpoints, names, key)
    averaged = dict(checkpoints[-1])
    averaged["model_weight"] = average_state_dicts(
        [checkpoint["model_weight"] for checkpoint in checkpoints],
        [f"{name} [model_weight]" for name in names],
    )
    averaged["Averaged"] = {"paths": list(names), "steps": [None] * len(checkpoints)}
    return averaged


def average_checkpoint_files(
    paths: Sequence[str | os.PathLike], output: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Average checkpoint files (runner or converted-upstream format) and optionally save.

    Args:
        paths: the checkpoints to average, in order (the last one supplies config and args).
        output: if given, the averaged checkpoint is written there atomically (parent
            directories are created).

    Returns:
        The averaged checkpoint dict.

    Raises:
        FileNotFoundError: a path is not a file.
        RuntimeError: a file cannot be loaded (corrupt, or not weights-only loadable).
        CheckpointMismatchError: the files differ in format, sections, configs or weights layout.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:  # two converted-upstream checkpoints
        ...     paths = [Path(tmp, f"step{i}.ckpt") for i in (1, 2)]
        ...     for path, w in zip(paths, (1.0, 3.0)):
        ...         torch.save({"task_cfg": {}, "model_cfg": {}, "model_weight": {"w": torch.full((2,), w)}}, path)
        ...     averaged = average_checkpoint_files(paths, Path(tmp, "avg.ckpt"))
        ...     reloaded = torch.load(Path(tmp, "avg.ckpt"), weights_only=True)
        >>> averaged["model_weight"]["w"], reloaded["model_weight"]["w"]
        (tensor([2., 2.]), tensor([2., 2.]))
    """
    if not paths:
        raise ValueError("nothing to average: no checkpoint paths given")
    names = [os.fspath(path) for path in paths]
    for name in names:
        if not Path(name).is_file():
            raise FileNotFoundError(f"no such checkpoint file: {name}")
    checkpoints = [safe_torch_load(name) for name in names]

    kind = _format(checkpoints[0], names[0])
    for name, checkpoint in zip(names[1:], checkpoints[1:]):
        other = _format(checkpoint, name)
        if other != kind:
            raise CheckpointMismatchError(f"{name} is a {other} checkpoint but {names[0]} is a {kind} checkpoint")
    average = _average_runner if kind == "runner" else _average_converted
    averaged = average(checkpoints, names)

    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(averaged, output)
    return averaged
