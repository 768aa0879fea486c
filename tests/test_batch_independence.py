"""A file's probabilities do not depend on its batch-mates, for every upstream kind.

fbank, tiny HuBERT and tiny wav2vec 2.0 (both with Base's GroupNorm feature encoder), and
fbank + HuBERT fused late: 8 files of 1-8 s predicted alone (batch 1), in length-sorted
batches of 8 (the folder path) and in one unsorted batch with two equal lengths
(``predict_batch``) agree within 1e-5 on every probability (measured ~1e-7). The same
files run through the upstream as one padded batch (what s3prl's runner does) move by far
more, which is what these paths must avoid.
"""

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import randomize_batchnorm
from s3prl_ser.inference.recognizer import EmotionRecognizer, RecognizerMember, _classifier_config
from s3prl_ser.models.fusion import EmotionClassifier
from s3prl_ser.upstreams.multi_upstream import build_featurizer, build_upstreams
from s3prl_ser.upstreams.registry import register

SECONDS = [3.0, 1.0, 8.0, 3.0, 1.37, 5.25, 2.0, 6.93]  # unsorted; two equal lengths share an upstream call
TOLERANCE = 1e-5
ECAPA = {"channels": [16, 16, 16, 16, 48], "res2net_scale": 4, "attention_channels": 8, "se_channels": 8}


def _recognizer(upstream: str, ckpt: str | None, fusion: str | None = None) -> EmotionRecognizer:
    register()
    torch.manual_seed(0)
    upstream_module = build_upstreams(upstream, ckpt)
    featurizer = build_featurizer(upstream_module, "hidden_states", None, "cpu", False)
    config = _classifier_config(featurizer, 4, {"ecapa": dict(ECAPA, lin_neurons=16), "fusion": fusion})
    classifier = EmotionClassifier(**config)
    randomize_batchnorm(classifier)  # eval-mode BatchNorm that shifts whatever reaches it
    return EmotionRecognizer([upstream_module], [RecognizerMember(featurizer, classifier)], ["a", "b", "c", "d"])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("varied_lengths")
    rng = np.random.default_rng(0)
    paths = []
    for index, seconds in enumerate(SECONDS):
        path = root / f"clip{index}.wav"
        sf.write(path, rng.uniform(-0.3, 0.3, int(seconds * 16000)).astype("float32"), 16000, subtype="FLOAT")
        paths.append(path)
    return paths


@pytest.mark.parametrize("kind", ["fbank", "hubert", "wav2vec2", "fbank+hubert"])
def test_batched_probabilities_equal_alone(kind, files, tiny_upstreams, one_thread):
    if kind == "fbank":
        recognizer = _recognizer("fbank", None)
    elif kind == "fbank+hubert":
        recognizer = _recognizer("fbank,hubert_local", f",{tiny_upstreams['hubert']}", fusion="late")
    else:
        recognizer = _recognizer(f"{kind}_local", str(tiny_upstreams[kind]))
    alone = recognizer.predict_files(files, batch_size=1)
    sorted_batches = recognizer.predict_files(files, batch_size=8)
    unsorted_batch = recognizer.predict_batch(files, batch_size=None)  # every file in one pass
    assert [row["status"] for row in alone] == ["ok"] * len(files)
    expected = torch.tensor([[row["probabilities"][c] for c in recognizer.class_names] for row in alone])
    for rows in (sorted_batches, [{"probabilities": p.probabilities} for p in unsorted_batch]):
        got = torch.tensor([[row["probabilities"][c] for c in recognizer.class_names] for row in rows])
        assert (got - expected).abs().max().item() <= TOLERANCE
    assert [p.label for p in unsorted_batch] == [row["label"] for row in alone]

    # The case has teeth: the upstream on the padded batch (s3prl's way) moves probabilities far more.
    wavs = [recognizer.waveform(path) for path in files]
    member = recognizer.members[0]
    with torch.no_grad():
        padded = member(wavs, recognizer.upstreams[0](wavs)).softmax(dim=-1)
    assert (padded - expected).abs().max().item() > 10 * TOLERANCE
