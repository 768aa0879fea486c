"""EmotionRecognizer.embed and ``--embeddings``: the linear head's input, per file, batch-independent."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import overrides, tiny_fbank_model, train_args
from s3prl_ser.cli.inference import FILES_FAILED
from s3prl_ser.cli.inference import main as inference
from s3prl_ser.cli.run_downstream import main as run_downstream
from s3prl_ser.data.audio import load_audio
from s3prl_ser.inference import EmotionRecognizer


@pytest.fixture(scope="module")
def model_dir(mini_corpus, mini_meta, tmp_path_factory, one_thread):
    """fbank + tiny ECAPA-TDNN, fold1 (4 steps), exported."""
    root = tmp_path_factory.mktemp("embed_model")
    return tiny_fbank_model(mini_corpus, mini_meta, root, "fold1")


@pytest.fixture(scope="module")
def fused(mini_corpus, mini_meta, tiny_upstreams, tmp_path_factory, one_thread):
    """fbank and a tiny HuBERT, late fusion, fold1 (4 steps)."""
    root = tmp_path_factory.mktemp("embed_fused")
    opts = overrides(mini_corpus, mini_meta, steps=4, every=2, extra="config.downstream_expert.modelrc.fusion=late")
    run_downstream(
        train_args(
            root / "fold1",
            opts,
            upstream="fbank,hubert_local",
            ckpt=f",{tiny_upstreams['hubert']}",
            extra=("-v", "fold1"),
        )
    )
    return EmotionRecognizer.from_pretrained(root / "fold1")


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed_audio")
    rng = np.random.default_rng(0)
    for name, seconds, rate in (("a.wav", 1.3, 16000), ("b.wav", 0.6, 22050), ("c.flac", 2.1, 16000)):
        sf.write(root / name, rng.uniform(-0.3, 0.3, int(seconds * rate)).astype("float32"), rate)
    (root / "corrupt.wav").write_bytes(b"RIFF" + bytes(range(256)) * 4)
    return root


def _head_input_by_hand(recognizer, wav):
    """What each member's linear head reads for one waveform, computed member by member."""
    parts = []
    with torch.no_grad():
        for member in recognizer.members:
            upstream_output = recognizer.upstreams[member.upstream_index]([wav])
            parts.append(member.classifier.embed(member.features([wav], upstream_output))[0])
    return torch.cat(parts)


def test_embed_is_the_heads_input_alone_or_in_a_batch(model_dir, audio):
    recognizer = EmotionRecognizer.from_pretrained(model_dir)
    files = [audio / "a.wav", audio / "b.wav", audio / "c.flac"]
    alone = recognizer.embed(files[0])
    dim = recognizer.members[0].classifier.classifier.in_features
    assert alone.shape == (dim,) and recognizer.embedding_dim == dim
    assert torch.allclose(alone, _head_input_by_hand(recognizer, load_audio(files[0])), atol=1e-6)
    # the head applied to the embedding gives the recognizer's probabilities
    head = recognizer.members[0].classifier.classifier
    with torch.no_grad():
        assert torch.allclose(head(alone).softmax(-1), recognizer.probabilities([load_audio(files[0])])[0], atol=1e-6)
    batch = recognizer.embed(files)  # three lengths, one padded batch for the classifier
    assert batch.shape == (3, dim)
    for row, path in zip(batch, files):
        assert torch.allclose(row, recognizer.embed(path), atol=1e-5)
    array = load_audio(files[1]).numpy()
    assert torch.allclose(recognizer.embed(array, sample_rate=16000), batch[1], atol=1e-5)
    with pytest.raises(ValueError, match="sample_rate"):
        recognizer.embed(array)


def test_fused_and_ensemble_embeddings_concatenate_in_member_order(model_dir, fused, audio):
    single = EmotionRecognizer.from_pretrained(model_dir)
    files = [audio / "a.wav", audio / "c.flac"]
    late_dim = fused.members[0].classifier.classifier.in_features
    streams = [a.output_size for a in fused.members[0].classifier.aggregators]
    assert len(streams) == 2 and late_dim == sum(streams)  # late fusion: each stream's embedding, concatenated
    fused_embeddings = fused.embed(files)
    assert fused_embeddings.shape == (2, late_dim)
    assert torch.allclose(fused_embeddings[1], _head_input_by_hand(fused, load_audio(files[1])), atol=1e-6)
    ensemble = EmotionRecognizer.ensemble([single, fused])
    embeddings = ensemble.embed(files)
    assert embeddings.shape == (2, single.embedding_dim + late_dim) == (2, ensemble.embedding_dim)
    assert torch.allclose(embeddings, torch.cat([single.embed(files), fused_embeddings], dim=-1), atol=1e-5)


def test_cli_writes_the_embeddings_and_an_index_without_the_error_file(model_dir, audio, tmp_path):
    out = tmp_path / "emb" / "out.npy"
    rows = tmp_path / "rows.csv"
    with pytest.raises(SystemExit) as exit_info:  # c.flac (2.1 s) is read in windows
        inference([str(model_dir), str(audio), "--embeddings", str(out), "--output", str(rows), "--long-audio", "2"])
    assert exit_info.value.code == FILES_FAILED
    array = np.load(out)
    index = json.loads(out.with_name("out.npy.json").read_text())
    recognizer = EmotionRecognizer.from_pretrained(model_dir)
    names = [Path(r["file"]).name for r in index["rows"]]
    assert sorted(names) == ["a.wav", "b.wav"] and [r["row"] for r in index["rows"]] == [0, 1]
    assert array.dtype == np.float32 and array.shape == (2, recognizer.embedding_dim) == tuple(index["shape"])
    for row in index["rows"]:
        expected = recognizer.embed(row["file"]).numpy()
        np.testing.assert_allclose(array[row["row"]], expected, atol=1e-5)
    excluded = {Path(e["file"]).name: e["reason"] for e in index["excluded"]}
    assert sorted(excluded) == ["c.flac", "corrupt.wav"] and "corrupt.wav" in excluded["corrupt.wav"]
    assert "read in windows" in excluded["c.flac"]
    assert "embedding" not in rows.read_text().splitlines()[0]  # the rows are as without --embeddings
    with pytest.raises(SystemExit) as exit_info:
        inference([str(model_dir), str(audio), "--embeddings", str(tmp_path / "out.csv")])
    assert "--embeddings must end in .npy" in str(exit_info.value.code) and not (tmp_path / "out.csv").exists()
