"""The feature cache below the runner: keys that go stale, shared and killed writers, space, damage.

Every test uses real upstreams (s3prl's fbank, a tiny random-init HuBERT) and a cache in a
temporary directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import warnings
from argparse import Namespace
from pathlib import Path

import pytest
import soundfile as sf
import torch

import s3prl_ser
from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.data.audio import load_audio
from s3prl_ser.feature_cache import speech as feature_cache
from s3prl_ser.feature_cache import store as feature_store
from s3prl_ser.feature_cache.attach import attach_feature_cache
from s3prl_ser.feature_cache.speech import CacheSpaceError
from s3prl_ser.feature_cache.store import CacheSpecMismatchError, FeatureStore
from s3prl_ser.fileio import atomic_torch_save, safe_torch_load
from s3prl_ser.upstreams.multi_upstream import build_featurizer, build_upstreams

pytestmark = pytest.mark.usefixtures("one_thread")


def _args(upstream: str, ckpt: str | None = None, **changes) -> Namespace:
    args = dict(
        upstream=upstream,
        upstream_ckpt=ckpt,
        upstream_model_config=None,
        upstream_trainable=False,
        upstream_feature_selection="hidden_states",
        upstream_layer_selection=None,
        upstream_feature_normalize=False,
        device="cpu",
        mode="train",
    )
    return Namespace(**{**args, **changes})


def _cached(root: Path, args: Namespace, **settings) -> tuple:
    """The runner's wrapping of ``args``' upstream(s) with a cache under ``root``."""
    upstream = build_upstreams(args.upstream, args.upstream_ckpt)
    featurizer = build_featurizer(
        upstream, args.upstream_feature_selection, args.upstream_layer_selection, "cpu", args.upstream_feature_normalize
    )
    config = {"feature_cache": {"enabled": True, "dir": str(root), "dtype": "float32", **settings}}
    model, caches = attach_feature_cache(args, config, upstream, featurizer, "fold1")
    return model, caches, upstream, featurizer


def _wavs(n: int = 6, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(n_samples), generator=generator) for n_samples in torch.randint(2000, 9000, (n,))]


def _live_alone(upstream, key: str, layer, wav: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return feature_cache.select_features(upstream([wav]), key, layer)


@pytest.fixture(scope="module")
def tiny_hubert(tiny_upstreams) -> str:
    return str(tiny_upstreams["hubert"])


def test_float32_cache_serves_exactly_what_the_upstream_computes(tmp_path, tiny_hubert):
    model, caches, upstream, featurizer = _cached(tmp_path, _args("hubert_local", tiny_hubert))
    wavs = _wavs()
    caches.fill_split("train", [(w.numpy(), 0, f"u{i}") for i, w in enumerate(wavs)])
    for wav in wavs:  # each utterance alone: what is stored does not depend on batch-mates
        served = model([wav])["hidden_states"]
        live = _live_alone(upstream, "hidden_states", None, wav)
        assert len(served) == len(live) == 3  # CNN output + 2 transformer layers: a weighted sum's inputs
        assert all(torch.equal(s, x) for s, x in zip(served, live))
        assert torch.equal(featurizer([wav], model([wav]))[0], featurizer([wav], upstream([wav]))[0])
    batch = model(wavs)["hidden_states"]  # a batch: each row is its utterance's own frames, zero-padded
    for b, wav in enumerate(wavs):
        own = _live_alone(upstream, "hidden_states", None, wav)[0][0]
        frames = min(own.shape[0], round(len(wav) / featurizer.downsample_rate))
        assert torch.equal(batch[0][b, :frames], own[:frames]) and not batch[0][b, frames:].any()
    assert model.misses == 0


def test_float16_cache_is_within_half_precision_rounding(tmp_path, tiny_hubert):
    wavs = _wavs(3)
    half, caches, upstream, _ = _cached(tmp_path, _args("hubert_local", tiny_hubert), dtype="float16")
    caches.fill_split("train", [(w.numpy(), 0, "u") for w in wavs])
    for wav in wavs:
        for s, x in zip(half([wav])["hidden_states"], _live_alone(upstream, "hidden_states", None, wav)):
            assert not torch.equal(s, x)
            assert torch.allclose(s, x, rtol=2**-11, atol=2**-24 * 4)  # float16: 11 significant bits


@pytest.mark.parametrize(
    "change",
    [
        {"upstream_feature_normalize": True},
        {"upstream_feature_selection": "last_hidden_state"},
        {"upstream_layer_selection": 1},
        {"settings": {"dtype": "float16"}},
        {"settings": {"extract_batch_size": 4}},
        {"upstream_model_config": "config-b"},
    ],
    ids=lambda change: next(iter(change.get("settings", change))),
)
def test_every_feature_option_has_its_own_namespace(tmp_path, tiny_hubert, change):
    configs = {}
    for name in ("config-a", "config-b"):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(f"# {name}\n")
    change = dict(change)
    settings = change.pop("settings", {})
    if "upstream_model_config" in change:
        change["upstream_model_config"] = str(configs[change["upstream_model_config"]])
    base = _args("hubert_local", tiny_hubert, upstream_model_config=str(configs["config-a"]))
    _, before, *_ = _cached(tmp_path / "cache", base)
    _, after, *_ = _cached(tmp_path / "cache", Namespace(**{**vars(base), **change}), **settings)
    assert before.streams[0].store.directory != after.streams[0].store.directory


def test_code_version_and_sample_rate_name_the_namespace(monkeypatch):
    name, _ = feature_cache.namespace("fbank", {"weights": "w"})
    monkeypatch.setattr(s3prl_ser, "__version__", "999")
    assert feature_cache.namespace("fbank", {"weights": "w"})[0] != name
    monkeypatch.undo()
    monkeypatch.setattr(feature_cache, "CACHE_FORMAT", feature_cache.CACHE_FORMAT + 1)
    assert feature_cache.namespace("fbank", {"weights": "w"})[0] != name
    monkeypatch.undo()
    monkeypatch.setattr(feature_cache, "SAMPLE_RATE", 8000)
    assert feature_cache.namespace("fbank", {"weights": "w"})[0] != name


def test_other_weights_or_checkpoint_never_read_stale_features(tmp_path, tiny_hubert):
    """Another random init (a per-fold export differs the same way), and the same weights in a
    checkpoint whose task config normalises the waveform: each gets, and serves, its own."""
    from s3prl_ser.toy.tiny_upstream import write_tiny_upstream

    other_seed = write_tiny_upstream("hubert", tmp_path / "seed1.pt", seed=1)
    state = safe_torch_load(tiny_hubert)
    state["task_cfg"]["normalize"] = True
    normalizing = tmp_path / "normalize.pt"
    atomic_torch_save(state, normalizing)
    wav = _wavs(1)[0]
    first, caches, *_ = _cached(tmp_path / "cache", _args("hubert_local", tiny_hubert))
    caches.fill_split("train", [(wav.numpy(), 0, "u")])
    served_first = first([wav])["hidden_states"][-1]
    for ckpt in (other_seed, normalizing):
        model, caches, upstream, _ = _cached(tmp_path / "cache", _args("hubert_local", str(ckpt)))
        assert caches.streams[0].store.directory != first.store.directory
        caches.fill_split("train", [(wav.numpy(), 0, "u")])
        served = model([wav])["hidden_states"][-1]
        assert model.misses == 0 and not torch.equal(served, served_first)
        assert torch.equal(served, _live_alone(upstream, "hidden_states", None, wav)[-1])


def test_changed_audio_is_extracted_again(tmp_path, mini_corpus):
    """The key is the waveform itself: a file rewritten with other samples (even with its old
    size and modification time) or another segment of the same recording is a new entry."""
    path = tmp_path / "utt.wav"
    shutil.copy(next(mini_corpus.glob("Session1/sentences/wav/*/*.wav")), path)
    model, caches, upstream, _ = _cached(tmp_path / "cache", _args("fbank"))
    item = lambda: (load_audio(path).numpy(), 0, "utt")  # noqa: E731
    caches.fill_split("train", [item()])
    stat = path.stat()
    samples, rate = sf.read(path, dtype="int16")
    sf.write(path, samples[::-1].copy(), rate, subtype="PCM_16")  # same size, other content
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    stream = caches.streams[0]
    report = stream.fill([item()[0]], "rewritten")
    assert report["extracted"] == 1
    segment = item()[0][1000:9000]
    assert stream.fill([segment], "segment")["extracted"] == 1
    for wav in (torch.from_numpy(item()[0]), torch.from_numpy(segment)):
        assert torch.equal(model([wav])["hidden_states"], upstream([wav])["hidden_states"][0])
    assert model.misses == 0


def test_a_foreign_spec_file_is_refused(tmp_path):
    FeatureStore(tmp_path, {"upstream": "a"}, "float32")
    with pytest.raises(CacheSpecMismatchError, match=str(tmp_path / "spec.json")):
        FeatureStore(tmp_path, {"upstream": "b"}, "float32")


def test_refuses_to_extract_what_does_not_fit(tmp_path):
    model, caches, *_ = _cached(tmp_path / "cache", _args("fbank"))
    stream = caches.streams[0]
    stream.reserve_bytes = shutil.disk_usage(tmp_path).free + 1
    with pytest.raises(CacheSpaceError, match=r"needs about .* free: free space, point feature_cache.dir"):
        stream.fill([w.numpy() for w in _wavs(2)], "train")
    assert len(stream.store) == 0 and not list(stream.store.directory.glob("shard-*"))


def _fork(target) -> int:
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            target()
            code = 0
        finally:
            os._exit(code)
    return pid


def _entries_on_disk(directory: Path) -> list[str]:
    return [key for index in directory.glob("shard-*.json") for key in json.loads(index.read_text())["entries"]]


def test_two_processes_filling_one_cache_at_once(tmp_path):
    wavs = [w.numpy() for w in _wavs(12)]
    model, caches, upstream, _ = _cached(tmp_path / "cache", _args("fbank"))
    stream = caches.streams[0]
    pids = [_fork(lambda: stream.fill(wavs, "train")) for _ in range(2)]
    assert [os.waitpid(pid, 0)[1] for pid in pids] == [0, 0]
    fresh, *_ = _cached(tmp_path / "cache", _args("fbank"))  # a third process's view
    assert sorted(_entries_on_disk(fresh.store.directory)) == sorted({feature_cache.audio_key(w) for w in wavs})
    assert fresh.fill(wavs, "train")["extracted"] == 0  # one after the other: nothing redone
    for wav in map(torch.from_numpy, wavs):
        assert torch.equal(fresh([wav])["hidden_states"], upstream([wav])["hidden_states"][0])
    assert fresh.misses == 0
    fresh.store.close()


@pytest.mark.parametrize("moment", ["halfway through a shard", "between a shard's data and its index"])
def test_extraction_killed_mid_way_resumes_correctly(tmp_path, monkeypatch, moment):
    wavs = [w.numpy() for w in _wavs(10)]
    model, caches, upstream, _ = _cached(tmp_path / "cache", _args("fbank"))
    stream = caches.streams[0]
    stream.shard_bytes = 1  # one utterance per shard
    add, write = feature_store.ShardWriter.add, feature_store.atomic_write_bytes
    calls = {"add": 0, "index": 0}

    def add_then_die(self, key, features):  # the 5th utterance's bytes go to the temporary shard, then SIGKILL
        calls["add"] += 1
        if calls["add"] == 5:
            self.shard_bytes = 1 << 40
            add(self, key, features)
            os.kill(os.getpid(), signal.SIGKILL)
        add(self, key, features)

    def index_then_die(path, data):  # the 5th shard's data is in place, its index is not
        if path.suffix == ".json" and path.name.startswith("shard-"):
            calls["index"] += 1
            if calls["index"] == 5:
                os.kill(os.getpid(), signal.SIGKILL)
        write(path, data)

    if moment == "halfway through a shard":
        monkeypatch.setattr(feature_store.ShardWriter, "add", add_then_die)
    else:
        monkeypatch.setattr(feature_store, "atomic_write_bytes", index_then_die)
    pid = _fork(lambda: stream.fill(wavs, "train"))
    assert os.waitpid(pid, 0)[1] == signal.SIGKILL
    monkeypatch.undo()
    directory = stream.store.directory
    assert list(directory.glob(".*.tmp")) or len(list(directory.glob("shard-*.bin"))) == 5  # debris left
    resumed, *_ = _cached(tmp_path / "cache", _args("fbank"))
    assert len(resumed.store) == 4  # only committed shards count
    assert resumed.fill(wavs, "train")["extracted"] == 6
    assert not list(directory.glob(".*.tmp"))
    assert len(list(directory.glob("shard-*.bin"))) == len(list(directory.glob("shard-*.json")))
    assert sorted(_entries_on_disk(directory)) == sorted({feature_cache.audio_key(w) for w in wavs})
    for wav in map(torch.from_numpy, wavs):
        assert torch.equal(resumed([wav])["hidden_states"], upstream([wav])["hidden_states"][0])


def test_fusion_has_one_cache_per_stream_and_trained_upstreams_none(tmp_path, tiny_hubert):
    model, caches, *_ = _cached(tmp_path, _args("fbank,hubert_local", f",{tiny_hubert}"))
    directories = [stream.store.directory.name for stream in caches.streams]
    assert [d.split("-")[0] for d in directories] == ["fbank", "hubert_local"]
    fbank_only, *_ = _cached(tmp_path, _args("fbank"))
    assert fbank_only.store.directory.name == directories[0]  # the fbank stream's cache is shared
    for change in ({"upstream_trainable": True}, {"mode": "inference"}):
        assert _cached(tmp_path, _args("fbank", **change))[1] is None
    assert _cached(tmp_path, _args("fbank"), enabled=False)[1] is None


def test_clips_cropped_anew_each_epoch_are_computed_live_not_cached(tmp_path, caplog):
    from s3prl_ser.data.fold_data import RandomCrop

    wavs = [w.numpy() for w in _wavs(4)]
    longest = max(range(4), key=lambda i: len(wavs[i]))
    limit = sorted(len(w) for w in wavs)[-2]  # only the longest clip is cropped
    model, caches, upstream, _ = _cached(tmp_path, _args("fbank"))
    caplog.set_level(logging.INFO, logger="s3prl_ser")
    caches.fill_split("train", RandomCrop([(w, 0, f"u{i}") for i, w in enumerate(wavs)], limit, seed=0, epoch=0))
    assert "1 clip(s) longer than datarc.max_seconds" in caplog.text
    assert len(model.store) == 3 and feature_cache.audio_key(wavs[longest]) not in model.store
    for epoch in (0, 1):
        crop = torch.from_numpy(RandomCrop([(wavs[longest], 0, "u")], limit, seed=0, epoch=epoch)[0][0])
        assert torch.equal(model([crop])["hidden_states"], upstream([crop])["hidden_states"][0])
    assert model.misses == 2


def _one_shard_each(root: Path, n: int = 3) -> tuple[Path, list, object]:
    """An fbank cache under ``root`` filled with ``n`` utterances, one shard each."""
    _, caches, upstream, _ = _cached(root, _args("fbank"))
    stream = caches.streams[0]
    stream.shard_bytes = 1
    wavs = [w.numpy() for w in _wavs(n)]
    stream.fill(wavs, "train")
    return stream.store.directory, wavs, upstream


def _index_of(directory: Path, wav) -> Path:
    key = feature_cache.audio_key(wav)
    return next(p for p in directory.glob("shard-*.json") if key in json.loads(p.read_text())["entries"])


def _outside(tmp_path: Path) -> Path:
    """A file outside the cache, large enough for any entry (as /etc/passwd would be)."""
    path = tmp_path / "passwd"
    path.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 40000)
    return path


def _retarget(index: Path, data: str) -> None:
    record = json.loads(index.read_text())
    index.write_text(json.dumps({**record, "data": data}))


def _symlink_outside(index: Path, outside: Path) -> None:
    data = index.with_suffix(".bin")
    data.unlink()
    data.symlink_to(outside)


def _flip_a_byte(index: Path, outside: Path) -> None:
    data = bytearray(index.with_suffix(".bin").read_bytes())
    data[len(data) // 2] ^= 0x40
    index.with_suffix(".bin").write_bytes(bytes(data))


DAMAGE = {
    "data naming another shard": lambda index, longest, outside: _retarget(index, longest.with_suffix(".bin").name),
    "data an absolute path outside": lambda index, longest, outside: _retarget(index, str(outside)),
    "data a relative path outside": lambda index, longest, outside: _retarget(index, "../../passwd"),
    "data file a symlink outside": lambda index, longest, outside: _symlink_outside(index, outside),
    "0-byte index": lambda index, longest, outside: index.write_bytes(b""),
    "malformed index": lambda index, longest, outside: index.write_text(index.read_text()[:40]),
    "shard bytes modified": lambda index, longest, outside: _flip_a_byte(index, outside),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_or_doctored_shard_is_a_miss_with_a_warning_and_rebuilt(tmp_path, damage):
    """The shortest utterance's shard is damaged; a fresh process warns naming its index,
    extracts that utterance again, serves what the upstream computes, and the next writer
    removes the damaged files, never the file outside the cache."""
    directory, wavs, upstream = _one_shard_each(tmp_path / "cache")
    shortest, longest = sorted(wavs, key=len)[0], sorted(wavs, key=len)[-1]
    index, outside = _index_of(directory, shortest), _outside(tmp_path)
    DAMAGE[damage](index, _index_of(directory, longest), outside)
    with pytest.warns(feature_store.CacheDamageWarning, match=re.escape(f"ignoring {index}: ")):
        model, *_ = _cached(tmp_path / "cache", _args("fbank"))  # a fresh process's view
        assert model.fill(wavs, "train")["extracted"] == 1
    for wav in map(torch.from_numpy, wavs):
        assert torch.equal(model([wav])["hidden_states"], upstream([wav])["hidden_states"][0])
    assert model.misses == 0 and not index.exists() and not index.with_suffix(".bin").is_symlink()
    assert len(list(directory.glob("shard-*.bin"))) == len(list(directory.glob("shard-*.json"))) == len(wavs)
    assert outside.read_bytes() == b"root:x:0:0:root:/root:/bin/bash\n" * 40000


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (mounting needs root; skipped without it)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)  # detached now, freed once files close


def test_a_disk_filling_up_mid_extraction_is_an_error_line_and_keeps_committed_shards(small_disk):
    ballast = small_disk / "ballast"
    ballast.write_bytes(bytes(256 << 10))
    wavs = [w.numpy() for w in _wavs(12)]  # about 400 KiB of float32 fbank features
    model, caches, upstream, _ = _cached(small_disk / "cache", _args("fbank"))
    stream = caches.streams[0]
    stream.shard_bytes = 1  # one utterance per shard
    stream.reserve_bytes = -(1 << 30)  # the size check passes, as if another process took the space after it
    with pytest.raises(SystemExit, match=r"^error: feature cache .* the disk filled up while writing"):
        with exit_on_error():  # what the command-line programs do
            stream.fill(wavs, "train")
    directory = stream.store.directory
    committed = len(list(directory.glob("shard-*.json")))
    assert 0 < committed < len(wavs) and not list(directory.glob(".*.tmp"))
    assert len(list(directory.glob("shard-*.bin"))) == committed  # the partial shard was removed
    with warnings.catch_warnings():
        warnings.simplefilter("error", feature_store.CacheDamageWarning)
        fresh, *_ = _cached(small_disk / "cache", _args("fbank"))
        assert len(fresh.store) == committed
        ballast.unlink()
        fresh.reserve_bytes = 0
        assert fresh.fill(wavs, "train")["extracted"] == len(wavs) - committed
    for wav in map(torch.from_numpy, wavs):
        assert torch.equal(fresh([wav])["hidden_states"], upstream([wav])["hidden_states"][0])
    assert fresh.misses == 0
    fresh.store.close()
