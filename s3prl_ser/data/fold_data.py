"""One fold's train/dev/test utterances and their loaders: the data builder of both stages.

Fold N tests on Session N; its train list is split into train and dev by s3prl's seeded
80/20 (``split: superb``, the SUPERB split) or by holding out one session's two speakers
(``split: speaker``). Only dev ever selects checkpoints.

Training batches come from :class:`~s3prl_ser.data.sampler.GlobalBatchSampler`:
``train_batch_size`` is the global batch in both stages, and a resumed run re-enters an
epoch at any batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from s3prl_ser.config import ConfigError, require
from s3prl_ser.data.emotion_dataset import EmotionDataset, collate, read_fold_meta
from s3prl_ser.data.folds import SUPERB_SPLIT_SEED, speaker_disjoint_split, superb_train_dev_split, utterance_speaker
from s3prl_ser.data.protocol import FoldProtocol, digest
from s3prl_ser.data.sampler import GlobalBatchSampler, epoch_seed

__all__ = ["SPLITS", "FoldData", "load_fold_data", "train_loader", "eval_loader"]

SPLITS = ("superb", "speaker")


@dataclass(frozen=True)
class FoldData:
    """The three splits of one fold; ``class_names[i]`` is class id ``i``; ``split`` names the
    rule that carved dev out of the training sessions; ``protocol`` identifies all of it
    (what stage 1 records in its checkpoints)."""

    fold: str
    class_names: list[str]
    train: EmotionDataset
    dev: EmotionDataset
    test: EmotionDataset
    split: str
    protocol: FoldProtocol


def load_fold_data(datarc: Mapping[str, Any], fold: str, *, where: str = "datarc", read_audio: bool = True) -> FoldData:
    """Read ``META_DIR/SessionN/{train,test}_meta_data.json`` and split train into train/dev.

    Args:
        datarc: the ``datarc`` config section (``root``, ``meta_data``, ``split``,
            ``valid_ratio``, ``dev_session``, ``min_samples``).
        fold: ``fold1`` .. ``fold5``.
        where: the section's name in error messages.
        read_audio: ``False`` serves empty waveforms (text models need only utterance names).

    Audio is read lazily, or all at once by the loaders when ``datarc.pre_load`` is set.

    Raises:
        ConfigError: root/meta_data unset, or an unknown split rule.
        FileNotFoundError: meta data or audio files are missing (named in the message).
        ValueError: the train and test meta data define different labels.
    """
    root = Path(require(datarc, "root", where, f"pass -o config.{where}.root=IEMOCAP_ROOT"))
    meta_dir = Path(require(datarc, "meta_data", where, f"pass -o config.{where}.meta_data=META_DIR"))
    train_meta, test_meta = read_fold_meta(meta_dir, fold, root)
    split = datarc.get("split", "superb")
    paths = [item["path"] for item in train_meta.items]
    if split == "superb":
        valid_ratio = datarc.get("valid_ratio", 0.2)
        train_idx, dev_idx = superb_train_dev_split(len(paths), valid_ratio)
        rule = {"rule": split, "valid_ratio": valid_ratio, "seed": SUPERB_SPLIT_SEED}
    elif split == "speaker":
        train_idx, dev_idx = speaker_disjoint_split(paths, fold, datarc.get("dev_session"))
        rule = {"rule": split, "dev_sessions": sorted({utterance_speaker(paths[i])[:5] for i in dev_idx})}
    else:
        raise ConfigError(f"{where}.split must be one of {', '.join(SPLITS)}, got {split!r}")
    options = dict(min_samples=datarc.get("min_samples", 400), read_audio=read_audio)
    protocol = FoldProtocol(
        fold=fold,
        corpus=digest(f"{item['path']}\t{item['label']}" for item in train_meta.items + test_meta.items),
        split={**rule, "file_order": train_meta.file_order},
        dev=digest(paths[i] for i in dev_idx),
        sizes={"train": len(train_idx), "dev": len(dev_idx), "test": len(test_meta.items)},
    )
    return FoldData(
        fold=fold,
        class_names=train_meta.class_names,
        train=EmotionDataset(root, train_meta, indices=train_idx, **options),
        dev=EmotionDataset(root, train_meta, indices=dev_idx, **options),
        test=EmotionDataset(root, test_meta, **options),
        split=split,
        protocol=protocol,
    )


def train_loader(
    dataset: EmotionDataset,
    datarc: Mapping[str, Any],
    *,
    seed: int,
    epoch: int,
    start: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """This process's ``(wavs, labels, names)`` batches of epoch ``epoch`` from global batch
    ``start`` on; ``datarc.train_batch_size`` is the global batch."""
    if datarc.get("pre_load", False):
        dataset.preload()
    sampler = GlobalBatchSampler(
        len(dataset),
        datarc.get("train_batch_size", 4),
        seed=seed,
        epoch=epoch,
        rank=rank,
        world_size=world_size,
        start=start,
    )
    # A private generator: making the loader (its worker seeds) must not draw from the
    # global RNG, which drives dropout and is restored on resume.
    return DataLoader(
        dataset,
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
        batch_size=datarc.get("eval_batch_size", 4),
        shuffle=False,
        num_workers=datarc.get("num_workers", 4),
        collate_fn=collate,
    )
