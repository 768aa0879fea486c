"""Several upstreams in one run, early and late fusion, and DDP with 2 processes on CPU."""

import json
from pathlib import Path

import pytest
import torch

from helpers import overrides, torchrun, train_args
from s3prl_ser.cli.run_downstream import main as run_downstream
from s3prl_ser.fileio import safe_torch_load

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def meta(mini_meta):
    return mini_meta


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_fbank_and_hubert_fusion_trains_and_averages(fusion, mini_corpus, meta, tiny_upstreams, tmp_path):
    run_downstream(
        train_args(
            tmp_path,
            overrides(mini_corpus, meta, steps=8, extra=f"config.downstream_expert.modelrc.fusion={fusion}"),
            upstream="fbank,hubert_local",
            ckpt=f",{tiny_upstreams['hubert']}",
        )
    )
    final = json.loads((tmp_path / "final.json").read_text())
    averaged = safe_torch_load(tmp_path / "dev-avg.ckpt")
    kept = [safe_torch_load(tmp_path / s["file"]) for s in final["selected"]]
    key = "model.classifier.weight"
    assert torch.allclose(averaged["Downstream"][key], sum(k["Downstream"][key] for k in kept) / len(kept), atol=1e-6)
    aggregators = {k.split(".")[2] for k in averaged["Downstream"] if k.startswith("model.aggregators.")}
    assert aggregators == ({"0", "1"} if fusion == "late" else {"0"})
    # one featurizer per upstream (hubert's has learnable layer weights)
    assert any(k.startswith("featurizers.1.") for k in averaged["Featurizer"])

    from s3prl_ser.inference import EmotionRecognizer

    prediction = EmotionRecognizer.from_pretrained(tmp_path).predict(torch.zeros(12000), sample_rate=16000)
    assert prediction.label in averaged["ClassNames"]


def test_early_fusion_of_fbank_alone_is_refused(mini_corpus, meta, tmp_path):
    with pytest.raises(SystemExit, match="^error: .*needs several upstreams"):
        run_downstream(
            train_args(tmp_path, overrides(mini_corpus, meta, extra="config.downstream_expert.modelrc.fusion=early"))
        )


def test_two_processes_match_one(mini_corpus, meta, tiny_upstreams, tmp_path):
    """torchrun with 2 gloo processes on CPU trains the same model as 1 process (mean pooling:
    no BatchNorm, whose train-mode statistics are per process on CPU)."""
    opts = overrides(mini_corpus, meta, steps=8, every=4, extra="config.downstream_expert.modelrc.aggregator=mean")
    args = train_args(None, opts, upstream="hubert_local", ckpt=tiny_upstreams["hubert"])
    run_downstream(args + ["-p", str(tmp_path / "one")])
    two = torchrun(
        str(REPO / "run_downstream.py"),
        *args,
        "-p",
        str(tmp_path / "two"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = safe_torch_load(tmp_path / "one" / "dev-avg.ckpt")
    b = safe_torch_load(tmp_path / "two" / "dev-avg.ckpt")
    assert safe_torch_load(tmp_path / "two" / "states-8.ckpt")["WorldSize"] == 2
    step4, step8 = (safe_torch_load(tmp_path / "two" / f"dev-top-step{s}.ckpt")["Downstream"] for s in (4, 8))
    assert not torch.equal(step4["model.classifier.weight"], step8["model.classifier.weight"])  # it trained
    for section in ("Downstream", "Featurizer"):
        for key in a[section]:
            assert torch.allclose(a[section][key], b[section][key], atol=1e-5), (section, key)
    metrics = [json.loads((tmp_path / run / "test_fold1_metrics.json").read_text()) for run in ("one", "two")]
    assert metrics[0]["confusion"] == metrics[1]["confusion"]
