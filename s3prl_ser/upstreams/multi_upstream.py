"""Several s3prl upstreams in one run: ``-u NAME1,NAME2 -k CKPT1,CKPT2``.

s3prl's runner holds one upstream and one featurizer. :class:`MultiUpstream` holds one
upstream per name and returns each one's output; :class:`MultiFeaturizer` holds one s3prl
``Featurizer`` per upstream (its own layer weights) and returns one feature stream per
upstream. ``output_dim`` and ``downsample_rate`` become lists, which the ``emotion_ecapa``
expert reads as several streams to fuse.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from s3prl_ser.config import expert_default
from s3prl_ser.data.protocol import FoldSpec
from s3prl_ser.s3prl_logging import log_featurizer_notes
from s3prl_ser.upstreams.build import build_upstream
from s3prl_ser.upstreams.exportable import front_end_description

__all__ = [
    "split_names",
    "MultiUpstream",
    "MultiFeaturizer",
    "build_upstreams",
    "build_featurizer",
    "shortest_input",
    "raise_min_samples",
]

logger = logging.getLogger(__name__)


def split_names(upstream: str, ckpt: str | None) -> list[tuple[str, str | None]]:
    """``"a,b"`` and ``"k1,"`` -> ``[("a", "k1"), ("b", None)]`` (empty checkpoint entries allowed)."""
    names = [n.strip() for n in upstream.split(",")]
    ckpts = [c.strip() or None for c in ckpt.split(",")] if ckpt else [None] * len(names)
    if "" in names:
        raise ValueError(f"empty upstream name in -u {upstream!r}")
    if len(ckpts) != len(names):
        raise ValueError(f"-u names {len(names)} upstreams but -k gives {len(ckpts)} checkpoints: {ckpt!r}")
    return list(zip(names, ckpts))


class MultiUpstream(nn.Module):
    """Upstreams run on the same waveforms; ``forward`` returns their outputs in order."""

    def __init__(self, upstreams: Sequence[nn.Module]) -> None:
        super().__init__()
        self.upstreams = nn.ModuleList(upstreams)

    def get_downsample_rates(self, key: str) -> list[int]:
        return [up.get_downsample_rates(key) for up in self.upstreams]

    def forward(self, wavs: list[Tensor]) -> list[dict[str, Any]]:
        return [up(wavs) for up in self.upstreams]


class MultiFeaturizer(nn.Module):
    """One s3prl ``Featurizer`` per upstream; returns S streams of B ``(T_{s,b}, D_s)`` tensors."""

    def __init__(self, featurizers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.featurizers = nn.ModuleList(featurizers)
        self.output_dim = [f.output_dim for f in featurizers]
        self.downsample_rate = [f.downsample_rate for f in featurizers]

    def forward(self, wavs: list[Tensor], outputs: list[dict[str, Any]]) -> list[list[Tensor]]:
        return [featurizer(wavs, out) for featurizer, out in zip(self.featurizers, outputs)]


def build_upstreams(
    upstream: str,
    ckpt: str | None,
    model_config: str | None = None,
    refresh: bool = False,
    fold: FoldSpec | None = None,
) -> nn.Module:
    """One upstream, or a :class:`MultiUpstream` when ``upstream`` names several; ``fold``
    (the fold or its protocol) guards each fine-tuned one (:func:`~s3prl_ser.upstreams.build.build_upstream`)."""
    pairs = split_names(upstream, ckpt)
    modules = [build_upstream(name, path, model_config, refresh, fold) for name, path in pairs]
    return modules[0] if len(modules) == 1 else MultiUpstream(modules)


def build_featurizer(
    upstream: nn.Module, feature_selection: str, layer_selection: int | None, device: str, normalize: bool
) -> nn.Module:
    """s3prl's ``Featurizer`` for one upstream, a :class:`MultiFeaturizer` for a MultiUpstream."""
    from s3prl.upstream.interfaces import Featurizer

    log_featurizer_notes()  # its construction notes as log records, not stderr prints

    def one(module: nn.Module) -> nn.Module:
        return Featurizer(
            upstream=module,
            feature_selection=feature_selection,
            upstream_device=device,
            layer_selection=layer_selection,
            normalize=normalize,
        )

    if isinstance(upstream, MultiUpstream):
        return MultiFeaturizer([one(up) for up in upstream.upstreams])
    return one(upstream)


def shortest_input(upstream: nn.Module) -> int:
    """Fewest 16 kHz samples for which ``upstream`` gives finite features, where that is more
    than its receptive field: s3prl's kaldi baselines with per-utterance CMVN (``fbank``,
    ``mfcc``, ``spectrogram``) divide by the std over frames, 0/0 = NaN for one frame, so they
    need two (400 + 160 = 560 samples); 0 (no bound known here) for any other upstream.
    A :class:`MultiUpstream` needs what its most demanding member does.

    Example:
        >>> shortest_input(build_upstream("fbank")), shortest_input(build_upstream("fbank_no_cmvn"))
        (560, 0)
    """
    if isinstance(upstream, MultiUpstream):
        return max(shortest_input(member) for member in upstream.upstreams)
    described = front_end_description(upstream)
    if described is None or "kwargs" not in described or not described["cmvn"]["use_cmvn"]:
        return 0
    kwargs = described["kwargs"]  # torchaudio.compliance.kaldi's defaults: 25 ms frames every 10 ms
    frame, shift = (round(kwargs.get(key, ms) * 16) for key, ms in (("frame_length", 25.0), ("frame_shift", 10.0)))
    return frame + shift


def raise_min_samples(datarc: dict[str, Any], upstream: str, model_config: str | None = None) -> int:
    """Raise ``datarc["min_samples"]`` to what the upstreams ``-u upstream`` need
    (:func:`shortest_input`), so the fold's audio check refuses, naming them, the clips that
    would give NaN features (and a NaN loss). Only s3prl's weightless baselines are built to
    find out (the others have no bound here and are not loaded).

    Returns:
        The ``min_samples`` in force.

    Example:
        >>> datarc = {"min_samples": 400}
        >>> raise_min_samples(datarc, "fbank"), datarc
        (560, {'min_samples': 560})
    """
    from s3prl import hub

    configured = int(datarc.get("min_samples", expert_default("datarc", "min_samples")))
    # Building a baseline draws from torch's generator: without fork_rng the run's later draws
    # (the downstream's initial weights) would differ from a run without this check.
    with torch.random.fork_rng(devices=[]):
        need = max(
            shortest_input(build_upstream(name, model_config=model_config))
            if getattr(getattr(hub, name, None), "__module__", "") == "s3prl.upstream.baseline.hubconf"
            else 0
            for name, _ in split_names(upstream, None)
        )
    if need > configured:
        # debug: a clip below the bound is refused by the audio check, whose error names it and the bound
        logger.debug(
            "min_samples %d -> %d: upstream %s gives NaN features for shorter clips", configured, need, upstream
        )
        datarc["min_samples"] = need
    return max(need, configured)
