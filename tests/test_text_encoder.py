import json

import pytest
import torch

from helpers import overrides
from s3prl_ser.compat import safe_torch_load
from s3prl_ser.ft_hub import FoldMismatchError, resolve_ft_text_encoder
from s3prl_ser.run_downstream import main as run_downstream
from s3prl_ser.text_encoder import TextEncoder, load_transcripts, transcripts_for, write_tiny_bert


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny_bert")


def test_tiny_bert_round_trip(tiny_bert, tmp_path):
    encoder = TextEncoder(tiny_bert).eval()
    texts = ["Excuse me.", "I left the keys on the table.", ""]
    with torch.no_grad():
        features, lengths = encoder(texts)
    assert features.shape == (3, 10, 32) and lengths.tolist() == [5, 10, 2]  # [CLS] ... [SEP]
    assert "[UNK]" not in encoder.tokenizer.tokenize("Where did you put the box?")
    with torch.no_grad():  # a text's valid token features do not depend on its batch
        alone, n = encoder(["Excuse me."])
    assert torch.allclose(alone[0, : n[0]], features[0, :5], atol=1e-5)
    same = write_tiny_bert(tmp_path / "again")
    assert (same / "model.safetensors").read_bytes() == (tiny_bert / "model.safetensors").read_bytes()


def test_weighted_layer_sum(tiny_bert):
    encoder = TextEncoder(tiny_bert, feature_selection="hidden_states").eval()
    assert encoder.layer_weights.shape == (3,)  # embeddings + 2 layers
    with torch.no_grad():
        features, _ = encoder(["Excuse me."])
        output = encoder.model(**encoder.tokenizer(["Excuse me."], return_tensors="pt"), output_hidden_states=True)
    assert torch.allclose(features, torch.stack(output.hidden_states).mean(0), atol=1e-5)  # zero weights: mean


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json.*python -m s3prl_ser.text_encoder tiny"):
        TextEncoder(tmp_path)
    with pytest.raises(FileNotFoundError, match="transcripts not found"):
        load_transcripts(tmp_path / "transcripts.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json: expected an object"):
        load_transcripts(tmp_path / "bad.json")
    with pytest.raises(KeyError, match="t.json: no transcript for b"):
        transcripts_for(["a", "b"], {"a": "x"}, "t.json")


def test_resolve_text_encoder_fold_guard(tiny_bert, tmp_path):
    assert resolve_ft_text_encoder(tiny_bert, "fold2") == tiny_bert  # not fine-tuned: no fold
    export = tmp_path / "ft" / "fold1"
    export.mkdir(parents=True)
    (export / "upstream.json").write_text(json.dumps({"fold": "fold1", "loader": "text", "modality": "text"}))
    assert resolve_ft_text_encoder(tmp_path / "ft", "fold1") == export / "text_encoder"
    with pytest.raises(FoldMismatchError, match="fine-tuned for fold1.*requested for fold3"):
        resolve_ft_text_encoder(export, "fold3")
    with pytest.raises(FileNotFoundError, match="exported folds: fold1"):
        resolve_ft_text_encoder(tmp_path / "ft", "fold3")


@pytest.mark.parametrize("experiment", ["text_only", "fbank_and_text"])
def test_text_stream_in_emotion_ecapa(experiment, tiny_bert, mini_corpus, mini_meta, tmp_path):
    extra = [f"config.downstream_expert.text.encoder={tiny_bert}"]
    if experiment == "text_only":
        extra.append("config.downstream_expert.text.speech=false")
    else:
        extra.append("config.downstream_expert.modelrc.fusion=late")
    run_downstream(["-m", "train", "-u", "fbank", "-d", "emotion_ecapa", "-p", str(tmp_path), "--device", "cpu",
                    "-o", overrides(mini_corpus, mini_meta, steps=8, extra=",,".join(extra))])
    averaged = safe_torch_load(tmp_path / "dev-avg.ckpt")
    aggregators = {k.split(".")[2] for k in averaged["Downstream"] if k.startswith("model.aggregators.")}
    assert aggregators == ({"0"} if experiment == "text_only" else {"0", "1"})
    assert not any("bert" in k or "_text" in k for k in averaged["Downstream"])  # encoder not in checkpoints
    metrics = json.loads((tmp_path / "test_fold1_metrics.json").read_text())
    assert metrics["num_utterances"] == 7


def test_text_cannot_be_fused_early(tiny_bert, mini_corpus, mini_meta, tmp_path):
    with pytest.raises(ValueError, match="can only be fused late"):
        run_downstream(["-m", "train", "-u", "fbank", "-d", "emotion_ecapa", "-p", str(tmp_path), "--device", "cpu",
                        "-o", overrides(mini_corpus, mini_meta, extra=f"config.downstream_expert.text.encoder={tiny_bert},,"
                                        "config.downstream_expert.modelrc.fusion=early")])
