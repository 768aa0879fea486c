"""Frozen upstreams computed once: a feature cache in front of an s3prl upstream.

:class:`CachedUpstream` replaces a frozen upstream in the runner. Given a batch of
waveforms it returns, for each one, the hidden states the featurizer reads (every layer for
s3prl's learned weighted sum, the selected layer or key otherwise), from the cache when the
waveform's features are stored and from the upstream otherwise; :meth:`CachedUpstream.fill`
extracts a split's missing utterances beforehand. The featurizer, SpecAugment and the
downstream see what they saw before, so nothing after the upstream changes.

**Keys.** An utterance is keyed by a hash of the waveform the upstream receives (its float32
samples at 16 kHz, and their count): whatever produced it -- a path, a segment of a longer
recording, resampling -- the key changes exactly when the upstream's input does. Everything
else that changes the features (the upstream's name, a hash of its weights and of its
checkpoint and config files, the selected features, ``upstream_feature_normalize``, the
storage type, the extraction batch size, the sample rate, device type and thread count, and
the versions of this code, s3prl and torch) names the namespace directory
(:func:`namespace`), so a stale entry is never found.

**What is stored.** Each utterance is extracted alone by default (``extract_batch_size: 1``):
its features do not depend on which utterances happened to be extracted with it, so a cache
filled by any sequence of runs holds the same bits, and a run reproduces itself. Larger
batches (sorted by length, so little padding) are faster on a GPU; the batch size is then
part of the namespace, as padding changes what upstreams with a GroupNorm feature encoder
(HuBERT/wav2vec 2.0 Base) compute. Per utterance, ``min(T, round(samples / rate))`` frames
are stored: the frames s3prl's featurizer keeps.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from s3prl_ser.data.audio import SAMPLE_RATE
from s3prl_ser.feature_cache.store import CacheSpaceError, FeatureStore
from s3prl_ser.versions import installed_version

__all__ = [
    "CACHE_FORMAT",
    "CacheSpaceError",
    "fill_store",
    "check_space",
    "default_cache_dir",
    "audio_key",
    "file_digest",
    "weights_digest",
    "namespace",
    "select_features",
    "CachedUpstream",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when what the extraction stores changes (2: shard indexes record a SHA-256)
CACHE_ENV = "S3PRL_SER_FEATURE_CACHE"


def _size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def fill_store(
    store: FeatureStore,
    items: Mapping[str, Any],
    extract: Callable[[list[tuple[str, Any]]], int],
    what: str,
    noun: str,
) -> dict[str, int]:
    """Store what ``store`` lacks of ``items`` (key -> what its features are computed from).

    Counted first without the lock, so a filled cache costs no wait; then, holding the store's
    writer lock, ``extract`` gets the ``(key, item)`` pairs still missing (what another writer
    stored meanwhile is not redone) and returns how many it stored. Returns the counts
    ``stored`` (after filling) and ``extracted``.
    """
    store.refresh()
    if all(key in store for key in items):
        logger.info(f"[FeatureCache] - {what}: all {len(items)} {noun} read from {store.directory}")
        return {"stored": len(items), "extracted": 0}
    extracted = 0
    with store.locked():
        missing = [(key, item) for key, item in items.items() if key not in store]
        if missing:
            extracted = extract(missing)
    return {"stored": sum(key in store for key in items), "extracted": extracted}


def check_space(store: FeatureStore, what: str, action: str, expected: int, reserve: int) -> None:
    """Print what is about to be written (``action``, ``expected`` bytes) and the free space.

    Raises:
        CacheSpaceError: writing it would leave less than ``reserve`` bytes free.
    """
    free = shutil.disk_usage(store.directory).free
    logger.info(
        f"[FeatureCache] - {what}: {action}: about {_size(expected)} into {store.directory}, {_size(free)} free"
    )
    if expected > free - reserve:
        raise CacheSpaceError(
            f"feature cache {store.directory}: {what} needs about {_size(expected)}, but {_size(free)} are free "
            f"and {_size(reserve)} must stay free: free space, point feature_cache.dir (--feature_cache_dir) "
            "elsewhere, or run without the cache (--no_feature_cache)"
        )


def default_cache_dir() -> Path:
    """``$S3PRL_SER_FEATURE_CACHE``, else ``~/.cache/s3prl_ser/features``.

    Example:
        >>> isinstance(default_cache_dir(), Path)
        True
    """
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "s3prl_ser" / "features")


def audio_key(wav: Tensor | np.ndarray) -> str:
    """The key of a waveform: a hash of its float32 samples and their count.

    Example:
        >>> a = audio_key(np.zeros(4, dtype=np.float32))
        >>> a == audio_key(torch.zeros(4)), a == audio_key(np.zeros(5, dtype=np.float32))
        (True, False)
    """
    samples = wav.detach().cpu().numpy() if isinstance(wav, Tensor) else np.asarray(wav)
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    return f"{hashlib.sha1(samples.tobytes()).hexdigest()[:32]}-{samples.size}"


def file_digest(path: str | os.PathLike | None) -> str | None:
    """A content hash of a file (None for None or a path that is not a file, e.g. a directory
    whose per-fold file the weights hash covers).

    Example:
        >>> file_digest(None) is None
        True
    """
    if path is None or not os.path.isfile(path):
        return None
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def weights_digest(module: nn.Module) -> str:
    """A hash of a module's parameters and buffers (names, types, shapes and values).

    Example:
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> weights_digest(a) == weights_digest(a), weights_digest(a) == weights_digest(b)
        (True, False)
    """
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def namespace(upstream: str, fingerprint: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The namespace directory name and spec of an upstream configuration.

    Args:
        upstream: the hub name (readable part of the directory name).
        fingerprint: everything about the upstream and the selected features that changes
            them (weights and file hashes, selection, normalize, dtype, batch size, device).

    The spec adds the sample rate, the thread count (it changes float arithmetic) and the
    versions of the extraction code; the name ends in a hash of the whole spec.

    Example:
        >>> name, spec = namespace("fbank", {"weights": "x"})
        >>> name.startswith("fbank-"), spec["sample_rate"], namespace("fbank", {"weights": "y"})[0] == name
        (True, 16000, False)
    """
    import s3prl_ser

    spec = {
        **dict(fingerprint),
        "upstream": upstream,
        "sample_rate": SAMPLE_RATE,
        "threads": torch.get_num_threads(),
        "code": {
            "cache_format": CACHE_FORMAT,
            "s3prl_ser": s3prl_ser.__version__,
            "s3prl": installed_version("s3prl"),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    spec = {key: spec[key] for key in sorted(spec)}
    digest = hashlib.sha1(repr(sorted(spec.items())).encode()).hexdigest()[:20]
    readable = "".join(c if c.isalnum() or c in "._-" else "_" for c in upstream)[:60]
    return f"{readable}-{digest}", spec


def select_features(output: Mapping[str, Any], key: str, layer: int | None) -> list[Tensor]:
    """What s3prl's ``Featurizer`` reads from an upstream output, as a list of ``(B, T, D)``
    tensors: every layer for a weighted sum, one tensor otherwise (its ``_select_feature``).

    Example:
        >>> out = {"hidden_states": [torch.zeros(1, 2, 3), torch.ones(1, 2, 3)]}
        >>> len(select_features(out, "hidden_states", None)), select_features(out, "hidden_states", 1)[0].sum().item()
        (2, 6.0)
    """
    feature = output[key]
    if isinstance(feature, dict):
        feature = list(feature.values())
    if isinstance(feature, (list, tuple)) and len(feature) == 1:
        feature = feature[0]
    if isinstance(feature, (list, tuple)) and isinstance(layer, int):
        feature = feature[layer]
    return list(feature) if isinstance(feature, (list, tuple)) else [feature]


class CachedUpstream(nn.Module):
    """A frozen upstream whose selected features come from a :class:`FeatureStore`.

    ``forward(wavs)`` returns ``{key: [L tensors (B, T_max, D)]}`` (a weighted sum's layers)
    or ``{key: (B, T_max, D)}`` (one feature), zero-padded, float32, on the waveforms'
    device: stored utterances are read, the others computed alone by the upstream (not
    stored: :meth:`fill` stores).

    Args:
        upstream: the s3prl upstream (kept in eval mode; it is frozen).
        store: the namespace's :class:`FeatureStore`.
        key, layer: the featurizer's ``feature_selection`` and ``layer_selection``.
        rate: the featurizer's downsample rate (samples per frame).
        extract_batch_size: utterances per extraction forward (sorted by length).
        reserve_bytes: free space :meth:`fill` leaves on the cache's file system.
        shard_bytes: a shard is committed once it holds this much (a killed extraction
            loses at most one shard's work).

    Example:
        >>> import tempfile
        >>> class Toy(nn.Module):  # 2 layers, 2 frames per 4 samples
        ...     def forward(self, wavs):
        ...         x = nn.utils.rnn.pad_sequence([w.view(-1, 2) for w in wavs], batch_first=True)
        ...         return {"hidden_states": [x, 2 * x]}
        >>> store = FeatureStore(tempfile.mkdtemp(), {"upstream": "toy"}, "float32")
        >>> cached = CachedUpstream(Toy(), store, "hidden_states", None, rate=2)
        >>> wavs = [torch.arange(4.0), torch.arange(6.0)]
        >>> report = cached.fill(wavs, "toy split")
        >>> out = cached(wavs)["hidden_states"]
        >>> len(out), out[1].shape, torch.equal(out[1], Toy()(wavs)["hidden_states"][1]), cached.misses
        (2, torch.Size([2, 3, 2]), True, 0)
    """

    def __init__(
        self,
        upstream: nn.Module,
        store: FeatureStore,
        key: str,
        layer: int | None,
        rate: int,
        extract_batch_size: int = 1,
        reserve_bytes: int = 1 << 30,
        shard_bytes: int = 256 << 20,
    ) -> None:
        super().__init__()
        self.upstream = upstream
        self.store, self.key, self.layer, self.rate = store, key, layer, rate
        self.extract_batch_size, self.reserve_bytes, self.shard_bytes = extract_batch_size, reserve_bytes, shard_bytes
        self.misses = 0

    def get_downsample_rates(self, key: str) -> int:
        return self.upstream.get_downsample_rates(key)

    def _frames(self, num_samples: int, frames: int) -> int:
        return min(frames, round(num_samples / self.rate))

    def _compute(self, wavs: list[Tensor]) -> list[np.ndarray]:
        """The upstream on ``wavs`` as one batch -> per utterance ``(L, T_i, D)`` float32 arrays."""
        with torch.no_grad():
            layers = select_features(self.upstream(wavs), self.key, self.layer)
        stacked = torch.stack([f.float() for f in layers], dim=1).cpu()  # (B, L, T, D)
        return [stacked[b, :, : self._frames(len(w), stacked.shape[2])].numpy() for b, w in enumerate(wavs)]

    def forward(self, wavs: list[Tensor]) -> dict[str, Any]:
        keys = [audio_key(w) for w in wavs]
        if any(k not in self.store for k in keys):
            self.store.refresh()
        arrays = []
        for wav, k in zip(wavs, keys):
            if k in self.store:
                arrays.append(self.store.read(k))
            else:
                self.misses += 1
                arrays.append(self._compute([wav])[0])
        frames = max(a.shape[1] for a in arrays)
        layers, dim = arrays[0].shape[0], arrays[0].shape[2]
        out = torch.zeros(layers, len(wavs), frames, dim)
        for b, array in enumerate(arrays):
            out[:, b, : array.shape[1]] = torch.from_numpy(array)
        out = out.to(wavs[0].device)
        return {self.key: list(out) if layers > 1 else out[0]}

    def fill(self, wavs: Sequence[Tensor | np.ndarray], what: str) -> dict[str, int]:
        """Extract and store the features of the waveforms not stored yet.

        ``wavs`` is indexable (read twice: once to key, once to extract the missing ones).
        Prints the expected size and the free space first, then extracts longest first in
        batches of ``extract_batch_size``, in eval mode without gradients, with a progress bar
        (seconds of audio, ETA). Torch's RNG is left as it was, so a run with the cache draws
        the same random numbers as one without. Returns counts
        (``utterances``, ``stored``, ``extracted``).

        Raises:
            CacheSpaceError: the features would leave less than ``reserve_bytes`` free, or the
                disk filled up while writing (the shards committed before are kept).
        """
        keys: dict[str, int] = {}
        for index in range(len(wavs)):
            keys.setdefault(audio_key(wavs[index]), index)
        report = fill_store(self.store, keys, lambda missing: self._extract(wavs, missing, what), what, "utterances")
        return {"utterances": len(wavs), **report}

    def _extract(
        self,
        wavs: Sequence[Tensor | np.ndarray],
        missing: list[tuple[str, int]],
        what: str,
    ) -> int:
        device = next(iter(self.upstream.parameters()), torch.empty(0)).device
        lengths = {index: len(wavs[index]) for _, index in missing}
        with torch.random.fork_rng(devices=[]):
            was_training = self.upstream.training
            self.upstream.eval()
            try:
                probe = self._compute([torch.zeros(SAMPLE_RATE, device=device)])[0]
                per_frame = probe.shape[0] * probe.shape[2] * self.store.dtype.itemsize
                expected = sum(round(n / self.rate) for n in lengths.values()) * per_frame
                hours = sum(lengths.values()) / SAMPLE_RATE / 3600
                action = (
                    f"extracting {len(missing)} utterance(s) ({hours:.2f} h of audio, {probe.shape[0]} layer(s) x "
                    f"{probe.shape[2]}, {self.store.dtype.name})"
                )
                check_space(self.store, what, action, expected, self.reserve_bytes)
                order = sorted(missing, key=lambda item: -lengths[item[1]])
                batches = [
                    order[i : i + self.extract_batch_size] for i in range(0, len(order), self.extract_batch_size)
                ]
                with (
                    self.store.writer(self.shard_bytes) as writer,
                    tqdm(
                        total=sum(lengths.values()),
                        unit="s",
                        unit_scale=1 / SAMPLE_RATE,
                        desc=f"extracting {what}",
                        dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}]",
                    ) as progress,
                ):
                    for batch in batches:
                        batch_wavs = [torch.as_tensor(wavs[i], dtype=torch.float32, device=device) for _, i in batch]
                        for (key, _), features in zip(batch, self._compute(batch_wavs)):
                            writer.add(key, features)
                        progress.update(sum(len(w) for w in batch_wavs))
            finally:
                self.upstream.train(was_training)
        return len(missing)
