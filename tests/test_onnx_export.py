"""ONNX export: onnxruntime against PyTorch on variable-length padded batches (PyTorch's
probabilities are each clip's alone, see tests/test_batch_independence.py, so the graph's are too).

Tolerance: 1e-6 absolute on class probabilities and on embeddings (float32 graphs; measured at
most 6e-8 on probabilities and 1.5e-7 on embeddings for HuBERT, wav2vec 2.0 and fbank, and for
mfcc's downstream graph on features computed from its recorded front end).
"""

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import overrides, train_args
from s3prl_ser.cli.export import main as export_cli
from s3prl_ser.cli.run_downstream import main as run_downstream
from s3prl_ser.inference import EmotionRecognizer
from s3prl_ser.inference.onnx import OnnxExportError, export_onnx

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TOLERANCE = 1e-6
EMBEDDING_TOLERANCE = 1e-6
LENGTHS = [16000, 23000, 9000, 400]  # variable lengths, down to the receptive field


def _train(root, corpus, meta, upstream="fbank", ckpt=None, extra=""):
    run = root / "fold4"
    opts = overrides(corpus, meta, steps=4, every=2, extra=extra)
    run_downstream(train_args(run, opts, upstream=upstream, ckpt=ckpt, extra=("-v", "fold4")))
    return run


def _batch(lengths, seed=0):
    rng = np.random.default_rng(seed)
    wavs = [rng.uniform(-0.3, 0.3, n).astype("float32") for n in lengths]
    padded = np.zeros((len(wavs), max(lengths)), dtype="float32")
    for row, wav in zip(padded, wavs):
        row[: len(wav)] = wav
    return [torch.from_numpy(w) for w in wavs], padded, np.array(lengths, dtype=np.int64)


def _assert_matches(session, feed, recognizer, wavs):
    """The graph's probabilities and embeddings against the recognizer's (each clip's alone)."""
    onnx_probs, onnx_embeddings = session.run(None, feed)
    torch_probs, torch_embeddings = (t.numpy() for t in recognizer.outputs(wavs))
    assert onnx_probs.shape == (len(wavs), len(recognizer.class_names))
    assert onnx_embeddings.shape == (len(wavs), recognizer.embedding_dim)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(onnx_embeddings, torch_embeddings, atol=EMBEDDING_TOLERANCE, rtol=0)
    return torch_probs


def test_full_graph_matches_pytorch_for_hubert(mini_corpus, mini_meta, tiny_upstreams, tmp_path, one_thread):
    run = _train(tmp_path, mini_corpus, mini_meta, "hubert_local", tiny_upstreams["hubert"])
    export_cli([str(run), "-o", str(tmp_path / "model"), "--onnx"])
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["onnx"]["kind"] == "full" and config["onnx"]["inputs"] == ["wavs", "lengths"]
    assert "model.onnx" in config["files"]  # hashed like the weights
    recognizer = EmotionRecognizer.from_pretrained(tmp_path / "model")
    session = ort.InferenceSession(str(tmp_path / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    for seed, lengths in enumerate([LENGTHS, [12345], [8000, 8001, 30000]]):
        wavs, padded, lens = _batch(lengths, seed)
        _assert_matches(session, {"wavs": padded, "lengths": lens}, recognizer, wavs)
    # padding content is ignored: the same batch with noise in the padding gives the same output
    _, padded, lens = _batch(LENGTHS)
    noisy = padded.copy()
    for row, n in zip(noisy, lens):
        row[n:] = 5.0
    np.testing.assert_allclose(
        session.run(None, {"wavs": noisy, "lengths": lens})[0],
        session.run(None, {"wavs": padded, "lengths": lens})[0],
        atol=TOLERANCE,
        rtol=0,
    )


def test_full_graph_matches_pytorch_for_fbank(mini_corpus, mini_meta, tmp_path, one_thread):
    run = _train(tmp_path, mini_corpus, mini_meta)
    export_cli([str(run), "-o", str(tmp_path / "model"), "--onnx"])
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["onnx"]["kind"] == "full" and config["onnx"]["inputs"] == ["wavs", "lengths"]
    (front_end,) = config["onnx"]["front_end"]  # what the graph computes, recorded
    assert front_end["function"] == "torchaudio.compliance.kaldi.fbank" and front_end["kwargs"]["num_mel_bins"] == 80
    assert front_end["delta"]["order"] == 2 and front_end["cmvn"]["use_cmvn"] and front_end["output_dim"] == 240
    recognizer = EmotionRecognizer.from_pretrained(tmp_path / "model")
    session = ort.InferenceSession(str(tmp_path / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    # per-utterance CMVN needs 2 frames (560 samples): with 1, s3prl's std is NaN
    for seed, lengths in enumerate([[16000, 23000, 9000, 560], [12345], [8000, 8001, 30000]]):
        wavs, padded, lens = _batch(lengths, seed)
        assert np.isfinite(_assert_matches(session, {"wavs": padded, "lengths": lens}, recognizer, wavs)).all()
    _, padded, lens = _batch([16000, 23000, 9000, 560])
    noisy = np.where(np.arange(padded.shape[1]) < lens[:, None], padded, np.float32(5.0))
    np.testing.assert_allclose(
        session.run(None, {"wavs": noisy, "lengths": lens})[0],
        session.run(None, {"wavs": padded, "lengths": lens})[0],
        atol=TOLERANCE,
        rtol=0,
    )


@pytest.mark.parametrize("name", ["fbank", "fbank_no_cmvn"])
def test_kaldi_fbank_graph_is_s3prl_fbank_on_a_padded_batch(name, one_thread):
    """Features against s3prl's own (torchaudio float32: measured 1.8e-4 off float64 kaldi on
    log-mel values up to 11) and against float64 kaldi (the graph's DFT-by-matrix: measured 8e-6)."""
    import torchaudio

    from s3prl_ser.upstreams.build import build_upstream
    from s3prl_ser.upstreams.exportable import KaldiFbankGraph

    fbank = build_upstream(name)
    lengths = [16000, 23000, 9000, 560, 401]
    wavs, padded, lens = _batch(lengths, seed=3)
    with torch.no_grad():
        features, frames = KaldiFbankGraph(fbank)(torch.from_numpy(padded), torch.from_numpy(lens))
    assert frames.tolist() == [1 + (n - 400) // 160 for n in lengths]
    for row, wav, count in zip(features, wavs, frames.tolist()):
        alone = fbank([wav])["hidden_states"][0][0]  # (frames, 240)
        assert alone.shape == (count, 240) and not row[count:].any()
        if count > 1 or name == "fbank_no_cmvn":  # 1 frame: s3prl's CMVN is NaN
            assert (row[:count] - alone).abs().max() < 1e-3
        exact = torchaudio.compliance.kaldi.fbank(wav.double().view(1, -1), num_mel_bins=80, sample_frequency=16000)
        if name == "fbank_no_cmvn":
            assert (row[:count, :80].double() - exact).abs().max() < 5e-5


def test_other_kaldi_baselines_export_the_downstream_and_a_runnable_front_end(tmp_path, one_thread):
    """mfcc: the graph starts at the features, and the note's front_end, run with torchaudio
    alone (as a user without s3prl would), gives the features the recognizer computes."""
    import torchaudio

    from s3prl_ser.inference import RecognizerMember
    from s3prl_ser.models.fusion import EmotionClassifier
    from s3prl_ser.upstreams.build import build_upstream
    from s3prl_ser.upstreams.multi_upstream import build_featurizer

    mfcc = build_upstream("mfcc")
    featurizer = build_featurizer(mfcc, "hidden_states", None, "cpu", False)
    torch.manual_seed(0)
    head = EmotionClassifier([featurizer.output_dim], [160], 3, aggregator="mean")
    recognizer = EmotionRecognizer([mfcc], [RecognizerMember(featurizer, head)], ["a", "b", "c"])
    note = export_onnx(recognizer, tmp_path / "m.onnx")
    assert note["kind"] == "downstream" and "mfcc features are not in the graph" in note["reason"]
    (front_end,) = note["front_end"]
    front_end = json.loads(json.dumps(front_end))  # as config.json holds it

    def features(wav):  # (S,) -> (T, D) from the description alone
        kaldi = getattr(torchaudio.compliance.kaldi, front_end["function"].rsplit(".", 1)[1])
        parts = [kaldi(wav.view(1, -1), **front_end["kwargs"])]
        for _ in range(front_end["delta"]["order"]):
            delta = front_end["delta"]
            parts.append(torchaudio.functional.compute_deltas(parts[-1].T, delta["win_length"], delta["mode"]).T)
        x = torch.cat(parts, dim=-1)
        if front_end["cmvn"]["use_cmvn"]:
            x = (x - x.mean(dim=0)) / (front_end["cmvn"]["eps"] + x.std(dim=0))
        return x

    wavs, _, lens = _batch([16000, 23000, 9000, 4000])
    computed = [features(w) for w in wavs]
    assert computed[0].shape[1] == front_end["output_dim"]
    hidden = torch.nn.utils.rnn.pad_sequence(computed, batch_first=True).unsqueeze(0).numpy()  # (L=1, B, T, D)
    frames = np.array([len(c) for c in computed], dtype=np.int64)
    assert frames.tolist() == [1 + (n - 400) // 160 for n in lens]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    _assert_matches(session, {"hidden_states": hidden, "frame_lengths": frames}, recognizer, wavs)


def test_fbank_options_outside_the_graph_are_named(tmp_path):
    from s3prl_ser.upstreams.build import build_upstream
    from s3prl_ser.upstreams.exportable import KaldiFbankGraph, UnsupportedUpstreamError, kaldi_fbank_unsupported

    fbank = build_upstream("fbank")
    assert kaldi_fbank_unsupported(fbank) is None
    fbank.config["kaldi"]["fbank"]["dither"] = 1.0
    assert kaldi_fbank_unsupported(fbank) == "fbank option dither=1.0 is not in the graph (only 0.0)"
    with pytest.raises(UnsupportedUpstreamError, match="dither"):
        KaldiFbankGraph(fbank)


def test_fused_models_are_refused_with_the_reason(mini_corpus, mini_meta, tiny_upstreams, tmp_path, one_thread):
    ckpt = shutil.copy(tiny_upstreams["hubert"], tmp_path / "tiny.pt")
    run = _train(
        tmp_path,
        mini_corpus,
        mini_meta,
        "fbank,hubert_local",
        f",{ckpt}",
        "config.downstream_expert.modelrc.fusion=late",
    )
    with pytest.raises(OnnxExportError, match="fused models"):
        export_onnx(EmotionRecognizer.from_pretrained(run), tmp_path / "model.onnx")


LARGE = {"extractor_mode": "layer_norm", "layer_norm_first": True, "conv_bias": True}  # wav2vec 2.0 / HuBERT Large


@pytest.mark.parametrize(
    ("arch", "normalize", "large"), [("hubert", True, False), ("wav2vec2", False, False), ("wav2vec2", True, True)]
)
def test_full_graph_matches_pytorch_for_tiny_upstreams(arch, normalize, large, tiny_upstreams, tmp_path, one_thread):
    """Both families, Base's GroupNorm feature encoder and Large's LayerNorm one (with
    pre-norm layers), with and without the task's waveform normalisation (the Large models'
    setting): s3prl layer-norms each unpadded clip; the graph does it over the valid samples
    of the padded batch."""
    from s3prl_ser.fileio import atomic_torch_save, safe_torch_load
    from s3prl_ser.inference import RecognizerMember
    from s3prl_ser.models.fusion import EmotionClassifier
    from s3prl_ser.toy.tiny_upstream import write_tiny_upstream
    from s3prl_ser.upstreams.build import build_upstream
    from s3prl_ser.upstreams.multi_upstream import build_featurizer

    source = write_tiny_upstream(arch, tmp_path / "large.pt", model_overrides=LARGE) if large else tiny_upstreams[arch]
    state = safe_torch_load(source)
    state["task_cfg"] = dict(state["task_cfg"], normalize=normalize)
    atomic_torch_save(state, tmp_path / "tiny.pt")
    upstream = build_upstream(f"{arch}_local", str(tmp_path / "tiny.pt"))
    assert (upstream.task_cfg.normalize if arch == "hubert" else upstream.wav_normalize) is normalize
    group_norms = [m for m in upstream.model.feature_extractor.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert bool(group_norms) is not large
    featurizer = build_featurizer(upstream, "hidden_states", None, "cpu", False)
    torch.manual_seed(0)
    head = EmotionClassifier(
        [featurizer.output_dim], [320], 3, ecapa={"channels": [16, 16, 16, 16, 48], "lin_neurons": 8}
    )
    recognizer = EmotionRecognizer([upstream], [RecognizerMember(featurizer, head)], ["a", "b", "c"])
    assert export_onnx(recognizer, tmp_path / "m.onnx")["kind"] == "full"
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for seed, lengths in enumerate([LENGTHS, [8000, 8001, 30000]]):
        wavs, padded, lens = _batch(lengths, seed=7 + seed)
        wavs = [w * 5 + 0.2 for w in wavs]  # a DC offset and gain that only normalisation removes
        padded = padded * 5 + 0.2 * (np.arange(padded.shape[1]) < lens[:, None])
        torch_probs = _assert_matches(session, {"wavs": padded.astype("float32"), "lengths": lens}, recognizer, wavs)
        if seed == 0 and not normalize:  # clips differ by far more than the tolerance: the bound can fail
            assert np.abs(torch_probs - torch_probs[::-1]).max() > 100 * TOLERANCE
