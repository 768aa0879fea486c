"""The text encoder (tiny BERT), transcripts, and the text modality of the fine-tuning stage."""

import json
import re
import shutil

import pytest
import torch

from helpers import die_after_saving, overrides, train_args
from s3prl_ser.cli.run_downstream import main as run_downstream
from s3prl_ser.cli.tiny_bert import main as tiny_bert_cli
from s3prl_ser.data.protocol import FoldMismatchError
from s3prl_ser.fileio import safe_torch_load
from s3prl_ser.finetuning.hub_entries import resolve_ft_text_encoder
from s3prl_ser.models.text_encoder import TextEncoder, load_transcripts, transcripts_for
from s3prl_ser.toy.builtin_corpus import SENTENCES
from s3prl_ser.toy.tiny_bert import write_tiny_bert

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny_bert")


def test_tiny_bert_round_trip(tiny_bert):
    from transformers import AutoModel

    encoder = TextEncoder(tiny_bert).eval()
    assert encoder.output_size == 32 and isinstance(
        AutoModel.from_pretrained(tiny_bert, local_files_only=True), type(encoder.model)
    )
    texts = ["Excuse me.", "I left the keys on the table.", ""]
    with torch.no_grad():
        features, lengths = encoder(texts)
    assert features.shape == (3, 10, 32) and lengths.tolist() == [5, 10, 2]  # [CLS] ... [SEP]
    for text, batched, n in zip(texts, features, lengths):  # valid tokens do not depend on the batch
        with torch.no_grad():
            alone, n_alone = encoder([text])
        assert n_alone.item() == n and torch.allclose(alone[0], batched[:n], atol=1e-5), text
    unknown = {s: t for s in SENTENCES if "[UNK]" in (t := encoder.tokenizer.tokenize(s))}
    assert not unknown


def test_tiny_bert_is_deterministic_by_seed(tiny_bert, tmp_path):
    weights = lambda path: (path / "model.safetensors").read_bytes()  # noqa: E731
    assert weights(write_tiny_bert(tmp_path / "again")) == weights(tiny_bert)
    tiny_bert_cli([str(tmp_path / "seed1"), "--seed", "1"])
    assert weights(write_tiny_bert(tmp_path / "seed1_again", seed=1)) == weights(tmp_path / "seed1")
    assert weights(tmp_path / "seed1") != weights(tiny_bert)
    assert (tmp_path / "seed1" / "vocab.txt").read_text() == (tiny_bert / "vocab.txt").read_text()


def test_weighted_sum_of_layers(tiny_bert):
    encoder = TextEncoder(tiny_bert, feature_selection="hidden_states").eval()
    weights = encoder.featurizer.weights
    assert isinstance(weights, torch.nn.Parameter) and weights.shape == (3,)  # embeddings + 2 layers
    texts = ["The door was open.", "Excuse me."]
    with torch.no_grad():
        layers, _ = encoder.hidden_states(texts)
        equal, _ = encoder(texts)
        weights.copy_(torch.tensor([0.0, -30.0, 30.0]))  # ~ the last layer only
        last, _ = encoder(texts)
    assert torch.allclose(equal, torch.stack(layers).mean(dim=0), atol=1e-6)
    assert torch.allclose(last, layers[-1], atol=1e-5)
    encoder(texts)[0].sum().backward()
    assert weights.grad is not None and weights.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="feature_selection must be one of"):
        TextEncoder(tiny_bert, feature_selection="first")


def test_missing_encoder_files(tiny_bert, tmp_path):
    with pytest.raises(FileNotFoundError, match="directory not found.*python -m s3prl_ser.cli.tiny_bert DIR"):
        TextEncoder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no config.json.*save_pretrained"):
        TextEncoder(tmp_path)
    # Without a vocabulary AutoTokenizer would silently map every word to [UNK].
    for files, message in (
        (("vocab.txt", "tokenizer.json"), "has no tokenizer vocabulary"),
        (("model.safetensors",), "cannot load the text encoder in"),
    ):
        broken = shutil.copytree(tiny_bert, tmp_path / files[0])
        for name in files:
            (broken / name).unlink()
        with pytest.raises(FileNotFoundError, match=re.escape(message)) as error:
            TextEncoder(broken)
        assert str(broken) in str(error.value) and "python -m s3prl_ser.cli.tiny_bert DIR" in str(error.value)


def test_transcripts_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="transcripts not found.*transcripts.json"):
        load_transcripts(tmp_path / "transcripts.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json: expected an object"):
        load_transcripts(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        load_transcripts(tmp_path / "broken.json")
    (tmp_path / "t.json").write_text(json.dumps({"a": "x"}))
    assert transcripts_for(["a"], load_transcripts(tmp_path / "t.json"), tmp_path / "t.json") == ["x"]
    with pytest.raises(KeyError, match="t.json: no transcript for b"):
        transcripts_for(["a", "b"], {"a": "x"}, "t.json")


def test_resolve_text_encoder_fold_guard(tiny_bert, tmp_path):
    assert resolve_ft_text_encoder(tiny_bert, "fold2") == tiny_bert  # not fine-tuned: no fold
    export = tmp_path / "ft" / "fold1"
    (export / "text_encoder").mkdir(parents=True)
    (export / "upstream.json").write_text(json.dumps({"fold": "fold1", "loader": "text", "modality": "text"}))
    record = {"fold": "fold1", "corpus": "c", "split": {"rule": "superb"}, "dev": "d", "sizes": {}}
    (export / "text_encoder" / "config.json").write_text(json.dumps({"ser_protocol": record}))
    assert resolve_ft_text_encoder(tmp_path / "ft", "fold1") == export / "text_encoder"
    assert resolve_ft_text_encoder(export, "fold1") == export / "text_encoder"
    with pytest.raises(FoldMismatchError, match="fine-tuned for fold1.*requested for fold3"):
        resolve_ft_text_encoder(export, "fold3")
    with pytest.raises(FileNotFoundError, match="exported folds: fold1"):
        resolve_ft_text_encoder(tmp_path / "ft", "fold3")
    speech = tmp_path / "speech" / "fold1"
    speech.mkdir(parents=True)
    (speech / "upstream.json").write_text(json.dumps({"fold": "fold1", "loader": "hubert_local", "modality": "speech"}))
    with pytest.raises(ValueError, match="fine-tuned speech upstream.*not a text encoder"):
        resolve_ft_text_encoder(speech.parent, "fold1")
    (export / "text_encoder" / "config.json").write_text("{}")  # an export that records no fold
    with pytest.raises(FoldMismatchError, match="records no fold"):
        resolve_ft_text_encoder(export, "fold1")


@pytest.mark.parametrize("experiment", ["text_only", "fbank_and_text"])
def test_text_stream_in_emotion_ecapa(experiment, tiny_bert, mini_corpus, mini_meta, tmp_path):
    extra = [f"config.downstream_expert.text.encoder={tiny_bert}"]
    if experiment == "text_only":
        extra.append("config.downstream_expert.text.speech=false")
    else:
        extra.append("config.downstream_expert.modelrc.fusion=late")
    run_downstream(train_args(tmp_path, overrides(mini_corpus, mini_meta, steps=8, extra=",,".join(extra))))
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
    with pytest.raises(SystemExit, match="^error: .*can only be fused late"):
        run_downstream(
            train_args(
                tmp_path,
                overrides(
                    mini_corpus,
                    mini_meta,
                    extra=f"config.downstream_expert.text.encoder={tiny_bert},,"
                    "config.downstream_expert.modelrc.fusion=early",
                ),
            )
        )


def _text_ft(tiny_bert, corpus, meta, ft_dir, extra=""):
    from s3prl_ser.cli.finetune import main as upstream_ft

    return upstream_ft(
        [
            "-u",
            "text",
            "-k",
            str(tiny_bert),
            "-p",
            str(ft_dir),
            "--folds",
            "fold1",
            "--device",
            "cpu",
            "-o",
            f"config.datarc.root={corpus},,config.datarc.meta_data={meta},,"
            "config.runner.total_steps=6,,config.runner.eval_step=2,,config.runner.save_step=2,,"
            "config.runner.log_step=2,,config.scheduler.warmup_steps=1,,"
            "config.datarc.num_workers=0,,config.datarc.train_batch_size=4,,"
            "config.upstream.freeze_transformer_steps=0,,"
            "config.upstream.feature_selection=hidden_states,,"
            "config.optimizer.upstream_lr=1.0e-3,,config.checkpoint_averaging.best_k=2" + extra,
        ]
    )


@pytest.fixture(scope="module")
def text_ft(tiny_bert, mini_corpus, mini_meta, tmp_path_factory):
    """``python -m upstream_ft -u text`` on fold1: 6 steps, weighted sum of layers, 2 best averaged.

    Audio reads fail inside it: text fine-tuning needs transcripts only.
    """
    ft_dir = tmp_path_factory.mktemp("text_ft")

    def no_audio(path, **_):
        raise AssertionError(f"text fine-tuning read audio: {path}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("s3prl_ser.data.emotion_dataset.load_audio", no_audio)
        return ft_dir, _text_ft(tiny_bert, mini_corpus, mini_meta, ft_dir)


def test_text_finetuning_exports_the_average_of_the_kept_checkpoints(text_ft, tiny_bert):
    ft_dir, records = text_ft
    fold_dir = ft_dir / "fold1"
    metadata = json.loads((fold_dir / "upstream.json").read_text())
    assert records["fold1"] == metadata and metadata["averaged"] and len(metadata["checkpoints"]) == 2
    assert metadata["modality"] == "text" and metadata["loader"] == "text" and metadata["fold"] == "fold1"
    assert metadata["base_ckpt"] == str(tiny_bert)
    assert metadata["config"]["upstream"]["feature_selection"] == "hidden_states"
    assert metadata["test"]["num_utterances"] == 7 and "transformers" in metadata["environment"]["packages"]
    kept = [safe_torch_load(fold_dir / c["file"]) for c in metadata["checkpoints"]]
    exported = TextEncoder(resolve_ft_text_encoder(ft_dir, "fold1")).model.state_dict()
    base = TextEncoder(tiny_bert).model.state_dict()
    assert exported.keys() == base.keys() == kept[0]["model_weight"].keys()
    for key, value in exported.items():
        average = (kept[0]["model_weight"][key].double() + kept[1]["model_weight"][key].double()) / 2
        assert torch.allclose(value.double(), average, atol=1e-6), key
    assert not torch.allclose(
        exported["encoder.layer.0.attention.self.query.weight"], base["encoder.layer.0.attention.self.query.weight"]
    )  # fine-tuning changed it
    head = safe_torch_load(fold_dir / "upstream.ckpt")["ft_head"]  # the layer weights were trained and averaged
    layer_weights = [k["ft_head"]["featurizer.weights"] for k in kept]
    assert torch.allclose(head["featurizer.weights"], (layer_weights[0] + layer_weights[1]) / 2)
    assert layer_weights[0].abs().sum() > 0
    log = (fold_dir / "log.log").read_text().splitlines()
    assert [line for line in log if line.startswith("test")] == [log[-1]]  # scored once, at the end


def test_text_finetuning_refuses_a_missing_encoder(mini_corpus, mini_meta, tmp_path):
    from s3prl_ser.cli.finetune import main as upstream_ft

    opts = [
        "--folds",
        "fold1",
        "--device",
        "cpu",
        "-o",
        f"config.datarc.root={mini_corpus},,config.datarc.meta_data={mini_meta},,config.datarc.num_workers=0",
    ]
    with pytest.raises(SystemExit, match="-u text needs -k DIR"):
        upstream_ft(["-u", "text", "-p", str(tmp_path / "ft"), *opts])
    with pytest.raises(SystemExit, match=f"{re.escape(str(tmp_path / 'nowhere'))}.*cli.tiny_bert DIR"):
        upstream_ft(["-u", "text", "-k", str(tmp_path / "nowhere"), "-p", str(tmp_path / "ft"), *opts])
    assert not (tmp_path / "ft" / "fold1" / "log.log").exists()  # refused before any training


def test_text_export_fold_guard(text_ft):
    ft_dir, _ = text_ft
    with pytest.raises(FoldMismatchError, match="fine-tuned for fold1.*requested for fold2"):
        resolve_ft_text_encoder(ft_dir / "fold1", "fold2")
    with pytest.raises(FileNotFoundError, match="no text encoder for fold2.*exported folds: fold1"):
        resolve_ft_text_encoder(ft_dir, "fold2")
    encoder = ft_dir / "fold1" / "text_encoder"  # the exported encoder given directly
    with pytest.raises(FoldMismatchError, match="fine-tuned for fold1.*requested for fold4"):
        resolve_ft_text_encoder(encoder, "fold4")
    assert resolve_ft_text_encoder(encoder, "fold1") == encoder


def test_text_rerun_skips_the_finished_fold(text_ft, tiny_bert, mini_corpus, mini_meta, capsys):
    ft_dir, _ = text_ft
    before = (ft_dir / "fold1" / "text_encoder" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    _text_ft(tiny_bert, mini_corpus, mini_meta, ft_dir)
    assert "fold1: already exported" in capsys.readouterr().out
    assert (ft_dir / "fold1" / "text_encoder" / "model.safetensors").stat().st_mtime_ns == before


def test_interrupted_text_run_resumes_to_the_same_result(
    text_ft, tiny_bert, mini_corpus, mini_meta, tmp_path, monkeypatch
):
    die_after_saving(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _text_ft(tiny_bert, mini_corpus, mini_meta, tmp_path)
    monkeypatch.undo()
    _text_ft(tiny_bert, mini_corpus, mini_meta, tmp_path)
    assert "resumed from" in (tmp_path / "fold1" / "log.log").read_text()
    straight, resumed = (safe_torch_load(d / "fold1" / "upstream.ckpt") for d in (text_ft[0], tmp_path))
    for section in ("model_weight", "ft_head"):
        assert all(torch.equal(straight[section][k], resumed[section][k]) for k in straight[section]), section


def test_text_export_feeds_the_downstream_text_stream(text_ft, mini_corpus, mini_meta, tmp_path):
    ft_dir, _ = text_ft

    def downstream(expdir, extra):
        run_downstream(train_args(expdir, overrides(mini_corpus, mini_meta, steps=4, every=2, extra=extra)))

    downstream(
        tmp_path / "exp10",
        f"config.downstream_expert.text.encoder={ft_dir},,config.downstream_expert.text.speech=false",
    )
    assert (tmp_path / "exp10" / "final.json").is_file()
    # fold1's export for fold2's test session
    with pytest.raises(SystemExit, match="^error: .*fine-tuned for fold1.*requested for fold2"):
        downstream(
            tmp_path / "leak",
            f"config.downstream_expert.text.encoder={ft_dir / 'fold1'},,"
            "config.downstream_expert.datarc.test_fold=fold2",
        )


@pytest.mark.parametrize("selection", ["last_hidden_state", "hidden_states"])
def test_text_stream_layer_is_configured_in_one_place(selection, tiny_bert, mini_corpus, mini_meta, tmp_path):
    """``text.feature_selection``: the frozen encoder's last layer, or the equal-weight mean of all layers."""
    import importlib

    from s3prl_ser.experiments.launch import load_task_config
    from s3prl_ser.upstreams.registry import register

    register()
    DownstreamExpert = importlib.import_module("s3prl.downstream.emotion_ecapa.expert").DownstreamExpert
    expert_config = load_task_config("emotion_ecapa")["downstream_expert"]
    expert_config["datarc"].update(root=str(mini_corpus), meta_data=str(mini_meta), num_workers=0)
    expert_config["text"].update(encoder=str(tiny_bert), feature_selection=selection, speech=False)
    expert = DownstreamExpert(16, expert_config, str(tmp_path), upstream_rate=160)
    names = [name for _, _, name in [expert.test_dataset[i] for i in range(2)]]
    streams = expert._text_stream(names, torch.device("cpu"))
    reference = TextEncoder(tiny_bert).eval()
    with torch.no_grad():
        layers, lengths = reference.hidden_states(transcripts_for(names, expert.transcripts, expert.transcripts_path))
    expected = layers[-1] if selection == "last_hidden_state" else torch.stack(layers).mean(dim=0)
    for stream, full, length in zip(streams, expected, lengths.tolist()):
        torch.testing.assert_close(stream, full[:length], atol=1e-5, rtol=1e-5)
