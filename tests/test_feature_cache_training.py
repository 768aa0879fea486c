"""Stage 2 with the feature cache: the same training as live features, the switch, resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import overrides, run_request, train_args
from s3prl_ser.config import ConfigError
from s3prl_ser.experiments.launch import prepare_run, run
from s3prl_ser.feature_cache.store import CacheDamageWarning
from s3prl_ser.fileio import safe_torch_load
from s3prl_ser.upstreams.registry import register

pytestmark = pytest.mark.usefixtures("one_thread")
register()  # the project's tasks, as run_downstream's main does

# SpecAugment draws from torch's and Python's RNGs: extraction must leave them as they were.
SPECAUG = (
    "config.specaug={apply_time_warp: false, apply_freq_mask: true, freq_mask_width_range: [0, 8], "
    "num_freq_mask: 1, apply_time_mask: true, time_mask_width_range: [0, 5], num_time_mask: 1}"
)


def _train(expdir: Path, opts: str, *extra: str):
    args, config = prepare_run(run_request(train_args(expdir, opts, extra=("-v", "fold1", *extra))))
    return run(args, config)


def _outcome(expdir: Path) -> tuple[dict, dict, dict]:
    final = safe_torch_load(expdir / "dev-avg.ckpt")
    metrics = json.loads((expdir / "test_fold1_metrics.json").read_text())
    return final["Downstream"], final["Featurizer"], metrics


@pytest.fixture(scope="module")
def runs(mini_corpus, mini_meta, tmp_path_factory):
    """fold1 with live features, then with a float32 cache twice (extracting, then reading)."""
    root = tmp_path_factory.mktemp("cache_training")
    cache = root / "cache"
    opts = overrides(mini_corpus, mini_meta, steps=12, every=4, k=2, extra=SPECAUG)
    float32 = f"{opts},,config.feature_cache.dtype=float32"
    runners = {
        "live": _train(root / "live", float32, "--no_feature_cache"),
        "extracting": _train(root / "extracting", float32, "--feature_cache_dir", str(cache)),
        "reading": _train(root / "reading", float32, "--feature_cache_dir", str(cache)),
    }
    return root, cache, opts, runners


def test_float32_cache_trains_bit_identically_to_live_features(runs):
    root, cache, _, runners = runs
    assert runners["live"].feature_caches is None
    for name in ("extracting", "reading"):
        assert runners[name].feature_caches.misses() == 0  # every batch, dev and test read from the cache
    (namespace,) = cache.iterdir()
    assert len(list(namespace.glob("shard-*.json"))) == 3  # train, dev, test of the first cached run only
    live = _outcome(root / "live")
    for name in ("extracting", "reading"):
        downstream, featurizer, metrics = _outcome(root / name)
        for ours, theirs in ((downstream, live[0]), (featurizer, live[1])):
            assert ours.keys() == theirs.keys()
            assert all(torch.equal(ours[key], theirs[key]) for key in ours), name
        assert metrics == live[2], name


def test_a_run_on_a_damaged_cache_completes_and_trains_as_on_live_features(runs, tmp_path):
    """The train, dev and test shards each damaged another way (a 0-byte index, a malformed
    one, a modified byte of data): the run warns about each, extracts them again and ends as
    the live run did."""
    root, cache, opts, _ = runs
    shutil.copytree(cache, tmp_path / "cache")
    (namespace,) = (tmp_path / "cache").iterdir()
    indexes = sorted(namespace.glob("shard-*.json"))
    indexes[0].write_bytes(b"")
    indexes[1].write_text(indexes[1].read_text()[:-10])
    data = bytearray(indexes[2].with_suffix(".bin").read_bytes())
    data[-100] ^= 1
    indexes[2].with_suffix(".bin").write_bytes(bytes(data))
    with pytest.warns(CacheDamageWarning) as warned:
        runner = _train(
            tmp_path / "run",
            f"{opts},,config.feature_cache.dtype=float32",
            "--feature_cache_dir",
            str(tmp_path / "cache"),
        )
    named = {index for index in indexes for w in warned if f"ignoring {index}: " in str(w.message)}
    assert named == set(indexes) and runner.feature_caches.misses() == 0
    assert len(list(namespace.glob("shard-*.json"))) == len(list(namespace.glob("shard-*.bin"))) == 3
    live, rerun = _outcome(root / "live"), _outcome(tmp_path / "run")
    for ours, theirs in zip(rerun[:2], live[:2]):
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert rerun[2] == live[2]


def test_the_cache_switch_cannot_change_on_resume(runs):
    root, cache, _, _ = runs
    with pytest.raises(ConfigError, match=r"feature_cache.enabled: True -> False"):
        prepare_run(run_request(train_args(root / "reading", None, extra=("-v", "fold1", "-a", "--no_feature_cache"))))
    # where the cache lives is not what is trained: a resume may move it
    args, config = prepare_run(
        run_request(
            train_args(root / "reading", None, extra=("-v", "fold1", "-a", "--feature_cache_dir", str(cache / "moved")))
        )
    )
    assert config["feature_cache"]["dir"] == str(cache / "moved")


def test_stock_s3prl_tasks_have_no_cache_and_refuse_its_directory(mini_corpus, mini_meta, tmp_path):
    argv = ["-m", "train", "-u", "fbank", "-d", "emotion", "-p", str(tmp_path / "exp"), "--device", "cpu"]
    with pytest.raises(ConfigError, match="task emotion has no feature cache"):
        prepare_run(run_request([*argv, "--feature_cache_dir", str(tmp_path)]))


def test_float32_cache_of_an_ssl_upstream_trains_like_live_features_one_utterance_at_a_time(
    mini_corpus, mini_meta, tiny_upstreams, tmp_path
):
    """A weighted sum over every layer of a tiny HuBERT. Its GroupNorm feature encoder sees a
    batch's padding, so live features depend on batch-mates; the cache stores each utterance
    alone, which live features equal with one utterance per batch: then training is identical."""
    one = (
        "config.downstream_expert.modelrc.aggregator=mean,,config.downstream_expert.datarc.train_batch_size=1,,"
        "config.downstream_expert.datarc.eval_batch_size=1,,config.feature_cache.dtype=float32"
    )
    opts = overrides(mini_corpus, mini_meta, steps=8, every=4, k=2, extra=one)
    upstream = ("-u", "hubert_local", "-k", str(tiny_upstreams["hubert"]))
    argv = lambda name, *extra: train_args(tmp_path / name, opts, extra=("-v", "fold1", *extra))  # noqa: E731
    live = run(*prepare_run(run_request([*argv("live", "--no_feature_cache"), *upstream])))
    cached = run(
        *prepare_run(run_request([*argv("cached", "--feature_cache_dir", str(tmp_path / "cache")), *upstream]))
    )
    assert live.feature_caches is None and cached.feature_caches.misses() == 0
    assert cached.featurizer.model.weights.numel() == 3  # every layer stored, the weights learned
    reference = _outcome(tmp_path / "live")
    for ours, theirs in zip(_outcome(tmp_path / "cached"), reference):
        if isinstance(ours, dict) and ours and isinstance(next(iter(ours.values())), torch.Tensor):
            assert all(torch.equal(ours[key], theirs[key]) for key in ours)
        else:
            assert ours == theirs
