"""The feature cache of the frozen text encoder (tiny BERT): keys, switches, identical training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import overrides, run_request, train_args
from s3prl_ser.experiments.launch import prepare_run, run
from s3prl_ser.feature_cache.attach import attach_text_feature_cache
from s3prl_ser.fileio import safe_torch_load
from s3prl_ser.models.text_encoder import TextEncoder
from s3prl_ser.toy.tiny_bert import write_tiny_bert
from s3prl_ser.upstreams.registry import register

pytestmark = pytest.mark.usefixtures("one_thread")
register()  # the project's tasks, as run_downstream's main does

TEXTS = ["Excuse me.", "I left the keys on the table.", ""]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny_bert")


def _cached(directory: Path, cache: Path, selection: str = "last_hidden_state", **section):
    encoder = TextEncoder(directory, selection).eval().requires_grad_(False)
    settings = {"dir": str(cache), "dtype": "float32", **section}
    return encoder, attach_text_feature_cache(settings, "train", "cpu", encoder, directory)


def test_cached_features_equal_the_encoder_on_each_text_alone(tiny_bert, tmp_path):
    encoder, cached = _cached(tiny_bert, tmp_path)
    assert cached.fill(TEXTS, "toy") == {"texts": 3, "stored": 3, "extracted": 3}
    assert cached.fill(TEXTS, "toy")["extracted"] == 0  # a second fill reads
    features, lengths = cached(TEXTS[::-1])
    assert cached.misses == 0 and lengths.tolist() == [2, 10, 5]
    for text, row, n in zip(TEXTS[::-1], features, lengths.tolist()):
        with torch.no_grad():
            alone, _ = encoder([text])
        assert torch.equal(row[:n], alone[0]) and not row[n:].any()
    spec = json.loads((cached.store.directory / "spec.json").read_text())
    assert {"vocab.txt", "tokenizer_config.json", "config.json", "model.safetensors"} <= set(spec["files"])
    assert spec["transformers"] and spec["code"]["torch"] == torch.__version__


def test_a_stale_entry_is_never_served(tiny_bert, tmp_path):
    cache = tmp_path / "cache"
    _, cached = _cached(tiny_bert, cache)
    cached.fill(TEXTS, "toy")
    # another transcript: another key in the same namespace, computed live until stored
    changed = ["Excuse me!", *TEXTS[1:]]
    assert cached.keys(changed)[0] != cached.keys(TEXTS)[0] and cached.keys(changed)[1:] == cached.keys(TEXTS)[1:]
    cached(changed)
    assert cached.misses == 1
    # other weights, another layer selection, another tokenizer file: another namespace
    other = write_tiny_bert(tmp_path / "seed1", seed=1)
    retokenized = Path(shutil.copytree(tiny_bert, tmp_path / "retokenized"))
    config = retokenized / "tokenizer_config.json"
    config.write_text(config.read_text() + "\n")
    variants = {
        "weights": _cached(other, cache),
        "layer": _cached(tiny_bert, cache, "hidden_states"),
        "tokenizer": _cached(retokenized, cache),
        "dtype": _cached(tiny_bert, cache, dtype="float16"),
    }
    directories = {cached.store.directory} | {c.store.directory for _, c in variants.values()}
    assert len(directories) == 5
    for what, (encoder, variant) in variants.items():
        assert len(variant.store) == 0, what
        variant.fill(TEXTS, what)
        features, lengths = variant(TEXTS[1:2])
        with torch.no_grad():
            live, _ = encoder(TEXTS[1:2])
        torch.testing.assert_close(features[0], live[0], atol=1e-3, rtol=1e-3)  # float16: rounded
        assert variant.misses == 0, what


def test_the_cache_is_bypassed_when_off_trained_or_not_training(tiny_bert, tmp_path):
    encoder = TextEncoder(tiny_bert).eval()
    on = {"dir": str(tmp_path), "dtype": "float32"}
    assert attach_text_feature_cache(on, "train", "cpu", encoder, tiny_bert) is None  # trainable parameters
    encoder.requires_grad_(False)
    assert attach_text_feature_cache({**on, "enabled": False}, "train", "cpu", encoder, tiny_bert) is None
    assert attach_text_feature_cache(on, "inference", "cpu", encoder, tiny_bert) is None
    assert attach_text_feature_cache(None, "train", "cpu", encoder, tiny_bert) is None  # a task without a cache
    assert attach_text_feature_cache(on, "evaluate", "cpu", encoder, tiny_bert) is not None


def _outcome(expdir: Path) -> tuple[list[dict], dict]:
    final = json.loads((expdir / "final.json").read_text())
    kept = [safe_torch_load(expdir / s["file"])["Downstream"] for s in final["selected"]]
    kept.append(safe_torch_load(expdir / "dev-avg.ckpt")["Downstream"])
    return kept, json.loads((expdir / "test_fold1_metrics.json").read_text())


@pytest.mark.parametrize("experiment", ["text_only", "fbank_and_text"])
def test_float32_text_cache_trains_bit_identically_to_the_live_encoder(
    experiment, tiny_bert, mini_corpus, mini_meta, tmp_path
):
    """One utterance per batch: a live BERT's features of a text depend on its batch-mates'
    padding in the last bits; the cache stores each text encoded alone."""
    extra = [
        f"config.downstream_expert.text.encoder={tiny_bert}",
        "config.downstream_expert.modelrc.aggregator=mean",
        "config.downstream_expert.datarc.train_batch_size=1",
        "config.downstream_expert.datarc.eval_batch_size=1",
        "config.feature_cache.dtype=float32",
        "config.downstream_expert.text.speech=false"
        if experiment == "text_only"
        else "config.downstream_expert.modelrc.fusion=late",
    ]
    opts = overrides(mini_corpus, mini_meta, steps=8, every=4, k=2, extra=",,".join(extra))
    argv = lambda name, *more: train_args(tmp_path / name, opts, extra=("-v", "fold1", *more))  # noqa: E731
    live = run(*prepare_run(run_request(argv("live", "--no_feature_cache"))))
    cached = run(*prepare_run(run_request(argv("cached", "--feature_cache_dir", str(tmp_path / "cache")))))
    assert live.downstream.model._text_cache is None
    assert cached.downstream.model._text_cache.misses == 0  # every batch, dev and test read from the cache
    text_namespaces = [d for d in (tmp_path / "cache").iterdir() if d.name.startswith("text-")]
    # one namespace; texts shared by utterances (the mini corpus repeats its sentences) stored once
    assert len(text_namespaces) == 1 and len(cached.downstream.model._text_cache.store) < 24
    kept_live, metrics_live = _outcome(tmp_path / "live")
    kept_cached, metrics_cached = _outcome(tmp_path / "cached")
    assert len(kept_cached) == len(kept_live) == 3
    for ours, theirs in zip(kept_cached, kept_live):
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert metrics_cached == metrics_live
