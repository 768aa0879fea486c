"""Utterance datasets over s3prl emotion meta data (``{"labels": ..., "meta_data": [...]}``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from s3prl_ser.data.audio import load_audio
from s3prl_ser.data.folds import fold_session

__all__ = ["MetaData", "read_meta_data", "read_fold_meta", "EmotionDataset", "collate"]


class MetaData:
    """A validated meta-data file: class names by id, the utterance list, and the order the
    list was written in (``file_order``, as ``prepare_iemocap`` records it; ``None`` when the
    file does not say, e.g. stock s3prl's JSON)."""

    def __init__(self, path: Path, labels: dict[str, int], items: list[dict], file_order: str | None = None) -> None:
        self.path = path
        self.labels = labels
        self.items = items
        self.file_order = file_order

    @property
    def class_names(self) -> list[str]:
        """Class names ordered by class id."""
        return [name for name, _ in sorted(self.labels.items(), key=lambda kv: kv[1])]


def _outside_root(path: str) -> bool:
    """Whether a meta-data path leaves the corpus root: absolute, or ``..`` leads out of it
    (judged on the text, so a corpus of symbolic links stays inside)."""
    normal = os.path.normpath(path)
    return os.path.isabs(normal) or normal == os.pardir or normal.startswith(os.pardir + os.sep)


def read_meta_data(
    path: str | os.PathLike, root: str | os.PathLike | None = None, *, allow_outside_root: bool = False
) -> MetaData:
    """Read and validate a meta-data JSON; with ``root``, also check every audio file exists.

    Args:
        path: the JSON file.
        root: the corpus root its paths are relative to.
        allow_outside_root: accept absolute paths and paths that ``..`` leads out of the root
            (refused by default: stock meta data hold paths inside it).

    Raises:
        FileNotFoundError: the JSON, or audio files it lists (the first few are named).
        ValueError: malformed JSON, an item that is not an object or has no ``path`` (its
            index is named), a path outside the root, or a label outside ``labels``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"meta data not found: {path} (run `python -m s3prl_ser.cli.prepare_iemocap ROOT --out META_DIR`)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        labels, items = data["labels"], data["meta_data"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not an s3prl emotion meta-data file ({error})") from error
    if not isinstance(labels, dict) or not isinstance(items, list):
        raise ValueError(f"{path}: not an s3prl emotion meta-data file (labels must be an object, meta_data a list)")
    ids = sorted(labels.values())
    if ids != list(range(len(ids))):
        raise ValueError(f"{path}: label ids must be 0..{len(ids) - 1}, got {labels}")
    for index, item in enumerate(items):
        where = f"{path}: meta_data[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f'{where} is not an object {{"path": ..., "label": ...}}: {item!r}')
        if not isinstance(item.get("path"), str) or not item["path"]:
            raise ValueError(f"{where} has no 'path' (the audio file, relative to the corpus root): {item!r}")
        if not allow_outside_root and _outside_root(item["path"]):
            raise ValueError(
                f"{where}: path {item['path']!r} is outside the corpus root{f' {root}' if root else ''} "
                "(absolute, or .. leads out of it); if that is intended, set the datarc key allow_outside_root: true"
            )
        if item.get("label") not in labels:
            raise ValueError(
                f"{path}: utterance {item.get('path')} has unknown label {item.get('label')!r} "
                f"(known: {', '.join(labels)})"
            )
    if not items:
        raise ValueError(f"{path}: lists no utterances")
    if root is not None:
        missing = [item["path"] for item in items if not (Path(root) / item["path"]).is_file()]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise FileNotFoundError(f"{path}: {len(missing)} audio file(s) missing under {root}: {shown}")
    return MetaData(path, dict(labels), list(items), data.get("file_order"))


def read_fold_meta(
    meta_dir: str | os.PathLike, fold: str, root: str | os.PathLike, *, allow_outside_root: bool = False
) -> tuple[MetaData, MetaData]:
    """The train and test meta data of ``fold`` (``META_DIR/SessionN/{train,test}_meta_data.json``);
    ``allow_outside_root`` as in :func:`read_meta_data`.

    Raises:
        FileNotFoundError: no meta data for that fold (the folds ``meta_dir`` has are listed).
        ValueError: the two files define different labels, or any :func:`read_meta_data` error.
    """
    meta_dir, session = Path(meta_dir), fold_session(fold)
    if not (meta_dir / session).is_dir():
        present = sorted(p.parent.name for p in meta_dir.glob("Session*/train_meta_data.json"))
        folds = [name.replace("Session", "fold") for name in present]
        raise FileNotFoundError(
            f"no meta data for {fold}: {meta_dir / session} does not exist ({meta_dir} has "
            f"{', '.join(folds) or 'no folds'}; fold N tests on Session N)"
        )
    train = read_meta_data(meta_dir / session / "train_meta_data.json", root, allow_outside_root=allow_outside_root)
    test = read_meta_data(meta_dir / session / "test_meta_data.json", root, allow_outside_root=allow_outside_root)
    if train.labels != test.labels:
        raise ValueError(f"{train.path} and {test.path} define different labels")
    return train, test


class EmotionDataset(Dataset):
    """Utterances of one meta-data file.

    Items are ``(waveform float32 ndarray (T,), class id, utterance name)``, the tuple s3prl's
    emotion expert yields, so the runner's loop applies unchanged.

    Args:
        root: corpus root the meta-data paths are relative to.
        meta: a :class:`MetaData` (or its path).
        indices: optional subset (e.g. the train or dev part of a fold).
        pre_load: read all audio at construction (s3prl's ``pre_load``).
        min_samples: shortest accepted clip after resampling to 16 kHz (an upstream's
            receptive field); shorter clips raise an error naming the file.
        read_audio: ``False`` yields an empty waveform instead of reading the file, for
            models that only use the utterance name (the transcript-based text encoder).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        meta: MetaData | str | os.PathLike,
        *,
        indices: Sequence[int] | None = None,
        pre_load: bool = False,
        min_samples: int = 400,
        read_audio: bool = True,
    ) -> None:
        self.root = Path(root)
        self.meta = meta if isinstance(meta, MetaData) else read_meta_data(meta, root)
        self.items = [self.meta.items[i] for i in indices] if indices is not None else list(self.meta.items)
        self.min_samples = min_samples
        self.read_audio = read_audio
        self.class_names = self.meta.class_names
        self._cache: list[np.ndarray] | None = None
        if pre_load:
            self.preload()

    def preload(self) -> None:
        """Read every waveform into memory now (once; later calls do nothing)."""
        if self._cache is None and self.read_audio:
            desc = f"loading {self.meta.path.parent.name}/{self.meta.path.name}"
            self._cache = [self._load(i) for i in tqdm(range(len(self)), desc=desc, leave=False)]

    def _load(self, index: int) -> np.ndarray:
        if not self.read_audio:
            return np.zeros(0, dtype=np.float32)
        wav = load_audio(self.root / self.items[index]["path"], min_samples=self.min_samples)
        return wav.numpy()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, str]:
        item = self.items[index]
        wav = self._cache[index] if self._cache is not None else self._load(index)
        return wav, self.meta.labels[item["label"]], Path(item["path"]).stem

    def labels(self) -> list[int]:
        """Class id of every item, in order (no audio is read)."""
        return [self.meta.labels[item["label"]] for item in self.items]


def collate(samples: list[tuple[np.ndarray, int, str]]) -> tuple[tuple, ...]:
    """s3prl's emotion collate: ``(wavs, labels, names)`` as tuples of variable-length items."""
    return tuple(zip(*samples))
