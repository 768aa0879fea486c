"""EmotionRecognizer.from_pretrained("user/name"): a model directory from the Hugging Face Hub's cache.

No test reaches the network: the cache is built here in the Hub's own layout
(``models--user--name/{refs,snapshots,blobs}``, snapshot files linked to their blobs) and read with
``local_files_only`` / ``HF_HUB_OFFLINE=1``, through ``huggingface_hub.snapshot_download`` itself.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import tiny_fbank_model
from s3prl_ser.inference import EmotionRecognizer
from s3prl_ser.inference.model_dir import ModelDirError

REPO = "someone/ser-model"
MAIN = "a" * 40  # commit hashes of the two snapshots
OTHER = "b" * 40


@pytest.fixture(scope="module")
def model_dir(mini_corpus, mini_meta, tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("hub_model")
    return tiny_fbank_model(mini_corpus, mini_meta, root, "fold3")


def _add_snapshot(cache: Path, repo: str, commit: str, files: dict[str, bytes], ref: str | None) -> Path:
    """Store ``files`` as snapshot ``commit`` of model repo ``repo`` in ``cache``, as huggingface_hub
    does: content in ``blobs/<sha256>``, ``snapshots/<commit>/<name>`` a relative link to it, and
    ``refs/<ref>`` holding the commit hash."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir(exist_ok=True)
    for name, content in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    if ref:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture()
def cache(model_dir, tmp_path):
    """A Hub cache with ``REPO``'s main at the exported model and, on ref ``v1`` (commit ``OTHER``),
    the same weights with the class names reversed and the config resealed: another model."""
    cache = tmp_path / "hub"
    files = {path.name: path.read_bytes() for path in model_dir.iterdir()}
    _add_snapshot(cache, REPO, MAIN, files, "main")
    config = json.loads(files["config.json"])
    config["class_names"] = config["class_names"][::-1]
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    files.update(
        {"config.json": json.dumps(config).encode(), "config.sha256": hashlib.sha256(canonical).hexdigest().encode()}
    )
    _add_snapshot(cache, REPO, OTHER, files, "v1")
    return cache


def _clip() -> np.ndarray:
    return np.random.default_rng(3).uniform(-0.3, 0.3, 24000).astype("float32")


def test_cached_hub_model_predicts_as_the_local_directory(model_dir, cache, monkeypatch):
    local = EmotionRecognizer.from_pretrained(model_dir).predict(_clip(), sample_rate=16000)

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access while loading from the cache: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    hub = EmotionRecognizer.from_pretrained(REPO, cache_dir=cache, local_files_only=True)
    assert hub.predict(_clip(), sample_rate=16000) == local
    assert hub.config["files"] == json.loads((model_dir / "config.json").read_text())["files"]


def test_revision_pinned_by_ref_or_commit_loads_that_snapshot(model_dir, cache):
    local = EmotionRecognizer.from_pretrained(model_dir)
    for revision in ("v1", OTHER):
        other = EmotionRecognizer.from_pretrained(REPO, revision=revision, cache_dir=cache, local_files_only=True)
        assert other.class_names == local.class_names[::-1]
        # same weights, names reversed: each class keeps its probability under its new name
        mine, theirs = local.predict(_clip(), sample_rate=16000), other.predict(_clip(), sample_rate=16000)
        assert list(theirs.probabilities.values()) == list(mine.probabilities.values())
        assert theirs.label == other.class_names[local.class_names.index(mine.label)]
    main = EmotionRecognizer.from_pretrained(REPO, revision=MAIN, cache_dir=cache, local_files_only=True)
    assert main.class_names == local.class_names


def test_an_edited_config_in_the_cached_snapshot_is_refused(cache):
    snapshot = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / MAIN
    config = json.loads((snapshot / "config.json").read_text())
    config["class_names"] = config["class_names"][::-1]
    (snapshot / "config.json").resolve().write_text(json.dumps(config))  # the blob, as an edit in the cache would
    with pytest.raises(ModelDirError, match=rf"snapshots/{MAIN}/config\.json: its digest differs from config\.sha256"):
        EmotionRecognizer.from_pretrained(REPO, cache_dir=cache, local_files_only=True)


def test_local_paths_win_and_bad_names_are_named(model_dir, monkeypatch):
    monkeypatch.chdir(model_dir.parent)
    calls = []
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append(a))
    # "fold3/x" has a Hub id's shape, but fold3/ is a local directory: a mistyped local path
    with pytest.raises(FileNotFoundError, match=r"^checkpoint not found: fold3/x \(.*since fold3/ is a local dir"):
        EmotionRecognizer.from_pretrained("fold3/x")
    for name in ("no/such/model", "./nothing", "not a name/x"):
        with pytest.raises(
            FileNotFoundError, match=rf"^checkpoint not found: {name} \(.*not a Hugging Face Hub model id"
        ):
            EmotionRecognizer.from_pretrained(name)
    assert EmotionRecognizer.from_pretrained(model_dir.name).class_names  # "model" exists here: read from disk
    with pytest.raises(ValueError, match="a local path; revision"):
        EmotionRecognizer.from_pretrained(model_dir.name, revision="main")
    assert calls == []


def test_cli_names_an_uncached_model_offline_in_one_error_line(cache, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "s3prl_ser.inference", "someone/not-cached", str(tmp_path / "x.wav"), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: someone/not-cached: no such local path, and Hub model someone/not-cached"), (
        result.stderr
    )
    assert "LocalEntryNotFoundError" in lines[-1]
