"""One fold's train/dev/test utterances and a training order that a resumed run can re-enter.

The datasets are the ``emotion_ecapa`` expert's: fold N tests on Session N; its train list is
split into train and dev by s3prl's seeded 80/20 (``split: superb``) or by holding out one
session (``split: speaker``). Only dev ever selects checkpoints.

Training order: epoch ``e`` visits a permutation drawn from a private generator seeded with
``seed + e``, sharded across processes like ``DistributedSampler``. It depends on nothing but
(seed, epoch, rank, world size), so a run resumed at update ``s`` rebuilds exactly the batches
the killed run would have seen next, without replaying the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch.utils.data import DataLoader, Sampler

from s3prl_ser.data.emotion_dataset import EmotionDataset, collate, read_fold_meta
from s3prl_ser.data.folds import speaker_disjoint_split, superb_train_dev_split

__all__ = ["FoldData", "load_fold_data", "EpochSampler", "batches_per_epoch", "train_loader", "eval_loader"]


@dataclass(frozen=True)
class FoldData:
    """The three splits of one fold; ``class_names[i]`` is class id ``i``."""

    fold: str
    class_names: list[str]
    train: EmotionDataset
    dev: EmotionDataset
    test: EmotionDataset


def load_fold_data(datarc: Mapping[str, Any], fold: str, *, read_audio: bool = True) -> FoldData:
    """Read ``META_DIR/SessionN/{train,test}_meta_data.json`` and split train into train/dev.

    ``read_audio=False`` serves empty waveforms (text fine-tuning needs only utterance names).

    Raises:
        FileNotFoundError: meta data or audio files are missing (named in the message).
        ValueError: the train and test meta data define different labels.
    """
    root, meta_dir = Path(datarc["root"]), Path(datarc["meta_data"])
    train_meta, test_meta = read_fold_meta(meta_dir, fold, root)
    if datarc["split"] == "superb":
        train_idx, dev_idx = superb_train_dev_split(len(train_meta.items), datarc["valid_ratio"])
    else:
        paths = [item["path"] for item in train_meta.items]
        train_idx, dev_idx = speaker_disjoint_split(paths, fold, datarc["dev_session"])
    options = dict(pre_load=datarc["pre_load"], min_samples=datarc["min_samples"], read_audio=read_audio)
    return FoldData(
        fold=fold,
        class_names=train_meta.class_names,
        train=EmotionDataset(root, train_meta, indices=train_idx, **options),
        dev=EmotionDataset(root, train_meta, indices=dev_idx, **options),
        test=EmotionDataset(root, test_meta, **options),
    )


class EpochSampler(Sampler[int]):
    """One process's share of epoch ``epoch``'s permutation, from sample ``start`` on.

    Args:
        size: dataset length.
        seed, epoch: the permutation is ``randperm(size)`` under ``seed + epoch``.
        rank, world_size: this process takes positions ``rank, rank + world_size, ...`` of the
            permutation, padded by wrapping around to a multiple of ``world_size``.
        start: samples of this process's share to skip (a resumed run's position).
    """

    def __init__(self, size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        if size < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.seed, self.epoch = size, seed, epoch
        self.rank, self.world_size, self.start = rank, world_size, start

    def _share(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        total = math.ceil(self.size / self.world_size) * self.world_size
        order = (order * math.ceil(total / self.size))[:total]
        return order[self.rank :: self.world_size][self.start :]

    def __iter__(self) -> Iterator[int]:
        return iter(self._share())

    def __len__(self) -> int:
        return max(0, math.ceil(self.size / self.world_size) - self.start)


def batches_per_epoch(size: int, batch_size: int, world_size: int = 1) -> int:
    """Micro-batches one process sees per epoch (the last one may be short)."""
    return math.ceil(math.ceil(size / world_size) / batch_size)


def train_loader(
    dataset: EmotionDataset, datarc: Mapping[str, Any], *, seed: int, epoch: int,
    skip_batches: int = 0, rank: int = 0, world_size: int = 1,
) -> DataLoader:
    """Batches of epoch ``epoch`` after the first ``skip_batches``: ``(wavs, labels, names)`` tuples."""
    batch_size = datarc["train_batch_size"]
    sampler = EpochSampler(len(dataset), seed, epoch, rank, world_size, start=skip_batches * batch_size)
    # A private generator: creating the loader must not draw from the global RNG, which
    # drives dropout and is restored on resume.
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=datarc["num_workers"],
        collate_fn=collate, generator=torch.Generator().manual_seed(seed + epoch),
    )


def eval_loader(dataset: EmotionDataset, datarc: Mapping[str, Any]) -> DataLoader:
    """The whole split in order (evaluation runs in one process)."""
    return DataLoader(
        dataset, batch_size=datarc["eval_batch_size"], shuffle=False,
        num_workers=datarc["num_workers"], collate_fn=collate,
    )
