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
    from s3prl_ser.inference import EmotionRecognizer

    with pytest.raises(ValueError, match="also reads transcripts"):
        EmotionRecognizer.from_pretrained(tmp_path)


def test_text_cannot_be_fused_early(tiny_bert, mini_corpus, mini_meta, tmp_path):
    with pytest.raises(ValueError, match="can only be fused late"):
        run_downstream(["-m", "train", "-u", "fbank", "-d", "emotion_ecapa", "-p", str(tmp_path), "--device", "cpu",
                        "-o", overrides(mini_corpus, mini_meta, extra=f"config.downstream_expert.text.encoder={tiny_bert},,"
                                        "config.downstream_expert.modelrc.fusion=early")])


def _text_ft(tiny_bert, corpus, meta, ft_dir, capsys=None):
    from upstream_ft.__main__ import main as upstream_ft

    return upstream_ft(["-u", "text", "-k", str(tiny_bert), "-p", str(ft_dir), "--folds", "fold1", "--device", "cpu",
                        "-o", f"config.datarc.root={corpus},,config.datarc.meta_data={meta},,"
                              "config.runner.total_steps=6,,config.runner.eval_step=2,,config.runner.save_step=2,,"
                              "config.scheduler.warmup_steps=1,,config.datarc.num_workers=0,,"
                              "config.datarc.train_batch_size=4,,config.upstream.freeze_transformer_steps=0,,"
                              "config.optimizer.upstream_lr=1.0e-3,,config.checkpoint_averaging.best_k=2"])


def test_text_finetuning_stage_exports_an_averaged_encoder(tiny_bert, mini_corpus, mini_meta, tmp_path, capsys):
    ft_dir = tmp_path / "ft"
    records = _text_ft(tiny_bert, mini_corpus, mini_meta, ft_dir)
    metadata = json.loads((ft_dir / "fold1" / "upstream.json").read_text())
    assert metadata["modality"] == "text" and metadata["fold"] == "fold1" and records["fold1"]["loader"] == "text"
    kept = [safe_torch_load(ft_dir / "fold1" / c["file"])["model_weight"] for c in metadata["checkpoints"]]
    exported = TextEncoder(resolve_ft_text_encoder(ft_dir, "fold1")).model.state_dict()
    base = TextEncoder(tiny_bert).model.state_dict()
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.allclose(exported[key], sum(k[key] for k in kept) / len(kept), atol=1e-6)
    assert not torch.allclose(exported[key], base[key])  # fine-tuning changed the encoder
    capsys.readouterr()
    _text_ft(tiny_bert, mini_corpus, mini_meta, ft_dir)  # finished folds are skipped
    assert "fold1: already exported" in capsys.readouterr().out

    from s3prl_ser.run_downstream import main as run_downstream

    run_downstream(["-m", "train", "-u", "fbank", "-d", "emotion_ecapa", "-p", str(tmp_path / "exp10"), "--device", "cpu",
                    "-o", overrides(mini_corpus, mini_meta, steps=4, every=2,
                                    extra=f"config.downstream_expert.text.encoder={ft_dir},,config.downstream_expert.text.speech=false")])
    assert (tmp_path / "exp10" / "final.json").is_file()
    with pytest.raises(FoldMismatchError):
        run_downstream(["-m", "train", "-u", "fbank", "-d", "emotion_ecapa", "-p", str(tmp_path / "leak"), "--device", "cpu",
                        "-o", overrides(mini_corpus, mini_meta, extra=f"config.downstream_expert.text.encoder={ft_dir / 'fold1'},,"
                                        "config.downstream_expert.datarc.test_fold=fold2")])
