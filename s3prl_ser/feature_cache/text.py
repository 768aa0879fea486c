"""The feature cache for the frozen text encoder (BERT on transcripts, paper experiments 10-11).

In stage 2 the text encoder is frozen (``emotion_ecapa`` builds it without gradients and keeps
it out of the trained modules), so, like a frozen speech upstream
(:mod:`s3prl_ser.feature_cache.speech`), each transcript's features are computed once, stored in
a :class:`~s3prl_ser.feature_cache.store.FeatureStore` and read back.

**What is stored.** What the expert consumes: the :class:`~s3prl_ser.models.text_encoder.TextEncoder`'s
output -- the selected layer (``last_hidden_state``), or the fixed equal-weight sum of all
layers (``hidden_states``; its weights are frozen too) -- over the valid tokens (CLS and SEP
included), as a ``(1, n_tokens, D)`` array per transcript. Each transcript is encoded alone,
so its features do not depend on which transcripts it was batched with.

**Keys.** A transcript is keyed by a hash of the token ids the encoder receives (after
lower-casing, WordPiece and truncation to ``max_length``): the key changes exactly when the
encoder's input does, and utterances with the same transcript share one entry. Everything
else (a hash of the encoder's weights, of its directory's files -- config, tokenizer,
weights --, the feature selection, ``max_length``, the storage type, the device type, the
transformers version, and what :func:`~s3prl_ser.feature_cache.speech.namespace` adds: thread
count and the versions of the cache format, s3prl_ser, s3prl, torch and Python) names the
namespace directory, so a stale entry is never found.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from s3prl_ser.feature_cache.speech import check_space, file_digest, fill_store, weights_digest
from s3prl_ser.feature_cache.store import FeatureStore
from s3prl_ser.versions import installed_version

__all__ = ["token_key", "text_fingerprint", "CachedTextEncoder"]


def token_key(ids: Sequence[int]) -> str:
    """The key of a transcript: a hash of the token ids the encoder receives, and their count.

    Example:
        >>> a = token_key([101, 7592, 102])
        >>> a == token_key((101, 7592, 102)), a == token_key([101, 7593, 102])
        (True, False)
    """
    ids = np.ascontiguousarray(np.asarray(list(ids), dtype=np.int64))
    return f"tok-{hashlib.sha1(ids.tobytes()).hexdigest()[:32]}-{ids.size}"


def text_fingerprint(encoder: nn.Module, directory: str | os.PathLike, dtype: str, device: str) -> dict:
    """Everything about a text encoder that changes its stored features (see the module docstring).

    Args:
        encoder: the :class:`~s3prl_ser.models.text_encoder.TextEncoder` (model and layer selection).
        directory: the directory it was loaded from (every file in it is hashed: config,
            tokenizer files, weights).
        dtype: the storage type.
        device: where it runs (``cpu``, ``cuda:0``; only the type counts).
    """
    files = sorted(p for p in Path(directory).iterdir() if p.is_file())
    return {
        "class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
        "model_class": type(getattr(encoder, "model", encoder)).__qualname__,
        "weights": weights_digest(encoder),
        "files": {p.name: file_digest(p) for p in files},
        "feature_selection": getattr(getattr(encoder, "featurizer", None), "feature_selection", None),
        "max_length": getattr(encoder, "max_length", None),
        "dtype": dtype,
        "device": str(device).split(":")[0],
        "transformers": installed_version("transformers"),
    }


class CachedTextEncoder(nn.Module):
    """A frozen text encoder whose per-token features come from a :class:`FeatureStore`.

    ``forward(texts)`` returns what the encoder returns: features ``(B, T_max, D)`` (float32,
    zero past each text's tokens) and valid token counts ``(B,)``, on the encoder's device.
    Stored transcripts are read; the others are encoded alone (not stored: :meth:`fill`
    stores) and counted in ``misses``.

    Args:
        encoder: the :class:`~s3prl_ser.models.text_encoder.TextEncoder` (frozen; kept in eval mode).
        store: the namespace's store (:func:`text_fingerprint` + :func:`~s3prl_ser.feature_cache.speech.namespace`).
        reserve_bytes: free space :meth:`fill` leaves on the cache's file system.

    Example:
        >>> import tempfile
        >>> class Toy(nn.Module):  # a "tokenizer" of characters, one feature per token
        ...     max_length = 8
        ...     def tokenizer(self, texts, truncation=True, max_length=8):
        ...         return {"input_ids": [[ord(c) for c in t][:max_length] for t in texts]}
        ...     def forward(self, texts):
        ...         ids = [torch.tensor([float(ord(c)) for c in t]) for t in texts]
        ...         padded = nn.utils.rnn.pad_sequence(ids, batch_first=True).unsqueeze(-1)
        ...         return padded, torch.tensor([len(t) for t in texts])
        >>> store = FeatureStore(tempfile.mkdtemp(), {"upstream": "toy"}, "float32")
        >>> cached = CachedTextEncoder(Toy(), store)
        >>> cached.fill(["ab", "c"], "toy split")["extracted"]  # doctest: +ELLIPSIS
        2
        >>> features, lengths = cached(["c", "ab"])
        >>> features.shape, lengths.tolist(), features[0, :, 0].tolist(), cached.misses
        (torch.Size([2, 2, 1]), [1, 2], [99.0, 0.0], 0)
    """

    def __init__(self, encoder: nn.Module, store: FeatureStore, reserve_bytes: int = 1 << 30) -> None:
        super().__init__()
        self.encoder, self.store, self.reserve_bytes = encoder, store, reserve_bytes
        self.misses = 0

    def keys(self, texts: Sequence[str]) -> list[str]:
        """The key of each text: its token ids as the encoder tokenises it (truncation included)."""
        ids = self.encoder.tokenizer(list(texts), truncation=True, max_length=self.encoder.max_length)["input_ids"]
        return [token_key(i) for i in ids]

    def _device(self) -> torch.device:
        return next(iter(self.encoder.parameters()), torch.empty(0)).device

    def _encode(self, text: str) -> np.ndarray:
        """One text alone -> its ``(1, n_tokens, D)`` float32 features."""
        with torch.no_grad():
            features, lengths = self.encoder([text])
        return features[0, : int(lengths[0])].float().cpu().numpy()[None]

    def forward(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``B`` texts -> features ``(B, T_max, D)`` and valid token counts ``(B,)``."""
        keys = self.keys(texts)
        if any(k not in self.store for k in keys):
            self.store.refresh()
        arrays = []
        for text, key in zip(texts, keys):
            if key in self.store:
                arrays.append(self.store.read(key)[0])
            else:
                self.misses += 1
                arrays.append(self._encode(text)[0])
        out = torch.zeros(len(arrays), max(a.shape[0] for a in arrays), arrays[0].shape[1])
        for b, array in enumerate(arrays):
            out[b, : array.shape[0]] = torch.from_numpy(array)
        device = self._device()
        return out.to(device), torch.tensor([a.shape[0] for a in arrays], device=device)

    def fill(self, texts: Sequence[str], what: str) -> dict[str, int]:
        """Encode and store the texts not stored yet, each alone, in eval mode without
        gradients; torch's RNG is left as it was. Returns counts (``texts``, ``stored``,
        ``extracted``).

        Raises:
            CacheSpaceError: the features would leave less than ``reserve_bytes`` free, or the
                disk filled up while writing (the shards committed before are kept).
        """
        keys: dict[str, str] = {}
        for text, key in zip(texts, self.keys(texts)):
            keys.setdefault(key, text)
        report = fill_store(self.store, keys, lambda missing: self._extract(missing, what), what, "transcripts")
        return {"texts": len(texts), **report}

    def _extract(self, missing: list[tuple[str, str]], what: str) -> int:
        with torch.random.fork_rng(devices=[]):
            was_training = self.encoder.training
            self.encoder.eval()
            try:
                tokens = sum(int(key.rsplit("-", 1)[1]) for key, _ in missing)
                dim = self._encode("")[0].shape[1]
                expected = tokens * dim * self.store.dtype.itemsize
                action = f"encoding {len(missing)} transcript(s) ({tokens} tokens x {dim}, {self.store.dtype.name})"
                check_space(self.store, what, action, expected, self.reserve_bytes)
                with self.store.writer() as writer:
                    for key, text in missing:
                        writer.add(key, self._encode(text))
            finally:
                self.encoder.train(was_training)
        return len(missing)
