"""The downstream runner's side of the feature cache (:mod:`s3prl_ser.feature_cache.speech`).

The ``feature_cache`` config section (``emotion_ecapa``'s ``config.yaml``; s3prl's own tasks
have none and run live) turns it on; it is used when nothing upstream of the featurizer is
trained (no ``-f``) in training and ``-m evaluate``. :func:`attach_feature_cache` puts one
:class:`~s3prl_ser.feature_cache.speech.CachedUpstream` in front of each upstream (one cache
per stream with several), and :meth:`FeatureCaches.fill_split` extracts a split's missing
utterances before the split is read. :func:`attach_text_feature_cache` does the same for
the frozen text encoder of ``emotion_ecapa``'s text stream (its expert fills it per split).
"""

from __future__ import annotations

import logging
import os
from argparse import Namespace
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from s3prl_ser.config import ConfigError, check_int, check_keys
from s3prl_ser.data.fold_data import RandomCrop
from s3prl_ser.feature_cache.speech import (
    CachedUpstream,
    default_cache_dir,
    file_digest,
    namespace,
    weights_digest,
)
from s3prl_ser.feature_cache.store import DTYPES, FeatureStore
from s3prl_ser.feature_cache.text import CachedTextEncoder, text_fingerprint
from s3prl_ser.finetuning.hub_entries import FT_CHECKPOINT, is_ft_avg_entry
from s3prl_ser.upstreams.multi_upstream import MultiUpstream, split_names

__all__ = [
    "SECTION",
    "KEYS",
    "cache_settings",
    "apply_cache_flags",
    "FeatureCaches",
    "attach_feature_cache",
    "attach_text_feature_cache",
]

logger = logging.getLogger(__name__)

SECTION = "feature_cache"
KEYS = {"enabled", "dir", "dtype", "extract_batch_size"}


def cache_settings(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checked ``feature_cache`` section, or None when the task has none.

    Raises:
        ConfigError: an unknown key, a non-boolean ``enabled``, an unknown ``dtype`` or a
            batch size below 1.

    Example:
        >>> cache_settings({"feature_cache": {"enabled": True, "dtype": "float32"}})["dtype"]
        'float32'
        >>> cache_settings({}) is None
        True
    """
    section = config.get(SECTION)
    if section is None:
        return None
    check_keys(section, KEYS, SECTION)
    settings = {"enabled": True, "dir": None, "dtype": "float16", "extract_batch_size": 1, **section}
    if not isinstance(settings["enabled"], bool):
        raise ConfigError(f"{SECTION}.enabled must be true or false, got {settings['enabled']!r}")
    if settings["dtype"] not in DTYPES:
        raise ConfigError(f"{SECTION}.dtype must be one of {', '.join(DTYPES)}, got {settings['dtype']!r}")
    if check_int(settings["extract_batch_size"], f"config.{SECTION}.extract_batch_size") < 1:
        raise ConfigError(f"{SECTION}.extract_batch_size must be >= 1, got {settings['extract_batch_size']}")
    return settings


def apply_cache_flags(args: Namespace, config: dict) -> None:
    """``--no_feature_cache`` and ``--feature_cache_dir`` into ``config`` (so a run's config
    records them, and a resume that changes the switch is refused like any other setting).

    Raises:
        ConfigError: ``--feature_cache_dir`` for a task without a feature cache.

    Example:
        >>> config = {"feature_cache": {"enabled": True}}
        >>> apply_cache_flags(Namespace(no_feature_cache=True, feature_cache_dir="/tmp/c"), config)
        >>> config
        {'feature_cache': {'enabled': False, 'dir': '/tmp/c'}}
    """
    directory = getattr(args, "feature_cache_dir", None)
    off = getattr(args, "no_feature_cache", False)
    if SECTION not in config:
        if directory:
            raise ConfigError(f"--feature_cache_dir: task {getattr(args, 'downstream', '?')} has no feature cache")
        return
    if off:
        config[SECTION]["enabled"] = False
    if directory:
        config[SECTION]["dir"] = str(directory)


class _Waveforms(Sequence):
    """A split's waveforms as the upstream receives them; training clips that a
    :class:`RandomCrop` crops anew each epoch are left out (they are computed live)."""

    def __init__(self, dataset: Any) -> None:
        crop = dataset.max_samples if isinstance(dataset, RandomCrop) else None
        self.dataset = dataset.dataset if isinstance(dataset, RandomCrop) else dataset
        self.indices = [i for i in range(len(self.dataset)) if crop is None or len(self.dataset[i][0]) <= crop]
        self.cropped = len(self.dataset) - len(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.dataset[self.indices[index]][0]


class FeatureCaches:
    """The cached upstream of each stream of a run, filled split by split.

    Example:
        >>> FeatureCaches([]).filled
        set()
    """

    def __init__(self, streams: list[CachedUpstream]) -> None:
        self.streams = streams
        self.filled: set[str] = set()

    def fill_split(self, split: str, dataset: Any) -> None:
        """Extract what ``dataset`` (a split's items ``(wav, ...)``) lacks, once per split and run."""
        if split in self.filled:
            return
        waveforms = _Waveforms(dataset)
        if waveforms.cropped:
            logger.info(
                f"[FeatureCache] - {split}: {waveforms.cropped} clip(s) longer than datarc.max_seconds are cropped "
                "anew every epoch; their features are computed live, not cached"
            )
        for stream in self.streams:
            stream.fill(waveforms, f"{split} ({stream.store.spec['upstream']})")
        self.filled.add(split)

    def misses(self) -> int:
        """Utterances computed live so far (not in the cache)."""
        return sum(stream.misses for stream in self.streams)


def _checkpoint_file(name: str, ckpt: str | None, fold: str | None) -> str | None:
    if ckpt and is_ft_avg_entry(name) and os.path.isdir(ckpt) and fold:
        return str(Path(ckpt) / fold / FT_CHECKPOINT)  # the fold's own export
    return ckpt


def attach_feature_cache(
    args: Namespace, config: Mapping[str, Any], upstream: nn.Module, featurizer: nn.Module, fold: str | None
) -> tuple[nn.Module, FeatureCaches | None]:
    """Wrap ``upstream`` (one, or a :class:`MultiUpstream`) in cached upstreams when the
    cache applies; return the module to run and the caches (None: live, and why is printed).

    Args:
        args: the run's arguments (``upstream``, ``upstream_ckpt``, ``upstream_trainable``,
            ``upstream_model_config``, ``upstream_feature_normalize``, ``device``, ``mode``).
        config: the run's config (its ``feature_cache`` section).
        upstream, featurizer: the built upstream(s) and featurizer(s) (selection and rate).
        fold: the fold, which picks a per-fold fine-tuned export's file.
    """
    settings = cache_settings(config)
    if settings is None:
        return upstream, None
    why_not = (
        "feature_cache.enabled is false (--no_feature_cache)"
        if not settings["enabled"]
        else "the upstream is trained (-f)"
        if args.upstream_trainable
        else f"-m {args.mode}"
        if args.mode not in ("train", "evaluate")
        else None
    )
    if why_not:
        logger.info(f"[FeatureCache] - off: {why_not}; the upstream runs at every step")
        return upstream, None
    root = Path(settings["dir"]).expanduser() if settings["dir"] else default_cache_dir()
    modules = list(upstream.upstreams) if isinstance(upstream, MultiUpstream) else [upstream]
    featurizers = list(featurizer.featurizers) if isinstance(upstream, MultiUpstream) else [featurizer]
    streams = []
    for (name, ckpt), module, feat in zip(split_names(args.upstream, args.upstream_ckpt), modules, featurizers):
        fingerprint = {
            "class": f"{type(module).__module__}.{type(module).__qualname__}",
            "weights": weights_digest(module),
            "checkpoint": file_digest(_checkpoint_file(name, ckpt, fold)),
            "model_config": file_digest(args.upstream_model_config),
            "feature_selection": feat.feature_selection,
            "layer_selection": feat.layer_selection,
            "normalize": bool(args.upstream_feature_normalize),
            "dtype": settings["dtype"],
            "extract_batch_size": settings["extract_batch_size"],
            "device": str(args.device).split(":")[0],
        }
        directory, spec = namespace(name, fingerprint)
        store = FeatureStore(root / directory, spec, settings["dtype"])
        logger.info(
            f"[FeatureCache] - {name}: {root / directory} ({len(store)} utterance(s) stored, {settings['dtype']})"
        )
        streams.append(
            CachedUpstream(
                module,
                store,
                feat.feature_selection,
                feat.layer_selection,
                feat.downsample_rate,
                settings["extract_batch_size"],
            )
        )
    wrapped = MultiUpstream(streams) if isinstance(upstream, MultiUpstream) else streams[0]
    return wrapped, FeatureCaches(streams)


def attach_text_feature_cache(
    section: Mapping[str, Any] | None,
    mode: str | None,
    device: str,
    encoder: nn.Module,
    encoder_dir: str | os.PathLike,
) -> CachedTextEncoder | None:
    """The cached text encoder when the cache applies, else None (live, and why is printed).

    Args:
        section: the run's ``feature_cache`` section (None: the task has none).
        mode: the run's ``-m`` (``train`` and ``evaluate`` use the cache).
        device: where the encoder runs.
        encoder: the frozen :class:`~s3prl_ser.models.text_encoder.TextEncoder`; one with a
            parameter that requires gradients is trained, and runs live.
        encoder_dir: the directory it was loaded from (its files are hashed into the namespace).

    Raises:
        ConfigError: an invalid ``feature_cache`` section.
    """
    settings = cache_settings({SECTION: section} if section is not None else {})
    if settings is None:
        return None
    why_not = (
        "feature_cache.enabled is false (--no_feature_cache)"
        if not settings["enabled"]
        else "the text encoder is trained"
        if any(p.requires_grad for p in encoder.parameters())
        else f"-m {mode}"
        if mode not in ("train", "evaluate")
        else None
    )
    if why_not:
        logger.info(f"[FeatureCache] - text: off: {why_not}; the text encoder runs at every step")
        return None
    root = Path(settings["dir"]).expanduser() if settings["dir"] else default_cache_dir()
    directory, spec = namespace(
        f"text-{Path(encoder_dir).name}", text_fingerprint(encoder, encoder_dir, settings["dtype"], device)
    )
    store = FeatureStore(root / directory, spec, settings["dtype"])
    logger.info(f"[FeatureCache] - text: {root / directory} ({len(store)} transcript(s) stored, {settings['dtype']})")
    return CachedTextEncoder(encoder, store)
