"""Memory bounded by clip length: training clips cropped to ``max_seconds`` (deterministic under
the seed, another window each epoch), in both stages' one data builder."""

import shutil

import numpy as np
import pytest
import soundfile as sf

from s3prl_ser.data.fold_data import RandomCrop, load_fold_data, train_loader

pytestmark = pytest.mark.usefixtures("one_thread")


def test_random_crop_windows():
    clips = [(np.arange(100, dtype=np.float32), 0, "long"), (np.arange(30, dtype=np.float32), 1, "short")]
    crops = {epoch: RandomCrop(clips, 40, seed=7, epoch=epoch)[0][0] for epoch in range(4)}
    for wav in crops.values():
        assert len(wav) == 40 and np.array_equal(np.diff(wav), np.ones(39))  # one contiguous window
    assert len({int(wav[0]) for wav in crops.values()}) > 1  # another window each epoch
    assert np.array_equal(RandomCrop(clips, 40, seed=7, epoch=2)[0][0], crops[2])  # the same on a resume
    assert np.array_equal(RandomCrop(clips, 40, seed=7, epoch=0)[1][0], clips[1][0])  # short clips whole


def test_training_batches_are_cropped_but_evaluation_is_not(mini_corpus, mini_meta, tmp_path):
    corpus, meta = tmp_path / "corpus", tmp_path / "meta"
    shutil.copytree(mini_corpus, corpus)
    shutil.copytree(mini_meta, meta)
    datarc = {"root": str(corpus), "meta_data": str(meta), "num_workers": 0, "train_batch_size": 4}
    first = load_fold_data(datarc, "fold1")
    five_seconds = (0.1 * np.random.default_rng(0).standard_normal(16000 * 5)).astype("float32")
    for split in (first.train, first.dev):  # one 5 s clip in each
        sf.write(corpus / split.items[0]["path"], five_seconds, 16000)
    data = load_fold_data({**datarc, "max_seconds": 0.5}, "fold1")

    def lengths(**extra):
        loader = train_loader(data.train, {**datarc, **extra}, seed=3, epoch=0)
        return sorted(len(wav) for wavs, _, _ in loader for wav in wavs)

    whole, cropped = lengths(), lengths(max_seconds=0.5)
    assert max(whole) == 80000 and max(cropped) == 8000 and len(cropped) == len(whole)
    assert cropped == lengths(max_seconds=0.5)  # deterministic under the seed
    assert len(data.dev[0][0]) == 80000  # dev (and test) clips are scored whole
