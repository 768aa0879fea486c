"""Make s3prl 0.4.18 import and run on torch/torchaudio 2.9 and huggingface_hub >= 1.0.

s3prl 0.4.18 was written against older stacks. Every workaround the project needs lives here,
applied by :func:`install` (``import s3prl_ser`` calls it) before s3prl is imported:

* ``torchaudio.set_audio_backend`` is gone; s3prl calls it at import time only to pick a
  backend, so it becomes a no-op (audio I/O goes through soundfile, see below).
* ``torchaudio.sox_effects`` is gone; s3prl imports it at module level in a few upstreams.
  A stand-in module imports fine and raises :class:`RemovedAPIError` when actually called.
* ``torchaudio.load`` now requires torchcodec; it is replaced by a soundfile reader with the
  same return convention ``(Tensor[channels, frames] float32, sample_rate)``.
* ``huggingface_hub`` >= 1.0 dropped ``HfFolder`` and ``Repository``, which s3prl's runner
  imports for its ``--push_to_hf_hub`` (not offered here: ``python -m s3prl_ser.export
  --push-to-hub`` publishes a model); stand-ins raise :class:`RemovedAPIError` when used.
* s3prl's runner checkpoints hold an ``argparse.Namespace``, which ``torch.load``'s
  ``weights_only=True`` default refuses; :func:`s3prl_ser.fileio.safe_torch_load` allow-lists
  it (and nothing else), so loading a checkpoint never executes code from it.
  (:class:`s3prl_ser.training.runner.SERRunner` loads and saves through :mod:`s3prl_ser.fileio`
  in place of the runner's own I/O.)
* No checkpoint may run code. Most of s3prl's upstream loaders call ``torch.load`` with
  torch's weights-only default, but the ``tera``/``mockingjay``/``distiller`` (and ``roberta``)
  loaders ask for ``weights_only=False``, i.e. full unpickling. :func:`install` wraps
  ``torch.load`` once so that every load is weights-only: a call asking for full unpickling
  (``weights_only=False`` or a ``pickle_module``) gets a weights-only load that also accepts
  ``argparse.Namespace`` (s3prl's checkpoints store one), and a file that does not load that
  way raises :class:`UnsafeCheckpointError` naming it and saying how to convert it. Explicit
  ``weights_only=True`` also makes ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` moot, which
  :func:`install` refuses all the same. The wrapped ``torch.load`` also checks every loaded
  checkpoint's strings that s3prl evaluates or looks up by name (``conv_feature_layers``, ...;
  :mod:`s3prl_ser.evaluated_strings`) and raises
  :class:`~s3prl_ser.evaluated_strings.UnsafeConfigError` naming the file and the field.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import pickle
import sys
import types
from collections.abc import Callable
from typing import Any

import soundfile
import torch
import torchaudio

from s3prl_ser.evaluated_strings import check_evaluated_fields

__all__ = [
    "RemovedAPIError",
    "UnsafeCheckpointError",
    "install",
    "soundfile_load",
]


class RemovedAPIError(RuntimeError):
    """A library API that s3prl references no longer exists on this stack."""


class UnsafeCheckpointError(ValueError, RuntimeError):
    """A checkpoint that does not load weights-only: unpickling it in full could run code from it.

    A ``ValueError``, so the command-line programs end with ``error: ...``, and a
    ``RuntimeError`` like any other failed checkpoint load, so existing handlers keep working.
    """


def _removed(qualified_name: str, hint: str) -> Callable[..., Any]:
    def raiser(*args: Any, **kwargs: Any) -> Any:
        raise RemovedAPIError(f"{qualified_name} was removed from the installed library; {hint}")

    raiser.__name__ = qualified_name.rsplit(".", 1)[-1]
    return raiser


_CONVERT_HINT = (
    "s3prl-ser loads every checkpoint weights-only, since unpickling one in full can run code stored in it. "
    "If you trust the file, convert it once in a separate Python session without s3prl_ser: "
    "`ckpt = torch.load(PATH, weights_only=False)`, then `torch.save` a copy holding only tensors, state_dicts "
    "and plain values (dict, list, str, int, float, bool, None; argparse.Namespace is accepted too) and use "
    "that copy; for tera/mockingjay/distiller files keep what their loader reads: `torch.save({k: ckpt[k] for k "
    "in ('Config', 'Upstream_Config', 'Transformer', 'SpecHead', 'Distiller') if k in ckpt}, NEW_PATH)`"
)


def _file_name(f: Any) -> str:
    return os.fspath(f) if isinstance(f, (str, os.PathLike)) else getattr(f, "name", None) or "<in-memory file>"


def _load_failure(f: Any, error: Exception, full_unpickling: bool, caller: str) -> UnsafeCheckpointError:
    name = _file_name(f)
    text = str(error).split("WeightsUnpickler error:", 1)[-1]
    reason = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    reason = reason.split(" Please use", 1)[0].rstrip(".")  # drop torch's advice to allow-list the global
    asked = " asking for full unpickling (weights_only=False)" if full_unpickling else ""
    read_by = f" (read by {caller}{asked})" if caller != __name__ else ""
    return UnsafeCheckpointError(
        f"cannot load checkpoint {name}{read_by}: it does not load weights-only (torch: {reason}). {_CONVERT_HINT}"
    )


def _weights_only_torch_load(original: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.load`` that is always weights-only (see the module docstring)."""

    def load(
        f: Any,
        map_location: Any = None,
        pickle_module: Any = None,
        *,
        weights_only: bool | None = None,
        mmap: bool | None = None,
        **pickle_load_args: Any,
    ) -> Any:
        full_unpickling = weights_only is False or pickle_module is not None
        namespaces = torch.serialization.safe_globals([argparse.Namespace])
        try:
            with namespaces if full_unpickling else contextlib.nullcontext():
                state = original(f, map_location, weights_only=True, mmap=mmap, **pickle_load_args)
        except pickle.UnpicklingError as error:
            caller = sys._getframe(1).f_globals.get("__name__", "?")
            raise _load_failure(f, error, full_unpickling, caller) from error
        check_evaluated_fields(state, _file_name(f))  # before any s3prl builder sees its strings
        return state

    load.__doc__ = original.__doc__
    load.__wrapped__ = original
    load.s3prl_ser_weights_only = True
    return load


def _force_weights_only_loads() -> None:
    if getattr(torch.load, "s3prl_ser_weights_only", False):
        return
    torch.load = torch.serialization.load = _weights_only_torch_load(torch.load)


def soundfile_load(
    uri: str | os.PathLike,
    frame_offset: int = 0,
    num_frames: int = -1,
    normalize: bool = True,
    channels_first: bool = True,
    **_: Any,
) -> tuple[torch.Tensor, int]:
    """Drop-in for ``torchaudio.load`` backed by soundfile (returns float32 in [-1, 1])."""
    stop = None if num_frames < 0 else frame_offset + num_frames
    data, sample_rate = soundfile.read(os.fspath(uri), start=frame_offset, stop=stop, dtype="float32", always_2d=True)
    wav = torch.from_numpy(data)  # (frames, channels)
    return (wav.T.contiguous() if channels_first else wav), sample_rate


def _patch_torchaudio() -> None:
    if not hasattr(torchaudio, "set_audio_backend"):
        torchaudio.set_audio_backend = lambda backend=None: None
    try:
        importlib.import_module("torchaudio.sox_effects")
    except ImportError:
        stand_in = types.ModuleType("torchaudio.sox_effects")
        hint = "sox effects are not available with torchaudio >= 2.9; apply them with sox beforehand"
        for name in ("apply_effects_tensor", "apply_effects_file", "effect_names"):
            setattr(stand_in, name, _removed(f"torchaudio.sox_effects.{name}", hint))
        sys.modules["torchaudio.sox_effects"] = stand_in
        torchaudio.sox_effects = stand_in
    if importlib.util.find_spec("torchcodec") is None:
        torchaudio.load = soundfile_load


def _patch_huggingface_hub() -> None:
    import huggingface_hub

    hint = "s3prl's own Hub push is not supported: export the model and use python -m s3prl_ser.export --push-to-hub"
    for name in ("HfFolder", "Repository"):
        if not hasattr(huggingface_hub, name):
            raiser = _removed(f"huggingface_hub.{name}", hint)
            stand_in = type(name, (), {"__init__": raiser, "get_token": staticmethod(raiser)})
            setattr(huggingface_hub, name, stand_in)


def install() -> None:
    """Make ``import s3prl`` and its runner work; idempotent, so repeated calls are harmless.

    Raises:
        RuntimeError: ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set. It asks for full unpickling
            of every checkpoint, which could run code; the wrapped ``torch.load`` ignores it,
            but a process that sets it expects otherwise.
    """
    if os.getenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0") in ("1", "y", "yes", "true"):
        raise RuntimeError(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: it asks torch.load to unpickle checkpoints in full, "
            "which can execute code from the file; s3prl-ser loads them weights-only regardless: unset it"
        )
    _force_weights_only_loads()
    _patch_torchaudio()
    _patch_huggingface_hub()
