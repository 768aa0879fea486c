"""Utterance datasets over a fold's lists, from any of the three sources a ``META_DIR`` can be:

* s3prl's emotion meta data (``SessionN/{train,test}_meta_data.json``, ``{"labels": ...,
  "meta_data": [...]}``; what ``prepare_iemocap`` writes and SUPERB runs used);
* a corpus-neutral manifest (``manifest.json``, :mod:`s3prl_ser.data.manifest`);
* an EmoBox corpus directory (``fold_N/<corpus>_{train,test}_fold_N.jsonl``), read as is.

:func:`read_fold_lists` reads any of them into the same :class:`FoldLists`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from s3prl_ser.config import expert_default
from s3prl_ser.data.attributes import Scale, check_attributes, normalise, parse_scale
from s3prl_ser.data.audio import load_audio
from s3prl_ser.data.folds import FOLDS, check_fold, fold_session
from s3prl_ser.data.manifest import MANIFEST_NAME, LabelRules, Manifest, read_manifest
from s3prl_ser.toy.builtin_corpus import MANIFEST_NAME as BUILTIN_MANIFEST

__all__ = [
    "MetaData",
    "FoldLists",
    "read_meta_data",
    "read_fold_meta",
    "read_fold_lists",
    "available_folds",
    "corpus_folds",
    "IEMOCAP_NAME",
    "BUILTIN_NAME",
    "SESSION_CORPORA",
    "session_corpus_name",
    "apply_label_rules",
    "EmotionDataset",
    "utterance_key",
    "outside_root",
    "collate",
]


IEMOCAP_NAME = "IEMOCAP"
BUILTIN_NAME = "builtin (synthetic IEMOCAP layout)"
SESSION_CORPORA = (IEMOCAP_NAME, BUILTIN_NAME)  # s3prl's meta data: fold N tests on SessionN


def session_corpus_name(root: str | os.PathLike) -> str:
    """What reports call the corpus of s3prl's meta data at ``root``: the built-in synthetic
    corpus when ``root`` holds its manifest (:mod:`s3prl_ser.toy.builtin_corpus`), else IEMOCAP.

    Example:
        >>> session_corpus_name("/nonexistent")
        'IEMOCAP'
    """
    return BUILTIN_NAME if (Path(root) / BUILTIN_MANIFEST).is_file() else IEMOCAP_NAME


class MetaData:
    """A validated meta-data file: class names by id, the utterance list, the order the
    list was written in (``file_order``, as ``prepare_iemocap`` records it; ``None`` when the
    file does not say, e.g. stock s3prl's JSON) and the declared scale of each continuous
    attribute its items carry (``attribute_scale``, ``{}`` when none; :mod:`s3prl_ser.data.attributes`).

    Example:
        >>> MetaData(Path("train.json"), {"sad": 1, "neu": 0}, [{"path": "a.wav", "label": "sad"}]).class_names
        ['neu', 'sad']
    """

    def __init__(
        self,
        path: Path,
        labels: dict[str, int],
        items: list[dict],
        file_order: str | None = None,
        attribute_scale: dict[str, Scale] | None = None,
    ) -> None:
        self.path = path
        self.labels = labels
        self.items = items
        self.file_order = file_order
        self.attribute_scale = dict(attribute_scale or {})

    @property
    def class_names(self) -> list[str]:
        """Class names ordered by class id."""
        return [name for name, _ in sorted(self.labels.items(), key=lambda kv: kv[1])]


def outside_root(path: str) -> bool:
    """Whether a meta-data path leaves the corpus root: absolute, or ``..`` leads out of it
    (judged on the text, so a corpus of symbolic links stays inside).

    Example:
        >>> outside_root("a/../b.wav"), outside_root("a/../../b.wav"), outside_root("/data/b.wav")
        (False, True, True)
    """
    normal = os.path.normpath(path)
    return os.path.isabs(normal) or normal == os.pardir or normal.startswith(os.pardir + os.sep)


def _check_items(
    path: Path,
    labels: dict[str, int],
    items: list,
    root: str | os.PathLike | None,
    allow_outside_root: bool,
    scale: dict[str, Scale] | None = None,
) -> None:
    """Raise naming ``path`` and the item for a malformed item, a path outside the root, an
    unknown label (``null`` is accepted from an item that carries attributes), attributes
    outside their declared ``scale`` or (with ``root``) missing audio files."""
    for index, item in enumerate(items):
        where = f"{path}: meta_data[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f'{where} is not an object {{"path": ..., "label": ...}}: {item!r}')
        if not isinstance(item.get("path"), str) or not item["path"]:
            raise ValueError(f"{where} has no 'path' (the audio file, relative to the corpus root): {item!r}")
        if not allow_outside_root and outside_root(item["path"]):
            raise ValueError(
                f"{where}: path {item['path']!r} is outside the corpus root{f' {root}' if root else ''} "
                "(absolute, or .. leads out of it); if that is intended, set the datarc key allow_outside_root: true"
            )
        if item.get("label") is None and item.get("attributes"):
            pass  # attributes, no usable category (e.g. MSP-Podcast's X/O): categorical runs drop it
        elif item.get("label") not in labels:
            raise ValueError(
                f"{path}: utterance {item.get('path')} has unknown label {item.get('label')!r} "
                f"(known: {', '.join(labels)})"
            )
        check_attributes(item, scale or {}, f"{path}: utterance {item['path']}")
    if not items:
        raise ValueError(f"{path}: lists no utterances")
    if root is not None:
        missing = [item["path"] for item in items if not (Path(root) / item["path"]).is_file()]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise FileNotFoundError(f"{path}: {len(missing)} audio file(s) missing under {root}: {shown}")


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
            index is named), a path outside the root, a label outside ``labels``, a malformed
            ``attribute_scale``, or an attribute it does not declare or a value outside it.
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
    scale = parse_scale(data.get("attribute_scale"), str(path))
    _check_items(path, labels, items, root, allow_outside_root, scale)
    return MetaData(path, dict(labels), list(items), data.get("file_order"), scale)


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
    if train.attribute_scale != test.attribute_scale:
        raise ValueError(f"{train.path} and {test.path} declare different attribute scales")
    return train, test


@dataclass(frozen=True)
class FoldLists:
    """One fold's lists from any source: ``train`` and ``test``, ``dev`` when the source lists
    one (then no rule carves dev out of train), and the corpus's identity.

    Attributes:
        corpus: the corpus's name (for s3prl's meta data, :func:`session_corpus_name`).
        protocol: how the folds were made, for reports.
        official_test: the name of the corpus's official test set, or None (cross-validation).
        num_folds: how many folds the source has.
        kind: ``s3prl`` (emotion meta data), ``manifest`` or ``emobox``.

    Example:
        >>> meta = MetaData(Path("m.json"), {"a": 0}, [{"path": "u.wav", "label": "a"}])
        >>> FoldLists(meta, meta, None, "toy", "one fold", "test", 1, "manifest").official_test
        'test'
    """

    train: MetaData
    test: MetaData
    dev: MetaData | None
    corpus: str
    protocol: str
    official_test: str | None
    num_folds: int
    kind: str


def _source_kind(meta_dir: Path) -> str:
    from s3prl_ser.data.corpora.emobox import is_emobox_dir

    if (meta_dir / MANIFEST_NAME).is_file():
        return "manifest"
    if is_emobox_dir(meta_dir):
        return "emobox"
    return "s3prl"


def _read_manifest_source(meta_dir: Path) -> Manifest:
    from s3prl_ser.data.corpora.emobox import read_emobox

    return read_manifest(meta_dir) if _source_kind(meta_dir) == "manifest" else read_emobox(meta_dir)


def available_folds(meta_dir: str | os.PathLike) -> list[str]:
    """The folds ``meta_dir`` defines, in order (``fold1``.. for s3prl's ``SessionN`` directories).

    Raises:
        FileNotFoundError: ``meta_dir`` defines none.
    """
    meta_dir = Path(meta_dir)
    if _source_kind(meta_dir) != "s3prl":
        return list(_read_manifest_source(meta_dir).folds)
    sessions = sorted(
        int(p.parent.name[7:]) for p in meta_dir.glob("Session*/train_meta_data.json") if p.parent.name[7:].isdigit()
    )
    if not sessions:
        raise FileNotFoundError(
            f"{meta_dir}: no folds (neither manifest.json, EmoBox fold_N lists, nor s3prl SessionN meta data)"
        )
    return [f"fold{n}" for n in sessions]


def corpus_folds(meta_dir: str | os.PathLike) -> list[str]:
    """:func:`available_folds`, or IEMOCAP's five when ``meta_dir`` defines none yet (the run
    itself then names what is missing)."""
    try:
        return available_folds(meta_dir)
    except FileNotFoundError:
        return list(FOLDS)


def _relabel(items: Sequence[dict], rules: LabelRules) -> list[dict]:
    """``items`` relabelled by ``rules``, dropped ones left out; an item without a category
    (label null, attributes only) is kept as it is."""
    kept = []
    for item in items:
        label = None if item.get("label") is None else rules.apply(item["label"])
        if label is not None:
            kept.append(dict(item, label=label))
        elif item.get("label") is None:
            kept.append(item)
    return kept


def apply_label_rules(meta: MetaData, rules: LabelRules) -> MetaData:
    """``meta`` with ``rules`` applied: utterances relabelled or dropped, classes renumbered in
    their order (no rules: ``meta`` itself, untouched).

    Raises:
        ValueError: nothing is left, naming the file.
    """
    if not rules:
        return meta
    classes = rules.classes(meta.class_names)
    items = _relabel(meta.items, rules)
    if not items:
        raise ValueError(f"{meta.path}: the label rules {rules.to_dict()} leave no utterance")
    labels = {name: i for i, name in enumerate(classes)}
    return MetaData(meta.path, labels, items, meta.file_order, meta.attribute_scale)


def read_fold_lists(
    meta_dir: str | os.PathLike,
    fold: str,
    root: str | os.PathLike,
    *,
    allow_outside_root: bool = False,
    label_rules: LabelRules | None = None,
) -> FoldLists:
    """``fold``'s lists from ``meta_dir``, whichever source it is (see the module docstring),
    with ``label_rules`` applied; every audio file must exist under ``root``.

    s3prl's meta data come back exactly as :func:`read_fold_meta` reads them (no dev list:
    the SUPERB rule carves it, as in s3prl).

    Raises:
        FileNotFoundError: no such fold (the ones there are listed), or missing audio files.
        ValueError: malformed lists (file and item named), or labels that differ between the
            train and test meta data.
    """
    meta_dir, rules = Path(meta_dir), label_rules or LabelRules()
    check_fold(fold)
    kind = _source_kind(meta_dir)
    if kind == "s3prl":
        train, test = read_fold_meta(meta_dir, fold, root, allow_outside_root=allow_outside_root)
        train, test = apply_label_rules(train, rules), apply_label_rules(test, rules)
        folds = len(list(meta_dir.glob("Session*/train_meta_data.json")))
        name = session_corpus_name(root)
        return FoldLists(train, test, None, name, "leave-one-session-out (s3prl meta data)", None, folds, kind)
    manifest = _read_manifest_source(meta_dir)
    if fold not in manifest.folds:
        raise FileNotFoundError(
            f"no {fold} in {manifest.source}: the corpus {manifest.corpus} has {', '.join(manifest.folds)}"
        )
    lists = manifest.folds[fold]
    classes = rules.classes(manifest.labels)
    labels = {name: i for i, name in enumerate(classes)}

    def meta(ids: tuple[str, ...], split: str) -> MetaData:
        items = _relabel(manifest.rows(ids), rules)
        source = Path(f"{manifest.source}#{fold}/{split}")
        if not items:
            raise ValueError(f"{source}: no utterance left after the label rules {rules.to_dict()}")
        _check_items(source, labels, items, root, allow_outside_root, manifest.attribute_scale)
        return MetaData(source, labels, items, attribute_scale=manifest.attribute_scale)

    dev = meta(lists.dev, "dev") if lists.dev is not None else None
    return FoldLists(
        meta(lists.train, "train"),
        meta(lists.test, "test"),
        dev,
        manifest.corpus,
        manifest.protocol,
        manifest.official_test,
        len(manifest.folds),
        kind,
    )


class EmotionDataset(Dataset):
    """Utterances of one meta-data file.

    Items are ``(waveform float32 ndarray (T,), target, utterance name)``, the tuple s3prl's
    emotion expert yields, so the runner's loop applies unchanged. Without ``attributes`` the
    target is the class id (an int). With ``attributes`` it is ``(class id or -1 when the item
    has no category, float32 ndarray (A,))``: the requested attributes in that order, normalised
    to ``[0, 1]`` on the declared scale (:func:`~s3prl_ser.data.attributes.normalise`), NaN
    where the item does not know one.

    Args:
        root: corpus root the meta-data paths are relative to.
        meta: a :class:`MetaData` (or its path).
        indices: optional subset (e.g. the train or dev part of a fold).
        pre_load: read all audio at construction (s3prl's ``pre_load``).
        min_samples: shortest accepted clip after resampling to 16 kHz (an upstream's
            receptive field); shorter clips raise an error naming the file. None:
            ``datarc.min_samples`` of ``emotion_ecapa``'s ``config.yaml``.
        read_audio: ``False`` yields an empty waveform instead of reading the file, for
            models that only use the utterance name (the transcript-based text encoder).
        attributes: continuous attributes to serve beside the class id, each declared in
            ``meta.attribute_scale``.

    Items of a manifest carry their ``id`` (the utterance name) and may be segments
    (``start``/``end``) or one channel of a file, cut when read; :meth:`key` names exactly
    what an item reads.

    Example:
        >>> items = [{"id": "t1", "path": "talk.wav", "label": "a", "start": 1.0, "end": 2.5}]
        >>> data = EmotionDataset("/corpus", MetaData(Path("m.json"), {"a": 0}, items), read_audio=False)
        >>> data[0][1:], data.key(0)
        ((0, 't1'), 'talk.wav@1-2.5')
        >>> rated = {"path": "b.wav", "label": None, "attributes": {"arousal": 4.0}}
        >>> meta = MetaData(Path("m.json"), {"a": 0}, [rated], attribute_scale={"arousal": (1, 5), "valence": (1, 5)})
        >>> EmotionDataset("/corpus", meta, read_audio=False, attributes=["arousal", "valence"])[0][1]
        (-1, array([0.75,  nan], dtype=float32))
    """

    def __init__(
        self,
        root: str | os.PathLike,
        meta: MetaData | str | os.PathLike,
        *,
        indices: Sequence[int] | None = None,
        pre_load: bool = False,
        min_samples: int | None = None,
        read_audio: bool = True,
        attributes: Sequence[str] = (),
    ) -> None:
        self.root = Path(root)
        self.meta = meta if isinstance(meta, MetaData) else read_meta_data(meta, root)
        self.items = [self.meta.items[i] for i in indices] if indices is not None else list(self.meta.items)
        self.min_samples = expert_default("datarc", "min_samples") if min_samples is None else min_samples
        self.read_audio = read_audio
        self.class_names = self.meta.class_names
        self.attributes = tuple(attributes)
        undeclared = [name for name in self.attributes if name not in self.meta.attribute_scale]
        if undeclared:
            declared = ", ".join(self.meta.attribute_scale) or "none"
            raise ValueError(
                f"{self.meta.path}: no attribute_scale for {', '.join(undeclared)} (it declares: {declared})"
            )
        self.attribute_scale = [self.meta.attribute_scale[name] for name in self.attributes]
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
        item = self.items[index]
        wav = load_audio(
            self.root / item["path"],
            min_samples=self.min_samples,
            start=item.get("start"),
            end=item.get("end"),
            channel=item.get("channel"),
        )
        return wav.numpy()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int | tuple[int, np.ndarray], str]:
        item = self.items[index]
        wav = self._cache[index] if self._cache is not None else self._load(index)
        label = self.meta.labels[item["label"]] if item.get("label") is not None else -1
        if not self.attributes:
            return wav, label, self.name(index)
        values = normalise(self._raw_attributes(item), self.attribute_scale).astype(np.float32)
        return wav, (label, values), self.name(index)

    def _raw_attributes(self, item: dict) -> np.ndarray:
        known = item.get("attributes") or {}
        return np.array([np.nan if known.get(n) is None else known[n] for n in self.attributes], dtype=np.float64)

    def name(self, index: int) -> str:
        """The utterance's name: the manifest's ``id``, else the file name's stem (s3prl's)."""
        item = self.items[index]
        return item.get("id") or Path(item["path"]).stem

    def key(self, index: int) -> str:
        """:func:`utterance_key` of item ``index`` (e.g. for caches keyed by utterance)."""
        return utterance_key(self.items[index])

    def labels(self) -> list[int]:
        """Class id of every item, in order, -1 for one without a category (no audio is read)."""
        return [self.meta.labels[item["label"]] if item.get("label") is not None else -1 for item in self.items]

    def attribute_values(self) -> np.ndarray:
        """float64 ndarray (N, A): the requested attributes of every item on the corpus's own
        scale (not normalised), NaN where unknown; (N, 0) when none are requested."""
        return np.array([self._raw_attributes(item) for item in self.items], dtype=np.float64).reshape(
            len(self.items), len(self.attributes)
        )


def utterance_key(item: dict) -> str:
    """A stable identifier of the audio an item reads: its path, plus the segment and channel
    when the item has them (a plain s3prl item's key is its path).

    Example:
        >>> utterance_key({"path": "a.wav"}), utterance_key({"path": "a.wav", "start": 1.5, "end": 3, "channel": 2})
        ('a.wav', 'a.wav@1.5-3#ch2')
    """
    key = item["path"]
    if item.get("start") is not None or item.get("end") is not None:
        key += f"@{item.get('start') or 0:g}-{item.get('end') if item.get('end') is not None else 'end'}"
    if item.get("channel") is not None:
        key += f"#ch{item['channel']}"
    return key


def collate(samples: list[tuple[np.ndarray, int, str]]) -> tuple[tuple, ...]:
    """s3prl's emotion collate: ``(wavs, labels, names)`` as tuples of variable-length items."""
    return tuple(zip(*samples))
