"""The on-disk part of the feature cache: one directory per namespace, immutable shards, a lock.

A namespace (:class:`FeatureStore`) holds the features of one upstream configuration
(:mod:`s3prl_ser.data.feature_cache` derives its name from everything that changes the
features). Layout::

    <namespace>/spec.json           what the namespace stores (checked on every open)
    <namespace>/shard-<id>.bin      raw little-endian float16/float32 arrays, one after another
    <namespace>/shard-<id>.json     {"data": "shard-<id>.bin", "entries": {key: [offset, L, T, D]}}
    <namespace>/.lock               held (flock) by the one process that writes

A shard is written to temporary files, then its data and last its index are renamed into
place: the index is the commit, so a reader sees a shard whole or not at all, and a writer
killed at any moment leaves only temporary files or a data file without an index, which the
next writer removes. Shards are never modified after that, so readers take no lock; writers
take the lock, so two processes sharing a cache never write the same entries twice.
Reads map only the entry's bytes (``mmap``) and copy them out, so a long run does not keep
every page it ever read resident.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DTYPES", "CacheSpecMismatchError", "Entry", "FeatureStore", "ShardWriter"]

DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
SPEC_FILE = "spec.json"
LOCK_FILE = ".lock"
_TMP_PREFIX = ".tmp-"


class CacheSpecMismatchError(ValueError):
    """A namespace directory whose ``spec.json`` is not the spec it is opened with."""


@dataclass(frozen=True)
class Entry:
    """Where one utterance's features lie: ``shape`` ``(L, T, D)`` at element ``offset`` of ``data``."""

    data: Path
    offset: int
    shape: tuple[int, int, int]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class FeatureStore:
    """Immutable feature shards of one namespace directory.

    Args:
        directory: the namespace directory (created if missing).
        spec: what it stores (plain JSON values); must equal the ``spec.json`` already there.
        dtype: ``float16`` or ``float32``, the storage type.

    Raises:
        CacheSpecMismatchError: ``spec.json`` exists and differs (the file is named).

    Example:
        >>> import tempfile
        >>> store = FeatureStore(tempfile.mkdtemp(), {"upstream": "toy"}, "float32")
        >>> with store.writer() as writer:
        ...     writer.add("utt", np.arange(6, dtype=np.float32).reshape(1, 3, 2))
        >>> store.read("utt").shape, store.read("utt")[0, 2].tolist(), store.lookup("other")
        ((1, 3, 2), [4.0, 5.0], None)
    """

    def __init__(self, directory: str | os.PathLike, spec: Mapping[str, Any], dtype: str) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"feature cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.directory = Path(directory)
        self.dtype = DTYPES[dtype]
        self.spec = json.loads(json.dumps(dict(spec)))
        self.directory.mkdir(parents=True, exist_ok=True)
        spec_path = self.directory / SPEC_FILE
        if not spec_path.exists():
            _atomic_write(spec_path, json.dumps(self.spec, indent=1, sort_keys=True).encode())
        recorded = json.loads(spec_path.read_text(encoding="utf-8"))
        if recorded != self.spec:
            raise CacheSpecMismatchError(
                f"{spec_path} describes other features than this run's ({recorded} != {self.spec}); "
                f"remove {self.directory} (the cache is rebuilt on demand)"
            )
        self._entries: dict[str, Entry] = {}
        self._indexes: set[str] = set()
        self._fds: dict[Path, int] = {}
        self._lock_depth = 0
        self.refresh()

    def refresh(self) -> None:
        """Take in the shards other processes committed since the last look."""
        for index in sorted(self.directory.glob("shard-*.json")):
            if index.name in self._indexes:
                continue
            record = json.loads(index.read_text(encoding="utf-8"))
            data = self.directory / record["data"]
            size = data.stat().st_size if data.exists() else -1
            entries = {key: Entry(data, offset, tuple(shape)) for key, (offset, *shape) in record["entries"].items()}
            needed = max((e.offset + int(np.prod(e.shape))) * self.dtype.itemsize for e in entries.values())
            if size < needed:  # a damaged disk or a hand-edited directory; the writers never leave one
                print(f"[FeatureCache] - ignoring {index}: {data} is shorter than its index says", file=sys.stderr)
            else:
                for key, entry in entries.items():
                    self._entries.setdefault(key, entry)
            self._indexes.add(index.name)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str) -> Entry | None:
        """The entry of ``key``, or None (after :meth:`refresh`, others' new shards count)."""
        return self._entries.get(key)

    def read(self, key: str) -> np.ndarray:
        """The ``(L, T, D)`` float32 features of ``key`` (a copy; the mapping is closed again).

        Raises:
            KeyError: ``key`` is not stored.
        """
        entry = self._entries[key]
        fd = self._fds.get(entry.data)
        if fd is None:
            fd = self._fds[entry.data] = os.open(entry.data, os.O_RDONLY)
        count = int(np.prod(entry.shape))
        start = entry.offset * self.dtype.itemsize
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        length = start - aligned + count * self.dtype.itemsize
        if count == 0:
            return np.zeros(entry.shape, dtype=np.float32)
        mapped = mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=aligned)
        try:
            view = np.frombuffer(mapped, dtype=self.dtype, count=count, offset=start - aligned)
            out = view.astype(np.float32).reshape(entry.shape)
            del view  # the mapping cannot close while a view exports its buffer
        finally:
            mapped.close()
        return out

    def close(self) -> None:
        """Close the shard files held open for reading."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the namespace's writer lock (waiting for another writer, and saying so); on
        entry, remove what killed writers left and take in shards committed meanwhile.
        Re-entrant within this object (a second ``flock`` of the file would wait for itself)."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"[FeatureCache] - waiting for another process writing {self.directory}", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            self._remove_leftovers()
            self.refresh()
            self._lock_depth = 1
            yield
        finally:
            self._lock_depth = 0
            os.close(fd)  # releases the flock

    def _remove_leftovers(self) -> None:
        """Temporary files and data files without an index: only a killed writer leaves them,
        and no other writer runs while this process holds the lock."""
        indexed = {json.loads(p.read_text(encoding="utf-8"))["data"] for p in self.directory.glob("shard-*.json")}
        for path in self.directory.iterdir():
            orphan = path.name.startswith("shard-") and path.suffix == ".bin" and path.name not in indexed
            if path.name.startswith(_TMP_PREFIX) or orphan:
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def writer(self, shard_bytes: int = 256 << 20) -> Iterator[ShardWriter]:
        """A :class:`ShardWriter` under the lock; shards commit every ``shard_bytes`` and at the
        end. On an error the uncommitted shard is dropped; committed ones stay valid."""
        with self.locked():
            writer = ShardWriter(self, shard_bytes)
            try:
                yield writer
                writer.commit()
            finally:
                writer.discard()
            self.refresh()


class ShardWriter:
    """Appends entries to a temporary shard and commits it (data renamed, then its index).
    Made by :meth:`FeatureStore.writer`, which holds the lock."""

    def __init__(self, store: FeatureStore, shard_bytes: int) -> None:
        self.store, self.shard_bytes = store, shard_bytes
        self._handle = None
        self.committed = 0

    def _open(self) -> None:
        self._name = f"shard-{uuid.uuid4().hex}"
        self._tmp = self.store.directory / f"{_TMP_PREFIX}{self._name}.bin"
        self._handle = open(self._tmp, "wb")
        self._entries: dict[str, list[int]] = {}
        self._offset = 0

    def add(self, key: str, features: np.ndarray) -> None:
        """Append ``key``'s ``(L, T, D)`` features (converted to the store's dtype)."""
        if features.ndim != 3:
            raise ValueError(f"features of {key} must be (layers, frames, dim), got shape {features.shape}")
        if key in self.store or (self._handle is not None and key in self._entries):
            return
        if self._handle is None:
            self._open()
        data = np.ascontiguousarray(features, dtype=self.store.dtype)
        self._handle.write(data.tobytes())
        self._entries[key] = [self._offset, *data.shape]
        self._offset += data.size
        if self._offset * self.store.dtype.itemsize >= self.shard_bytes:
            self.commit()

    def commit(self) -> None:
        """Make the current shard visible to every reader (no-op when it is empty)."""
        if self._handle is None:
            return
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None
        data = self.store.directory / f"{self._name}.bin"
        os.replace(self._tmp, data)
        record = {"data": data.name, "entries": self._entries}
        _atomic_write(self.store.directory / f"{self._name}.json", json.dumps(record).encode())
        self.committed += 1
        self.store.refresh()

    def discard(self) -> None:
        """Drop the uncommitted shard, if any."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            self._tmp.unlink(missing_ok=True)
