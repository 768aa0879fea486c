"""The on-disk part of the feature cache: one directory per namespace, immutable shards, a lock.

A namespace (:class:`FeatureStore`) holds the features of one upstream configuration
(:mod:`s3prl_ser.feature_cache.speech` derives its name from everything that changes the
features). Layout::

    <namespace>/spec.json           what the namespace stores (checked on every open)
    <namespace>/shard-<id>.bin      raw little-endian float16/float32 arrays, one after another
    <namespace>/shard-<id>.json     {"data": "shard-<id>.bin", "sha256": hex, "entries": {key: [offset, L, T, D]}}
    <namespace>/.lock               held (flock) by the one process that writes

A shard is written to temporary files, then its data and last its index are renamed into
place: the index is the commit, so a reader sees a shard whole or not at all, and a writer
killed at any moment leaves only temporary files or a data file without an index, which the
next writer removes. Shards are never modified after that, so readers take no lock; writers
take the lock, so two processes sharing a cache never write the same entries twice.
Reads map only the entry's bytes (``mmap``) and copy them out, so a long run does not keep
every page it ever read resident.

**Damage is a miss, never wrong features.** An index is used only if it parses, names its own
data file (``shard-<id>.json`` -> ``shard-<id>.bin``: never another shard, a path outside the
directory or a symlink), and its entries tile that file exactly; a shard's data is used only
after its SHA-256 (recorded in the index at commit) matches, checked once per process when one
of its keys is first looked up. Anything else is ignored with a :class:`CacheDamageWarning`
naming the file: its utterances count as not stored, so they are extracted again, and the
next writer removes the damaged index and its data file (never a file outside the directory).
A full disk while writing raises :class:`CacheSpaceError`; the shards committed before stay
valid and the partial one is removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import mmap
import os
import re
import stat
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s3prl_ser.fileio import AtomicFile, atomic_write_bytes, remove_temporaries, sha256_file

__all__ = [
    "DTYPES",
    "CacheDamageWarning",
    "CacheSpaceError",
    "CacheSpecMismatchError",
    "Entry",
    "FeatureStore",
    "ShardWriter",
]

logger = logging.getLogger(__name__)

DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
SPEC_FILE = "spec.json"
LOCK_FILE = ".lock"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class CacheSpecMismatchError(ValueError):
    """A namespace directory whose ``spec.json`` is not the spec it is opened with."""


class CacheSpaceError(OSError):
    """The features to extract do not fit on the cache's file system (found before writing,
    or by a full disk while writing)."""


class CacheDamageWarning(UserWarning):
    """A shard that is not what its writer committed; its entries are extracted again."""


@dataclass(frozen=True)
class Entry:
    """Where one utterance's features lie: ``shape`` ``(L, T, D)`` at element ``offset`` of ``data``."""

    data: Path
    offset: int
    shape: tuple[int, int, int]


@contextlib.contextmanager
def _space_errors(directory: Path) -> Iterator[None]:
    """A full disk (or quota) while writing ``directory`` as :class:`CacheSpaceError`."""
    try:
        yield
    except OSError as error:
        if error.errno not in _NO_SPACE or isinstance(error, CacheSpaceError):
            raise
        raise CacheSpaceError(
            f"feature cache {directory}: the disk filled up while writing ({error.strerror}); the shards "
            "committed before are kept and the partial one was removed: free space, point feature_cache.dir "
            "(--feature_cache_dir) elsewhere, or run without the cache (--no_feature_cache)",
        ) from error


@dataclass
class _Shard:
    """One committed shard as this process sees it: its index, data file, recorded digest and entries."""

    index: Path
    data: Path
    sha256: str
    entries: dict[str, Entry]
    verified: bool = False


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
        spec_path = self.directory / SPEC_FILE
        with _space_errors(self.directory):
            self.directory.mkdir(parents=True, exist_ok=True)
            if not spec_path.exists():
                atomic_write_bytes(spec_path, json.dumps(self.spec, indent=1, sort_keys=True).encode())
        recorded = json.loads(spec_path.read_text(encoding="utf-8"))
        if recorded != self.spec:
            raise CacheSpecMismatchError(
                f"{spec_path} describes other features than this run's ({recorded} != {self.spec}); "
                f"remove {self.directory} (the cache is rebuilt on demand)"
            )
        self._entries: dict[str, Entry] = {}
        self._shards: dict[Path, _Shard] = {}  # by data file
        self._indexes: set[str] = set()  # index file names looked at, usable or not
        self._damaged: set[str] = set()  # index file names that the next writer removes
        self._fds: dict[Path, int] = {}
        self._lock_depth = 0
        self.refresh()

    def refresh(self) -> None:
        """Take in the shards other processes committed since the last look (a damaged index
        is ignored with a :class:`CacheDamageWarning`)."""
        for index in sorted(self.directory.glob("shard-*.json")):
            if index.name in self._indexes:
                continue
            self._indexes.add(index.name)
            try:
                shard = self._read_index(index)
            except (OSError, ValueError) as error:  # ValueError: JSON and encoding errors too
                self._ignore(index, str(error))
                continue
            self._shards[shard.data] = shard
            for key, entry in shard.entries.items():
                self._entries.setdefault(key, entry)

    def _read_index(self, index: Path) -> _Shard:
        """The shard an index describes, checked against its data file's name, type and size.

        Raises:
            ValueError: the index is not one a writer commits, or its data file does not fit it.
            OSError: either file cannot be read.
        """
        record = json.loads(index.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or set(record) != {"data", "sha256", "entries"}:
            raise ValueError("not a shard index (keys data, sha256, entries)")
        name, digest, entries = record["data"], record["sha256"], record["entries"]
        if name != f"{index.stem}.bin":
            raise ValueError(f"its data file must be {index.stem}.bin in {self.directory}, not {name!r}")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ValueError(f"sha256 {digest!r} is not a SHA-256 hex digest")
        valid = lambda v: isinstance(v, list) and len(v) == 4 and all(type(i) is int and i >= 0 for i in v)  # noqa: E731
        if not isinstance(entries, dict) or not entries or not all(map(valid, entries.values())):
            raise ValueError("entries must map keys to [offset, layers, frames, dim] (integers >= 0)")
        data = self.directory / name
        info = os.lstat(data)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{data} is not a regular file (a symlink?)")
        end = 0  # the writers lay entries end to end, in order
        for offset, *shape in sorted(entries.values()):
            if offset != end:
                raise ValueError("its entries overlap or leave gaps")
            end += int(np.prod(shape))
        if info.st_size != end * self.dtype.itemsize:
            raise ValueError(f"{data} holds {info.st_size} bytes, its index {end * self.dtype.itemsize}")
        return _Shard(index, data, digest, {key: Entry(data, o, tuple(shape)) for key, (o, *shape) in entries.items()})

    def _ignore(self, index: Path, why: str) -> None:
        warnings.warn(
            f"feature cache: ignoring {index}: {why}; its utterances are extracted again",
            CacheDamageWarning,
            stacklevel=3,
        )
        self._damaged.add(index.name)

    def _verified(self, entry: Entry) -> bool:
        """Whether ``entry``'s shard matches its recorded SHA-256 (hashed once per process);
        a shard that does not is dropped: its keys fall back to another shard or count as missing."""
        shard = self._shards[entry.data]
        if shard.verified:
            return True
        try:
            actual = sha256_file(shard.data)
        except OSError as error:
            actual = f"unreadable ({error})"
        if actual == shard.sha256:
            shard.verified = True
            return True
        self._ignore(shard.index, f"{shard.data} has SHA-256 {actual}, its index recorded {shard.sha256}")
        del self._shards[shard.data]
        for key in shard.entries:
            if self._entries.get(key) in (None, shard.entries[key]):
                self._entries.pop(key, None)
                other = next((s.entries[key] for s in self._shards.values() if key in s.entries), None)
                if other is not None:
                    self._entries[key] = other
        return False

    def __contains__(self, key: str) -> bool:
        return self.lookup(key) is not None

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str) -> Entry | None:
        """The entry of ``key``, or None (after :meth:`refresh`, others' new shards count).
        The first lookup of a shard's key in this process checks the shard's SHA-256."""
        entry = self._entries.get(key)
        while entry is not None and not self._verified(entry):
            entry = self._entries.get(key)
        return entry

    def read(self, key: str) -> np.ndarray:
        """The ``(L, T, D)`` float32 features of ``key`` (a copy; the mapping is closed again).

        Raises:
            KeyError: ``key`` is not stored (or only in a shard that failed its SHA-256).
        """
        entry = self.lookup(key)
        if entry is None:
            raise KeyError(key)
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
                logger.info(f"[FeatureCache] - waiting for another process writing {self.directory}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            self.refresh()
            self._remove_leftovers()
            self._lock_depth = 1
            yield
        finally:
            self._lock_depth = 0
            os.close(fd)  # releases the flock

    def _remove_leftovers(self) -> None:
        """Temporary files, data files without a usable index, and the damaged indexes this
        process found: only a killed writer or damage leaves them, and no other writer runs
        while this process holds the lock. Only ``shard-*`` and temporary names in the
        directory itself are removed, whatever a damaged index says."""
        for name in self._damaged:
            (self.directory / name).unlink(missing_ok=True)
            self._indexes.discard(name)
        self._damaged.clear()
        remove_temporaries(self.directory)
        usable = {shard.data.name for shard in self._shards.values()}
        for path in self.directory.iterdir():
            if path.name.startswith("shard-") and path.suffix == ".bin" and path.name not in usable:
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def writer(self, shard_bytes: int = 256 << 20) -> Iterator[ShardWriter]:
        """A :class:`ShardWriter` under the lock; shards commit every ``shard_bytes`` and at the
        end. On an error the uncommitted shard is dropped; committed ones stay valid.

        Raises:
            CacheSpaceError: the disk (or a quota) filled up while writing.
        """
        with self.locked(), _space_errors(self.directory):
            writer = ShardWriter(self, shard_bytes)
            try:
                yield writer
                writer.commit()
            finally:
                writer.discard()
            self.refresh()


class ShardWriter:
    """Appends entries to a temporary shard, hashing its bytes, and commits it (data renamed,
    then its index with the SHA-256). Made by :meth:`FeatureStore.writer`, which holds the lock."""

    def __init__(self, store: FeatureStore, shard_bytes: int) -> None:
        self.store, self.shard_bytes = store, shard_bytes
        self._handle = None
        self.committed = 0

    def _open(self) -> None:
        self._name = f"shard-{uuid.uuid4().hex}"
        self._out = AtomicFile(self.store.directory / f"{self._name}.bin")
        self._handle = self._out.handle
        self._digest = hashlib.sha256()
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
        data = np.ascontiguousarray(features, dtype=self.store.dtype).tobytes()
        self._handle.write(data)
        self._digest.update(data)
        self._entries[key] = [self._offset, *features.shape]
        self._offset += features.size
        if self._offset * self.store.dtype.itemsize >= self.shard_bytes:
            self.commit()

    def commit(self) -> None:
        """Make the current shard visible to every reader (no-op when it is empty)."""
        if self._handle is None:
            return
        self._handle = None
        self._out.commit()
        data = self._out.path
        record = {"data": data.name, "sha256": self._digest.hexdigest(), "entries": self._entries}
        try:
            atomic_write_bytes(self.store.directory / f"{self._name}.json", json.dumps(record).encode())
        except BaseException:
            data.unlink(missing_ok=True)  # without its index it was never committed
            raise
        self.committed += 1
        self.store.refresh()
        if data in self.store._shards:  # hashed as written: this process need not read it back
            self.store._shards[data].verified = True

    def discard(self) -> None:
        """Drop the uncommitted shard, if any."""
        if self._handle is not None:
            self._handle = None
            with contextlib.suppress(OSError):  # a full disk fails the final flush; the file goes anyway
                self._out.discard()
