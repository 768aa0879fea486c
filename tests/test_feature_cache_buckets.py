"""Length-bucketed training batches (datarc.bucket_by_length): less padding, same guarantees."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from s3prl_ser.data.fold_data import train_loader
from s3prl_ser.data.sampler import GlobalBatchSampler, padding_fraction


def _lengths(n: int = 200, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(16000, 16000 * 10, n).tolist()


def test_buckets_cut_padding_and_keep_what_plain_batches_use():
    lengths = _lengths()
    for epoch in range(3):
        plain = list(GlobalBatchSampler(200, 8, seed=1, epoch=epoch))
        bucketed = list(GlobalBatchSampler(200, 8, seed=1, epoch=epoch, lengths=lengths))
        assert sorted(i for b in bucketed for i in b) == sorted(i for b in plain for i in b)
        assert all(len(b) == 8 for b in bucketed) and len(bucketed) == len(plain)
        assert padding_fraction(bucketed, lengths) < padding_fraction(plain, lengths) / 5
    assert list(GlobalBatchSampler(200, 8, seed=1, lengths=lengths)) != list(
        GlobalBatchSampler(200, 8, seed=1, epoch=1, lengths=lengths)
    )


def test_buckets_resume_mid_epoch_and_split_across_processes():
    lengths = _lengths(101)
    whole = list(GlobalBatchSampler(101, 4, seed=3, epoch=2, lengths=lengths))
    assert list(GlobalBatchSampler(101, 4, seed=3, epoch=2, start=7, lengths=lengths)) == whole[7:]
    halves = [list(GlobalBatchSampler(101, 4, seed=3, epoch=2, rank=r, world_size=2, lengths=lengths)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == whole


def test_train_loader_buckets_cropped_lengths_and_logs_the_padding(caplog):
    clips = [(np.zeros(n, dtype=np.float32), 0, f"u{i}") for i, n in enumerate(_lengths(64, seed=1))]
    datarc = {"train_batch_size": 8, "num_workers": 0, "max_seconds": 5, "bucket_by_length": True}
    caplog.set_level(logging.INFO, logger="s3prl_ser")
    batches = list(train_loader(clips, datarc, seed=0, epoch=0))
    assert all(len(wav) <= 5 * 16000 for wavs, _, _ in batches for wav in wavs)
    printed = caplog.text
    assert "epoch 0: length-bucketed batches" in printed and "random batches" in printed
    with pytest.raises(Exception, match="bucket_by_length must be true or false"):
        train_loader(clips, {**datarc, "bucket_by_length": "yes"}, seed=0, epoch=0)
