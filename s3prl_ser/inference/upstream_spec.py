"""Describe an s3prl upstream so that it can be rebuilt offline, and rebuild it.

A trained run names its upstream by hub entry and ``-k`` path (``-u hubert_local -k
/abs/path.pt``, ``-u hubert_ft_avg -k FT_DIR``, ``-u hubert`` from the download cache). A
model directory must load with neither the path nor the network, so its ``config.json``
holds, per upstream, an :data:`UpstreamSpec` (a JSON dict) and its ``model.safetensors`` the
upstream's weights:

* HuBERT / wav2vec 2.0 families (every entry loaded through s3prl's converted format): the
  converted checkpoint's ``task_cfg``, ``model_cfg`` and ``dictionaries_symbols``; the model
  is rebuilt through the same s3prl loader (``hubert_local`` / ``wav2vec2_local``);
* parameter-free feature extractors (``fbank``, ``mfcc``, ...) that s3prl builds from its own
  package files: the entry name and, when ``-g`` was given, the text of that config file.

Anything else (an upstream whose learned weights come from a file of another format) cannot be
described; :func:`describe_upstreams` then returns the reason, which export reports.
:func:`check_offline` holds every spec to these two kinds before anything is built, so a model
directory never makes s3prl download (an entry such as ``tera`` would).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from s3prl_ser.data.protocol import FoldSpec
from s3prl_ser.fileio import atomic_torch_save, safe_torch_load
from s3prl_ser.upstreams.build import build_upstream
from s3prl_ser.upstreams.exportable import CONVERTED_LOADERS, UnsupportedUpstreamError, export_loader, load_upstream
from s3prl_ser.upstreams.multi_upstream import MultiUpstream, split_names

__all__ = ["UpstreamSpec", "check_offline", "describe_upstreams", "build_upstreams_offline"]

UpstreamSpec = dict[str, Any]
"""``{"entry": hub entry to rebuild with, "trained_as": the run's -u name, "converted": {...} | None,
"model_config": text of the -g file | None}``."""

_CONVERTED_KEYS = ("task_cfg", "model_cfg", "dictionaries_symbols")


def _json_plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON (round-tripped), or ValueError naming ``where``."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as error:
        raise UnsupportedUpstreamError(f"{where} is not plain JSON ({error}); it cannot go into config.json") from error


def check_offline(spec: Any) -> None:
    """Refuse a spec that s3prl could not build from the spec alone: its entry must be a converted
    loader (:data:`~s3prl_ser.upstreams.exportable.CONVERTED_LOADERS`, given the embedded weights) or,
    with no converted checkpoint, one of s3prl's parameter-free baseline extractors (``fbank``,
    ``mfcc``, ...: built from s3prl's package files). Any other entry may download.

    Raises:
        UnsupportedUpstreamError: the spec is no dict, or names another entry.

    Example:
        >>> check_offline({"entry": "fbank", "converted": None})
        >>> check_offline({"entry": "tera", "converted": None})
        Traceback (most recent call last):
        ...
        s3prl_ser.upstreams.exportable.UnsupportedUpstreamError: upstream entry 'tera' is not rebuilt offline ...
    """
    import s3prl.upstream.baseline.hubconf as baseline

    if not isinstance(spec, Mapping) or not isinstance(spec.get("entry"), str):
        raise UnsupportedUpstreamError(f"upstream spec {spec!r} is not an object with an entry name")
    entry = spec["entry"]
    if spec.get("converted") is not None:
        allowed = entry in CONVERTED_LOADERS
    else:
        function = getattr(baseline, entry, None)
        allowed = not entry.startswith("_") and callable(function) and function.__module__ == baseline.__name__
    if not allowed:
        raise UnsupportedUpstreamError(
            f"upstream entry {entry!r} is not rebuilt offline (from a model directory: "
            f"{', '.join(CONVERTED_LOADERS)} with embedded weights, or s3prl's baseline extractors such as fbank)"
        )


def _describe_one(
    name: str, ckpt: str | None, model_config: str | None, fold: FoldSpec | None
) -> tuple[nn.Module, UpstreamSpec | str]:
    loaded = load_upstream(name, ckpt, fold, model_config=model_config)
    try:
        loader = export_loader(loaded)
    except UnsupportedUpstreamError as error:
        if any(True for _ in loaded.expert.parameters()):
            return loaded.expert, str(error).replace("cannot export a fine-tuned", "cannot export the upstream")
        if ckpt is not None:
            return loaded.expert, f"upstream {name!r} was built from -k {ckpt}, whose format cannot be embedded"
        text = Path(model_config).read_text(encoding="utf-8") if model_config else None
        spec = {"entry": name, "trained_as": name, "converted": None, "model_config": text}
        try:
            check_offline(spec)
        except UnsupportedUpstreamError as problem:
            return loaded.expert, f"cannot export the upstream: {problem}"
        return loaded.expert, spec
    fields = safe_torch_load(loaded.source_file, mmap=True)
    missing = [key for key in _CONVERTED_KEYS if key not in fields]
    if missing:
        return loaded.expert, f"{loaded.source_file}: converted checkpoint without {', '.join(missing)}"
    try:
        converted = {key: _json_plain(fields[key], f"{loaded.source_file}: {key}") for key in _CONVERTED_KEYS}
    except UnsupportedUpstreamError as error:
        return loaded.expert, str(error)
    return loaded.expert, {"entry": loader, "trained_as": name, "converted": converted, "model_config": None}


def describe_upstreams(
    upstream: str, ckpt: str | None, model_config: str | None = None, fold: FoldSpec | None = None
) -> tuple[nn.Module, list[UpstreamSpec] | str]:
    """Build a run's upstream(s) (``-u``/``-k``/``-g``, fold-guarded) and describe them.

    Returns:
        The upstream module (a :class:`~s3prl_ser.upstreams.multi_upstream.MultiUpstream` for
        several names) and either one spec per upstream or the reason one cannot be rebuilt
        offline (a string).
    """
    built = [_describe_one(name, path, model_config, fold) for name, path in split_names(upstream, ckpt)]
    modules = [module for module, _ in built]
    reasons = [spec for _, spec in built if isinstance(spec, str)]
    module = modules[0] if len(modules) == 1 else MultiUpstream(modules)
    return module, reasons[0] if reasons else [spec for _, spec in built]


def _build_one(spec: Mapping[str, Any], weights: Mapping[str, Tensor], workdir: Path) -> nn.Module:
    model_config = None
    if spec.get("model_config") is not None:
        model_config = workdir / "upstream_model_config.yaml"
        model_config.write_text(spec["model_config"], encoding="utf-8")
    if spec.get("converted") is None:
        return build_upstream(spec["entry"], None, str(model_config) if model_config else None)
    # s3prl's loader reads a converted checkpoint file: write one from the embedded config and weights.
    converted = dict(spec["converted"], model_weight={k.removeprefix("model."): v for k, v in weights.items()})
    path = workdir / "upstream.ckpt"
    atomic_torch_save(converted, path)
    return build_upstream(spec["entry"], str(path))


def build_upstreams_offline(specs: list[UpstreamSpec], weights: Mapping[str, Tensor]) -> nn.Module:
    """Rebuild the upstream module :func:`describe_upstreams` described, from embedded weights.

    Args:
        specs: one spec per upstream (several: a MultiUpstream).
        weights: that module's ``state_dict()`` (keys ``upstreams.<i>.`` for several); the
            caller loads it strictly afterwards, this only needs the converted models' part.

    Raises:
        UnsupportedUpstreamError: a spec that :func:`check_offline` refuses (before any is built).
    """
    for spec in specs:
        check_offline(spec)
    prefixes = [""] if len(specs) == 1 else [f"upstreams.{i}." for i in range(len(specs))]
    modules = []
    with tempfile.TemporaryDirectory(prefix="s3prl_ser_upstream_") as tmp:
        for index, (spec, prefix) in enumerate(zip(specs, prefixes)):
            own = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
            workdir = Path(tmp) / str(index)
            workdir.mkdir()
            with torch.random.fork_rng(devices=[]):  # building initialises weights: keep callers' RNG
                modules.append(_build_one(spec, own, workdir))
    return modules[0] if len(modules) == 1 else MultiUpstream(modules)
