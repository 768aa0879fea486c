"""One fold's train/dev/test utterances and their loaders: the data builder of both stages.

For IEMOCAP, fold N tests on Session N; other corpora list their folds (a manifest or EmoBox's
lists). A fold's train list is split into train and dev by s3prl's seeded 80/20 (``split:
superb``, the SUPERB split) or by holding out speakers (``split: speaker``), unless the corpus
lists its own dev set, which is then used as is. Only dev ever selects checkpoints.

Training batches come from :class:`~s3prl_ser.data.sampler.GlobalBatchSampler`:
``train_batch_size`` is the global batch in both stages, and a resumed run re-enters an
epoch at any batch. Memory is bounded by clip length, so training clips longer than
``datarc.max_seconds`` are randomly cropped (:class:`RandomCrop`) and dev/test clips longer
than ``datarc.max_eval_seconds`` are refused when the fold is loaded.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from s3prl_ser.config import ConfigError, expert_default, require
from s3prl_ser.data.attributes import Scale
from s3prl_ser.data.audio import SAMPLE_RATE, AudioError, audio_file_problem
from s3prl_ser.data.emotion_dataset import EmotionDataset, MetaData, collate, read_fold_lists, utterance_key
from s3prl_ser.data.folds import (
    SUPERB_SPLIT_SEED,
    is_deployment,
    speaker_disjoint_split,
    speaker_holdout_split,
    superb_train_dev_split,
    utterance_speaker,
)
from s3prl_ser.data.manifest import LabelRules
from s3prl_ser.data.protocol import FoldProtocol, digest
from s3prl_ser.data.sampler import ClassBalancedBatchSampler, GlobalBatchSampler, epoch_seed

__all__ = ["SPLITS", "FoldData", "load_fold_data", "RandomCrop", "train_loader", "eval_loader"]

SPLITS = ("superb", "speaker")
_SHOWN = 5  # shared utterances named in an overlap error

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldData:
    """The three splits of one fold; ``class_names[i]`` is class id ``i``; ``split`` names the
    rule that carved dev out of the training sessions; ``protocol`` identifies all of it
    (what stage 1 records in its checkpoints); ``attribute_scale`` is the declared scale of
    each requested attribute, in the requested order (with none requested: of every attribute
    the corpus declares)."""

    fold: str
    class_names: list[str]
    train: EmotionDataset
    dev: EmotionDataset
    test: EmotionDataset
    split: str
    protocol: FoldProtocol
    attribute_scale: dict[str, Scale] = field(default_factory=dict)


def _usable(meta: MetaData, categories: bool, attributes: Sequence[str], fold: str) -> MetaData:
    """``meta`` without the items a run cannot learn from or score: with ``categories``, those
    without a category (label null); with ``attributes`` only, those knowing none of them.
    ``meta`` itself when nothing is dropped (so categorical runs see their lists unchanged)."""

    def known(item: dict) -> bool:
        values = item.get("attributes") or {}
        return any(values.get(name) is not None for name in attributes)

    items = [item for item in meta.items if (item.get("label") is not None if categories else known(item))]
    if len(items) == len(meta.items):
        return meta
    why = "without a category" if categories else f"with none of {', '.join(attributes)}"
    logger.info(
        "%s: %d of the %d utterances of %s are %s and left out",
        fold,
        len(meta.items) - len(items),
        len(meta.items),
        meta.path,
        why,
    )
    if not items:
        raise ValueError(f"{meta.path}: no utterance left for {fold}: all {len(meta.items)} are {why}")
    return MetaData(meta.path, meta.labels, items, meta.file_order, meta.attribute_scale)


def load_fold_data(
    datarc: Mapping[str, Any],
    fold: str,
    *,
    where: str = "datarc",
    read_audio: bool = True,
    categories: bool = True,
    attributes: Sequence[str] = (),
) -> FoldData:
    """Read a fold's lists from ``META_DIR`` and, when the corpus lists no dev set, split train
    into train/dev by the ``split`` rule.

    ``META_DIR`` is s3prl's emotion meta data (``SessionN/{train,test}_meta_data.json``), a
    manifest or an EmoBox corpus directory
    (:func:`~s3prl_ser.data.emotion_dataset.read_fold_lists`). A fold whose source lists a dev
    set uses it and never a rule.

    Args:
        datarc: the ``datarc`` config section (``root``, ``meta_data``, ``split``,
            ``valid_ratio``, ``dev_session``, ``dev_speakers``, ``labels``, ``min_samples``,
            ``allow_outside_root``).
        fold: ``fold1`` .. ``foldN``, or ``deploy``: the deployment pool
            (:mod:`s3prl_ser.data.full_data_pool`), dev carved from it by the rule, no test set.
        where: the section's name in error messages.
        read_audio: ``False`` serves empty waveforms (text models need only utterance names).
        categories: the run learns the categories: utterances without one (label null) are
            left out (counted in the log).
        attributes: continuous attributes the run learns (:mod:`s3prl_ser.data.attributes`);
            the datasets then serve ``(class id or -1, normalised values)`` targets. An
            attributes-only run leaves out utterances that know none of them.

    Train, dev and test must not share an utterance: neither a key
    (:func:`~s3prl_ser.data.emotion_dataset.utterance_key`) nor the audio it reads once paths
    are resolved (symbolic links, ``..``: the same file under two names or ids). Speakers in
    both the test set and train or dev, where the lists record speakers, are logged as a
    warning naming them: the fold's scores are then not speaker-independent.

    With ``read_audio``, the header of every audio file of the fold (train, dev and test) is
    checked now (:func:`~s3prl_ser.data.audio.audio_file_problem`), so a bad file stops the run
    before training rather than when its split is first read. Audio is read lazily, or all at
    once by the loaders when ``datarc.pre_load`` is set.

    Raises:
        ConfigError: root/meta_data unset, an unknown split rule, bad label rules, or a
            non-boolean ``allow_outside_root``.
        FileNotFoundError: meta data or audio files are missing (named in the message).
        AudioError: audio files that cannot be used (the first few named, with the cause).
        ValueError: malformed meta data (file and item named), the train and test meta data
            define different labels, two splits share an utterance (the lists and the
            utterances named), neither categories nor attributes are asked for, an attribute
            the corpus does not declare (``META_DIR`` and what it declares named), or a list
            left without utterances.
    """
    root = Path(require(datarc, "root", where, f"pass -o config.{where}.root=CORPUS_ROOT"))
    meta_dir = Path(require(datarc, "meta_data", where, f"pass -o config.{where}.meta_data=META_DIR"))
    outside = datarc.get("allow_outside_root", False)
    if not isinstance(outside, bool):
        raise ConfigError(f"{where}.allow_outside_root must be true or false, got {outside!r}")
    rules = LabelRules.from_config(datarc.get("labels"), f"{where}.labels")
    if is_deployment(fold):  # every fold's utterances, no test set (s3prl_ser.data.full_data_pool)
        from s3prl_ser.data.full_data_pool import read_full_data_pool

        lists = read_full_data_pool(meta_dir, root, allow_outside_root=outside, label_rules=rules)
    else:
        lists = read_fold_lists(meta_dir, fold, root, allow_outside_root=outside, label_rules=rules)
    if not categories and not attributes:
        raise ValueError(f"{fold}: a run must learn the categories, attributes, or both")
    declared = lists.train.attribute_scale
    undeclared = [name for name in attributes if name not in declared]
    if undeclared:
        raise ValueError(
            f"{meta_dir}: the corpus declares no attribute_scale for {', '.join(undeclared)} (it declares: "
            f"{', '.join(declared) or 'no attributes'}); prepare it with attribute labels or change targets.attributes"
        )
    attribute_scale = {name: declared[name] for name in attributes} if attributes else dict(declared)
    lists = dataclasses.replace(
        lists,
        train=_usable(lists.train, categories, attributes, fold),
        test=_usable(lists.test, categories, attributes, fold) if lists.test.items else lists.test,
        dev=_usable(lists.dev, categories, attributes, fold) if lists.dev is not None else None,
    )
    train_meta, test_meta = lists.train, lists.test
    if lists.dev is not None and train_meta.labels != lists.dev.labels:
        raise ValueError(f"{train_meta.path} and {lists.dev.path} define different labels")
    min_samples = datarc.get("min_samples", expert_default("datarc", "min_samples"))
    _seconds(datarc, "max_seconds", where)  # applied per epoch by train_loader
    max_eval = _seconds(datarc, "max_eval_seconds", where)
    split = datarc.get("split", "superb")
    if split not in SPLITS:
        raise ConfigError(f"{where}.split must be one of {', '.join(SPLITS)}, got {split!r}")
    items = train_meta.items
    paths = [item["path"] for item in items]
    if lists.dev is not None:
        # The corpus's own dev list: no rule, so no random split, whatever ``split`` says.
        train_idx, dev_idx = list(range(len(items))), []
        dev_items = lists.dev.items
        rule: dict[str, Any] = {"rule": "given"}
    elif split == "superb":
        valid_ratio = datarc.get("valid_ratio", 0.2)
        train_idx, dev_idx = superb_train_dev_split(len(paths), valid_ratio)
        rule = {"rule": split, "valid_ratio": valid_ratio, "seed": SUPERB_SPLIT_SEED}
    elif lists.kind == "s3prl":  # IEMOCAP meta data: s3prl's speaker field is the dialog owner
        train_idx, dev_idx = speaker_disjoint_split(paths, fold, datarc.get("dev_session"))
        rule = {"rule": split, "dev_sessions": sorted({utterance_speaker(paths[i])[:5] for i in dev_idx})}
    else:
        speakers = [item.get("speaker") for item in items]
        train_idx, dev_idx = speaker_holdout_split(
            speakers, datarc.get("valid_ratio", 0.2), dev_speakers=datarc.get("dev_speakers")
        )
        rule = {"rule": split, "dev_speakers": sorted({speakers[i] for i in dev_idx})}
    if lists.dev is None:
        dev_items = [items[i] for i in dev_idx]
    dev_source = lists.dev.path if lists.dev is not None else f"{train_meta.path} ({rule['rule']} rule)"
    named = {
        "train": (str(train_meta.path), [items[i] for i in train_idx]),
        "dev": (str(dev_source), dev_items),
        "test": (str(test_meta.path), test_meta.items),
    }
    _check_disjoint(root, fold, named)
    _warn_shared_speakers(fold, named, lists.kind)
    if read_audio:
        # Training clips are cropped to max_seconds (train_loader); dev (decided from here on)
        # and test clips are scored whole, so longer ones are refused up front.
        train_items = [items[i] for i in train_idx]
        _check_audio(root, fold, train_items, dev_items + test_meta.items, min_samples, max_eval)
    options = dict(min_samples=min_samples, read_audio=read_audio, attributes=tuple(attributes))
    everything = items + (lists.dev.items if lists.dev is not None else []) + test_meta.items
    split_record = {**rule, "file_order": train_meta.file_order}
    if rules:  # recorded only when set, so meta data without rules keep their records
        split_record["labels"] = rules.to_dict()
    protocol = FoldProtocol(
        fold=fold,
        # Keys are paths for s3prl's meta data (same digests as before); segments add their times.
        corpus=digest(f"{utterance_key(item)}\t{item.get('label')}" for item in everything),
        split=split_record,
        dev=digest(utterance_key(item) for item in dev_items),
        sizes={"train": len(train_idx), "dev": len(dev_items), "test": len(test_meta.items)},
        corpus_name=lists.corpus,
        class_names=train_meta.class_names,
        num_folds=lists.num_folds,
        official_test=lists.official_test,
    )
    if lists.dev is not None:
        dev = EmotionDataset(root, lists.dev, **options)
    else:
        dev = EmotionDataset(root, train_meta, indices=dev_idx, **options)
    return FoldData(
        fold=fold,
        class_names=train_meta.class_names,
        train=EmotionDataset(root, train_meta, indices=train_idx, **options),
        dev=dev,
        test=EmotionDataset(root, test_meta, **options),
        split=rule["rule"],
        protocol=protocol,
        attribute_scale=attribute_scale,
    )


def _check_disjoint(root: Path, fold: str, splits: Mapping[str, tuple[str, list[dict]]]) -> None:
    """Raise a ValueError naming both lists and the first few utterances when two of ``splits``
    (``name -> (source, items)``) share an utterance key, or the same audio (file, segment and
    channel) once ``root / path`` is resolved with :func:`os.path.realpath`."""

    def resolved(item: dict) -> str:
        return utterance_key({**item, "path": os.path.realpath(root / item["path"])})

    keys = {name: {utterance_key(item) for item in items} for name, (_, items) in splits.items()}
    real = {name: {resolved(item): item["path"] for item in items} for name, (_, items) in splits.items()}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        shared = sorted(keys[a] & keys[b])
        same_file = sorted(
            f"{real[a][key]} = {real[b][key]}" for key in set(real[a]) & set(real[b]) if real[a][key] != real[b][key]
        )
        if shared or same_file:
            examples = (shared + same_file)[:_SHOWN]
            raise ValueError(
                f"{fold}: {a} ({splits[a][0]}) and {b} ({splits[b][0]}) share {len(shared) + len(same_file)} "
                f"utterance(s), e.g. {'; '.join(examples)}: an utterance tested or selected on must not be "
                "trained on (the same key, or the same audio file under two names)"
            )


def _warn_shared_speakers(fold: str, splits: Mapping[str, tuple[str, list[dict]]], kind: str) -> None:
    """Log a warning naming the speakers of the test set who are also in train or dev; speakers
    are the items' ``speaker`` field, or for s3prl's IEMOCAP meta data the utterance's own
    (:func:`~s3prl_ser.data.folds.utterance_speaker`); unknown speakers are not compared."""

    def speakers(items: list[dict]) -> set[str]:
        found = set()
        for item in items:
            if kind == "s3prl":  # s3prl's speaker field is the dialog owner, not the speaker
                try:
                    found.add(utterance_speaker(item["path"]))
                except ValueError:
                    continue
            elif item.get("speaker"):
                found.add(str(item["speaker"]))
        return found

    tested = speakers(splits["test"][1])
    shared = sorted(tested & (speakers(splits["train"][1]) | speakers(splits["dev"][1])))
    if shared:
        logger.warning(
            "%s: %d of the %d test speakers (%s) are also in train or dev (%s): %s; this fold's scores are "
            "not speaker-independent",
            fold,
            len(shared),
            len(tested),
            splits["test"][0],
            splits["train"][0],
            ", ".join(shared),
        )


def _seconds(datarc: Mapping[str, Any], key: str, where: str) -> float | None:
    """``datarc[key]``: a positive number of seconds, or None (no limit).

    Raises:
        ConfigError: anything else.
    """
    value = datarc.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise ConfigError(f"{where}.{key} must be a positive number of seconds or null, got {value!r}")
    return value


def _check_audio(
    root: Path, fold: str, train: list[dict], evaluated: list[dict], min_samples: int, max_eval: float | None
) -> None:
    """Raise :class:`AudioError` naming the first few files (paths relative to ``root``) whose
    header shows them (or their segment or channel) unusable, and how many there are;
    ``evaluated`` items (dev, test) may also not be longer than ``max_eval`` seconds."""
    limit = None if max_eval is None else int(max_eval * SAMPLE_RATE)
    bad = [
        f"{item['path']}: {problem}"
        for items, max_samples in ((train, None), (evaluated, limit))
        for item in items
        if (
            problem := audio_file_problem(
                root / item["path"],
                min_samples=min_samples,
                max_samples=max_samples,
                start=item.get("start"),
                end=item.get("end"),
                channel=item.get("channel"),
            )
        )
    ]
    if bad:
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        total = len(train) + len(evaluated)
        raise AudioError(f"{root}: {len(bad)} of the {total} audio files of {fold} cannot be used: {shown}")


class RandomCrop(Dataset):
    """A training view of ``dataset`` whose clips longer than ``max_samples`` are cut to a window
    of that length at a random offset, drawn from ``(seed, epoch, index)``: the same crop in
    every worker and after a resume, another one each epoch. Memory then stays bounded by
    ``max_samples`` whatever the corpus holds.

    Example:
        >>> import numpy as np
        >>> clips = [(np.arange(10, dtype=np.float32), 0, "long"), (np.arange(3, dtype=np.float32), 1, "short")]
        >>> view = RandomCrop(clips, max_samples=4, seed=0, epoch=0)
        >>> len(view[0][0]), view[1][0].tolist(), view[0][0].tolist() == RandomCrop(clips, 4, 0, 0)[0][0].tolist()
        (4, [0.0, 1.0, 2.0], True)
    """

    def __init__(self, dataset: Sequence, max_samples: int, seed: int, epoch: int) -> None:
        self.dataset, self.max_samples, self.seed, self.epoch = dataset, max_samples, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, str]:
        wav, label, name = self.dataset[index]
        if len(wav) > self.max_samples:
            start = int(np.random.default_rng([self.seed, self.epoch, index]).integers(len(wav) - self.max_samples + 1))
            wav = wav[start : start + self.max_samples]
        return wav, label, name


def train_loader(
    dataset: EmotionDataset,
    datarc: Mapping[str, Any],
    *,
    seed: int,
    epoch: int,
    start: int = 0,
    rank: int = 0,
    world_size: int = 1,
    balanced: bool = False,
) -> DataLoader:
    """This process's ``(wavs, labels, names)`` batches of epoch ``epoch`` from global batch
    ``start`` on; ``datarc.train_batch_size`` is the global batch, and clips are cropped to
    ``datarc.max_seconds`` (:class:`RandomCrop`) when it is set. ``datarc.bucket_by_length``
    batches similar lengths together (:func:`~s3prl_ser.data.sampler.length_buckets`).
    ``balanced`` draws class-balanced batches with replacement
    (:class:`~s3prl_ser.data.sampler.ClassBalancedBatchSampler`)."""
    if datarc.get("pre_load", False):
        dataset.preload()
    max_seconds = datarc.get("max_seconds")
    source = dataset if max_seconds is None else RandomCrop(dataset, int(max_seconds * SAMPLE_RATE), seed, epoch)
    # Length buckets need every clip's length (as cropped): free with pre_load, one read of each file without.
    bucketed = datarc.get("bucket_by_length", False)
    if not isinstance(bucketed, bool):
        raise ConfigError(f"datarc.bucket_by_length must be true or false, got {bucketed!r}")
    sampler = (ClassBalancedBatchSampler if balanced else GlobalBatchSampler)(
        dataset.labels() if balanced else len(dataset),
        datarc.get("train_batch_size", expert_default("datarc", "train_batch_size")),
        seed=seed,
        epoch=epoch,
        rank=rank,
        world_size=world_size,
        start=start,
        lengths=[len(source[i][0]) for i in range(len(source))] if bucketed else None,
    )
    # A private generator: making the loader (its worker seeds) must not draw from the
    # global RNG, which drives dropout and is restored on resume.
    return DataLoader(
        source,
        batch_sampler=sampler,
        num_workers=datarc.get("num_workers", 4),
        collate_fn=collate,
        generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)),
    )


def eval_loader(dataset: EmotionDataset, datarc: Mapping[str, Any]) -> DataLoader:
    """The whole split in order, ``datarc.eval_batch_size`` at a time (one process)."""
    if datarc.get("pre_load", False):
        dataset.preload()
    return DataLoader(
        dataset,
        batch_size=datarc.get("eval_batch_size", expert_default("datarc", "eval_batch_size")),
        shuffle=False,
        num_workers=datarc.get("num_workers", 4),
        collate_fn=collate,
    )
