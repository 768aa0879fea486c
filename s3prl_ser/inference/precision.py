"""The floating-point precision a recognizer runs in: float32, bfloat16 (CPU or CUDA), float16 (CUDA).

A recognizer's members (featurizer + classifier) and the upstreams that have weights run in
its dtype; an upstream without weights (s3prl's ``fbank``, ``mfcc``, ...: ``torch.fft`` has no
bfloat16 or float16 on the CPU) reads float32 waveforms, and its features are cast to the
members' dtype. Probabilities and embeddings are returned as float32 whatever the dtype.

float16 on the CPU is refused: PyTorch runs many of its CPU kernels slowly or not at all
(bfloat16 has float32's range and the CPU kernels).

Example:
    >>> resolve_dtype("bfloat16")
    torch.bfloat16
    >>> check_precision(torch.device("cpu"), torch.float16)
    Traceback (most recent call last):
    ...
    ValueError: float16 on the CPU is not supported: use dtype='bfloat16' on the CPU, or float16 with device='cuda'
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from s3prl_ser.upstreams.multi_upstream import MultiUpstream

__all__ = ["DTYPES", "resolve_dtype", "check_precision", "weights_dtype", "cast_floating", "run_upstream"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` (or the torch dtype) -> the torch dtype.

    Raises:
        ValueError: any other dtype.
    """
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"dtype {dtype!r}: a recognizer runs in {', '.join(DTYPES)} (float16 on CUDA only)")


def check_precision(device: torch.device | str, dtype: torch.dtype) -> None:
    """Raise ValueError for a dtype the recognizer does not run in, or float16 on the CPU."""
    resolve_dtype(dtype)
    if dtype == torch.float16 and torch.device(device).type == "cpu":
        raise ValueError(
            "float16 on the CPU is not supported: use dtype='bfloat16' on the CPU, or float16 with device='cuda'"
        )


def weights_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first floating-point parameter; float32 when it has none."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def cast_floating(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with every floating-point tensor in it (dicts, lists, tuples) cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {key: cast_floating(item, dtype) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cast_floating(item, dtype) for item in value)
    return value


def run_upstream(upstream: nn.Module, wavs: list[torch.Tensor], dtype: torch.dtype) -> Any:
    """``upstream``'s output for float32 waveforms ``(T_b,)``, cast to ``dtype``.

    Each upstream (each part of a :class:`MultiUpstream`) reads the waveforms in the dtype of
    its own weights, float32 for a weightless one."""
    if isinstance(upstream, MultiUpstream):
        return [run_upstream(part, wavs, dtype) for part in upstream.upstreams]
    own = weights_dtype(upstream)
    return cast_floating(upstream([wav.to(own) for wav in wavs]), dtype)
