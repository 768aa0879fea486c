"""Precision and int8: bfloat16 on the CPU, float16 refused there, dynamic int8 quantization and
onnxruntime's int8 graph (with calibrated int8 convolutions), each against the float32 recognizer on the mini corpus's 32 clips.

The models: a tiny fbank and a tiny HuBERT recognizer (random init, tiny ECAPA-TDNN head)
whose linear head is scaled to logits of standard deviation 3 on the clips: random-init
probabilities are otherwise close to uniform, where any rounding looks small. Largest absolute
probability difference against float32, measured (AMD EPYC 2-core CPU, torch 2.9.1,
onnxruntime 1.32.0; labels: all 32 agree in each case):

=====================  ==========  ===========
path                    fbank       tiny HuBERT
=====================  ==========  ===========
bfloat16 (CPU)          9.9e-4      1.0e-4
int8 (PyTorch)          --          1.3e-4
int8 (onnxruntime)      --          4.5e-5
+ int8 convolutions     --          1.9e-4
=====================  ==========  ===========

The asserted bounds are 3-5 times these (other CPUs round differently), and above a floor
that shows the conversion happened; labels may differ on at most one clip.
"""

import json

import numpy as np
import pytest
import torch

from helpers import tiny_fbank_model
from s3prl_ser.cli.inference import main as inference_cli
from s3prl_ser.data.audio import load_audio
from s3prl_ser.inference import EmotionRecognizer, RecognizerMember
from s3prl_ser.models.fusion import EmotionClassifier
from s3prl_ser.upstreams.build import build_upstream
from s3prl_ser.upstreams.multi_upstream import build_featurizer
from s3prl_ser.upstreams.registry import register

TINY_ECAPA = dict(channels=[16, 16, 16, 16, 48], res2net_scale=4, attention_channels=8, se_channels=8, lin_neurons=16)
BFLOAT16_BOUND = {"fbank": 3e-3, "hubert": 5e-4}
INT8_BOUND = 5e-4
ONNX_INT8_BOUND = 2e-4
ONNX_INT8_CONV_BOUND = 1e-3


def _recognizer(name, ckpt, clips):
    """A recognizer on upstream ``name`` with a tiny ECAPA-TDNN head whose logits on ``clips``
    have a standard deviation of 3 (its linear layer scaled)."""
    register()
    torch.manual_seed(0)
    upstream = build_upstream(name, ckpt)
    featurizer = build_featurizer(upstream, "hidden_states", None, "cpu", False)
    head = EmotionClassifier([featurizer.output_dim], [featurizer.downsample_rate], 4, ecapa=TINY_ECAPA)
    recognizer = EmotionRecognizer([upstream], [RecognizerMember(featurizer, head)], ["neu", "hap", "ang", "sad"])
    with torch.no_grad():
        scale = 3.0 / head.classifier(recognizer.embeddings(clips)).std()
        head.classifier.weight.mul_(scale)
        head.classifier.bias.mul_(scale)
    return recognizer


@pytest.fixture(scope="module")
def clips(mini_corpus):
    return [load_audio(path) for path in sorted(mini_corpus.rglob("*.wav"))]


@pytest.fixture(scope="module", params=["fbank", "hubert"])
def model(request, tiny_upstreams, clips, one_thread):
    """(kind, a builder of the same float32 recognizer): each test converts its own copy."""
    name, ckpt = ("fbank", None) if request.param == "fbank" else ("hubert_local", str(tiny_upstreams["hubert"]))
    return request.param, lambda: _recognizer(name, ckpt, clips)


def _compare(reference, other):
    """(largest absolute probability difference, labels that differ) of two ``(B, C)`` arrays."""
    return float(np.abs(reference - other).max()), int((reference.argmax(1) != other.argmax(1)).sum())


def test_bfloat16_on_the_cpu_within_the_measured_bound(model, clips):
    kind, build = model
    reference, reference_embeddings = build().outputs(clips)
    recognizer = build().bfloat16()
    assert recognizer.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in recognizer.members.parameters())
    probabilities, embeddings = recognizer.outputs(clips)
    assert probabilities.dtype == embeddings.dtype == torch.float32  # returned as float32
    assert reference.max() > 0.9  # the scaled head is confident somewhere: differences are not tiny by construction
    difference, flipped = _compare(reference.numpy(), probabilities.numpy())
    print(f"{kind} bfloat16: max |p - p32| = {difference:.2e}, {flipped} labels differ of {len(clips)}")
    assert 1e-5 < difference < BFLOAT16_BOUND[kind] and flipped <= 1  # bfloat16 really ran, within the bound
    relative = (embeddings - reference_embeddings).norm(dim=1) / reference_embeddings.norm(dim=1)
    assert relative.max() < 0.05


def test_float16_on_the_cpu_is_refused_and_leaves_the_model_as_it_was(model):
    _, build = model
    recognizer = build()
    for convert in (recognizer.half, lambda: recognizer.to(torch.float16), lambda: recognizer.to("cpu", torch.half)):
        with pytest.raises(ValueError, match=r"float16 on the CPU is not supported: use dtype='bfloat16'"):
            convert()
        assert all(p.dtype == torch.float32 for p in recognizer.parameters())
    with pytest.raises(ValueError, match="runs in float32, bfloat16, float16"):
        recognizer.double()
    assert recognizer.dtype == torch.float32
    recognizer.predict(np.zeros(8000, dtype="float32"), sample_rate=16000)  # still runs


def test_int8_quantizes_the_upstream_linear_layers_and_keeps_the_labels(tiny_upstreams, clips, one_thread):
    build = lambda: _recognizer("hubert_local", str(tiny_upstreams["hubert"]), clips)  # noqa: E731
    reference = build().probabilities(clips).numpy()
    recognizer = build().quantize("int8")
    upstream = list(recognizer.upstreams.modules())
    assert not [m for m in upstream if type(m) is torch.nn.Linear]
    quantized = [m for m in upstream if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(quantized) == 2 * 6 + 2  # tiny HuBERT: 2 layers of q, k, v, out, fc1, fc2; 2 projections
    assert type(recognizer.members[0].classifier.classifier) is torch.nn.Linear  # the head stays float32
    assert recognizer.quantization == "int8" and recognizer.dtype == torch.float32
    probabilities = recognizer.probabilities(clips)
    difference, flipped = _compare(reference, probabilities.numpy())
    print(f"hubert int8: max |p - p32| = {difference:.2e}, {flipped} labels differ of {len(clips)}")
    assert 1e-6 < difference < INT8_BOUND and flipped <= 1
    # each clip still gets what it gets alone (one activation scale per clip, not per batch)
    alone = torch.cat([recognizer.probabilities([clip]) for clip in clips[:4]])
    torch.testing.assert_close(probabilities[:4], alone, atol=1e-6, rtol=0)
    refused_calls = (recognizer.bfloat16, lambda: recognizer.quantize("int8"), recognizer.description)
    for refused in (*refused_calls, lambda: EmotionRecognizer.ensemble([recognizer])):
        with pytest.raises(ValueError, match="int8"):
            refused()


def test_onnxruntime_int8_graph_within_the_measured_bound(tiny_upstreams, clips, tmp_path, one_thread):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import onnx

    from s3prl_ser.inference.onnx import export_onnx
    from s3prl_ser.inference.quantize import quantize_onnx

    recognizer = _recognizer("hubert_local", str(tiny_upstreams["hubert"]), clips)
    export_onnx(recognizer, tmp_path / "model.onnx")
    quantize_onnx(tmp_path / "model.onnx", tmp_path / "model.int8.onnx")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "model.int8.onnx")).graph.node}
    assert "MatMulInteger" in ops and "Conv" in ops  # MatMul weights int8, convolutions float32
    session = ort.InferenceSession(str(tmp_path / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    # one clip at a time: the graph's activation scales are per tensor, over the padded batch
    feeds = [{"wavs": clip.numpy()[None], "lengths": np.array([len(clip)], dtype=np.int64)} for clip in clips]
    probabilities = np.concatenate([session.run(None, feed)[0] for feed in feeds])
    difference, flipped = _compare(recognizer.probabilities(clips).numpy(), probabilities)
    print(f"onnxruntime int8: max |p - p32| = {difference:.2e}, {flipped} labels differ of {len(clips)}")
    assert 1e-6 < difference < ONNX_INT8_BOUND and flipped <= 1


def test_onnxruntime_int8_convolutions_calibrated_within_the_measured_bound(
    tiny_upstreams, clips, tmp_path, one_thread
):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import onnx

    from s3prl_ser.inference.onnx import export_onnx
    from s3prl_ser.inference.quantize import quantize_onnx

    recognizer = _recognizer("hubert_local", str(tiny_upstreams["hubert"]), clips)
    export_onnx(recognizer, tmp_path / "model.onnx")
    with pytest.raises(ValueError, match="calibration needs at least one clip"):
        quantize_onnx(tmp_path / "model.onnx", tmp_path / "empty.onnx", calibration=[])
    # calibrated on 8 clips, compared on all 32
    quantize_onnx(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", [c.numpy() for c in clips[::4]])
    nodes = onnx.load(str(tmp_path / "model.int8.onnx")).graph.node
    producer = {output: node.op_type for node in nodes for output in node.output}
    int8_convs = [n.name for n in nodes if n.op_type == "Conv" and producer.get(n.input[0]) == "DequantizeLinear"]
    upstream_convs = recognizer.upstreams[0].model.feature_extractor.conv_layers
    # every feature-encoder layer but the first (the waveform), and the positional convolution
    assert sorted(int8_convs) == sorted(
        [f"/conv_layers.{i}.0/Conv" for i in range(1, len(upstream_convs))] + ["/encoder/pos_conv/pos_conv.0/Conv"]
    )
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.int8.onnx"), options, providers=["CPUExecutionProvider"])
    ran = {node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert {"QLinearConv", "DynamicQuantizeMatMul"} <= ran  # onnxruntime runs them in int8
    feeds = [{"wavs": clip.numpy()[None], "lengths": np.array([len(clip)], dtype=np.int64)} for clip in clips]
    probabilities = np.concatenate([session.run(None, feed)[0] for feed in feeds])
    difference, flipped = _compare(recognizer.probabilities(clips).numpy(), probabilities)
    print(f"onnxruntime int8 + convolutions: max |p - p32| = {difference:.2e}, {flipped} labels differ")
    assert 1e-5 < difference < ONNX_INT8_CONV_BOUND and flipped <= 1


def test_from_pretrained_dtype_and_quantize(mini_corpus, mini_meta, tmp_path, one_thread):
    model_dir = tiny_fbank_model(mini_corpus, mini_meta, tmp_path, "fold1")
    clip = next(iter(sorted(mini_corpus.rglob("*.wav"))))
    reference = EmotionRecognizer.from_pretrained(model_dir).predict(clip)
    bf16 = EmotionRecognizer.from_pretrained(model_dir, device="cpu", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16 and bf16.predict(clip).label == reference.label
    for options, message in [
        ({"quantize": "int8"}, "int8 quantizes the upstreams' linear layers, and these upstreams have none"),
        ({"dtype": "float16"}, "float16 on the CPU is not supported"),
        ({"dtype": "int4"}, r"dtype 'int4': a recognizer runs in float32, bfloat16, float16"),
        ({"quantize": "int4"}, "quantize='int4'"),
        ({"quantize": "int8", "dtype": "bfloat16"}, "'int8' with dtype float32 on the CPU"),
    ]:
        with pytest.raises(ValueError, match=message):
            EmotionRecognizer.from_pretrained(model_dir, **options)
    with pytest.raises(ValueError, match="export the float32 model, not this torch.bfloat16 one"):
        bf16.description()
    # the command line: --dtype / --device reach from_pretrained, a refused precision is an error line
    out = tmp_path / "rows.jsonl"
    inference_cli([str(model_dir), str(clip), "--dtype", "bfloat16", "--device", "cpu", "-O", str(out), "-q"])
    assert json.loads(out.read_text())["label"] == reference.label
    with pytest.raises(SystemExit, match=r"^error: float16 on the CPU is not supported"):
        inference_cli([str(model_dir), str(clip), "--dtype", "float16", "--device", "cpu", "-q"])
