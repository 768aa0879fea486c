"""Class-balanced training batches (loss.balanced_sampler): balanced, seeded, resumable, DDP-split."""

from pathlib import Path

import numpy as np
import pytest

from s3prl_ser.data.emotion_dataset import EmotionDataset, MetaData
from s3prl_ser.data.fold_data import train_loader
from s3prl_ser.data.sampler import ClassBalancedBatchSampler, GlobalBatchSampler

# 4 classes at 60 %, 25 %, 10 % and 5 % of 400 utterances
LABELS = [0] * 240 + [1] * 100 + [2] * 40 + [3] * 20


def _shares(batches: list[list[int]]) -> np.ndarray:
    drawn = np.bincount([LABELS[i] for batch in batches for i in batch], minlength=4)
    return drawn / drawn.sum()


def test_batches_are_class_balanced_against_the_imbalanced_source():
    balanced = [b for epoch in range(5) for b in ClassBalancedBatchSampler(LABELS, 16, seed=1, epoch=epoch)]
    plain = [b for epoch in range(5) for b in GlobalBatchSampler(len(LABELS), 16, seed=1, epoch=epoch)]
    # 2000 draws: each class's share within 0.04 of 1/4 (binomial std about 0.01)
    assert np.abs(_shares(balanced) - 0.25).max() < 0.04
    assert _shares(plain) == pytest.approx([0.6, 0.25, 0.1, 0.05], abs=1e-9)  # every utterance once
    # same epoch length as the plain sampler; the rarest utterances recur within an epoch
    one = list(ClassBalancedBatchSampler(LABELS, 16, seed=1))
    assert len(one) == len(list(GlobalBatchSampler(len(LABELS), 16, seed=1))) == 25
    drawn = [i for batch in one for i in batch]
    assert len(drawn) == 400 and len(set(i for i in drawn if LABELS[i] == 3)) <= 20 < sum(LABELS[i] == 3 for i in drawn)


def test_deterministic_per_seed_and_epoch():
    def draw(**kw):
        return list(ClassBalancedBatchSampler(LABELS, 16, **kw))

    assert draw(seed=2, epoch=3) == draw(seed=2, epoch=3)
    assert draw(seed=2, epoch=3) != draw(seed=2, epoch=4)
    assert draw(seed=2, epoch=3) != draw(seed=3, epoch=3)


def test_resume_and_processes_see_the_same_global_batches():
    whole = list(ClassBalancedBatchSampler(LABELS, 16, seed=5, epoch=1))
    assert list(ClassBalancedBatchSampler(LABELS, 16, seed=5, epoch=1, start=9)) == whole[9:]
    assert len(ClassBalancedBatchSampler(LABELS, 16, seed=5, epoch=1, start=9)) == len(whole) - 9
    parts = [list(ClassBalancedBatchSampler(LABELS, 16, seed=5, epoch=1, rank=r, world_size=4)) for r in range(4)]
    assert [a + b + c + d for a, b, c, d in zip(*parts)] == whole
    lengths = np.random.default_rng(0).integers(100, 1000, len(LABELS)).tolist()
    bucketed = list(ClassBalancedBatchSampler(LABELS, 16, seed=5, epoch=1, lengths=lengths))
    assert sorted(i for b in bucketed for i in b) == sorted(i for b in whole for i in b)  # same draw, regrouped
    assert list(ClassBalancedBatchSampler(LABELS, 16, seed=5, epoch=1, lengths=lengths, start=3)) == bucketed[3:]


def test_utterances_without_a_category_are_refused():
    with pytest.raises(ValueError, match="2 of 4 have none"):
        ClassBalancedBatchSampler([0, -1, 1, -1], 2)


def test_train_loader_balanced():
    items = [{"path": f"u{i}.wav", "label": "ab"[label > 0]} for i, label in enumerate([0] * 54 + [1] * 6)]
    data = EmotionDataset("/corpus", MetaData(Path("m.json"), {"a": 0, "b": 1}, items), read_audio=False)
    datarc = {"train_batch_size": 6, "num_workers": 0}

    def labels(**kw):
        return [label for _, batch, _ in train_loader(data, datarc, seed=0, epoch=0, **kw) for label in batch]

    assert sum(labels()) == 6  # every utterance once
    assert 20 <= sum(labels(balanced=True)) <= 40  # about half of the 60 drawn
    assert labels(balanced=True) == labels(balanced=True)
