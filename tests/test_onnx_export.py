"""ONNX export: onnxruntime against PyTorch on variable-length padded batches (PyTorch's
probabilities are each clip's alone, see tests/test_batch_independence.py, so the graph's are too).

Tolerance: 1e-5 absolute on class probabilities (float32 graphs; measured differences ~1e-7).
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

TOLERANCE = 1e-5
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
        (onnx_probs,) = session.run(None, {"wavs": padded, "lengths": lens})
        torch_probs = recognizer.probabilities(wavs).numpy()
        assert onnx_probs.shape == (len(lengths), len(recognizer.class_names))
        np.testing.assert_allclose(onnx_probs, torch_probs, atol=TOLERANCE, rtol=0)
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


def test_fbank_exports_the_downstream_with_the_reason(mini_corpus, mini_meta, tmp_path, one_thread):
    run = _train(tmp_path, mini_corpus, mini_meta)
    recognizer = EmotionRecognizer.from_pretrained(run)
    note = export_onnx(recognizer, tmp_path / "model.onnx")
    assert note["kind"] == "downstream" and "one utterance at a time" in note["reason"]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    wavs, _, lens = _batch([16000, 23000, 9000, 4000])  # fbank's per-utterance CMVN needs > 1 frame
    with torch.no_grad():
        hidden = recognizer.upstreams[0](wavs)["hidden_states"]  # what the caller computes: (L, B, T, D)
    stacked = torch.stack(list(hidden)) if isinstance(hidden, (list, tuple)) else hidden.unsqueeze(0)
    frames = np.array([1 + (n - 400) // 160 for n in lens], dtype=np.int64)  # kaldi's count for each clip alone
    (onnx_probs,) = session.run(None, {"hidden_states": stacked.numpy(), "frame_lengths": frames})
    assert np.isfinite(onnx_probs).all()
    np.testing.assert_allclose(onnx_probs, recognizer.probabilities(wavs).numpy(), atol=TOLERANCE, rtol=0)


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


def test_full_graph_normalises_each_clip_like_s3prl(tiny_upstreams, tmp_path, one_thread):
    """A HuBERT whose task normalises waveforms (HuBERT Large's setting): s3prl layer-norms each
    unpadded clip; the graph does it over the valid samples of the padded batch."""
    from s3prl_ser.fileio import atomic_torch_save, safe_torch_load
    from s3prl_ser.inference import RecognizerMember
    from s3prl_ser.models.fusion import EmotionClassifier
    from s3prl_ser.upstreams.build import build_upstream
    from s3prl_ser.upstreams.multi_upstream import build_featurizer

    state = safe_torch_load(tiny_upstreams["hubert"])
    state["task_cfg"] = dict(state["task_cfg"], normalize=True)
    atomic_torch_save(state, tmp_path / "normalising.pt")
    hubert = build_upstream("hubert_local", str(tmp_path / "normalising.pt"))
    assert hubert.task_cfg.normalize
    featurizer = build_featurizer(hubert, "hidden_states", None, "cpu", False)
    torch.manual_seed(0)
    head = EmotionClassifier(
        [featurizer.output_dim], [320], 3, ecapa={"channels": [16, 16, 16, 16, 48], "lin_neurons": 8}
    )
    recognizer = EmotionRecognizer([hubert], [RecognizerMember(featurizer, head)], ["a", "b", "c"])
    assert export_onnx(recognizer, tmp_path / "m.onnx")["kind"] == "full"
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    wavs, padded, lens = _batch(LENGTHS, seed=7)
    wavs = [w * 5 + 0.2 for w in wavs]  # a DC offset and gain that only normalisation removes
    padded = padded * 5 + 0.2 * (np.arange(padded.shape[1]) < lens[:, None])
    (onnx_probs,) = session.run(None, {"wavs": padded.astype("float32"), "lengths": lens})
    np.testing.assert_allclose(onnx_probs, recognizer.probabilities(wavs).numpy(), atol=TOLERANCE, rtol=0)
