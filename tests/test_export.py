"""python -m s3prl_ser.export: self-contained model directories, loaded offline, checked, ensembled."""

import hashlib
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers import overrides, train_args
from s3prl_ser.cli.cross_validate import main as cross_validate
from s3prl_ser.cli.export import main as export_cli
from s3prl_ser.cli.run_downstream import main as run_downstream
from s3prl_ser.fileio import atomic_torch_save, safe_torch_load
from s3prl_ser.inference import EmotionRecognizer
from s3prl_ser.inference.export import ExportError, export_run
from s3prl_ser.inference.model_dir import ModelDirError
from s3prl_ser.inference.publish import hub_files, push_model_dir


@pytest.fixture(scope="module")
def cv_run(mini_corpus, mini_meta, tmp_path_factory, one_thread):
    """fbank + tiny ECAPA-TDNN, folds 1 and 2 (4 steps each)."""
    run = tmp_path_factory.mktemp("cv") / "fbank_cv"
    cross_validate(
        ["-p", str(run), "--folds", "fold1,fold2", "-u", "fbank", "-d", "emotion_ecapa", "--device", "cpu"]
        + ["-o", overrides(mini_corpus, mini_meta, steps=4, every=2)]
    )
    return run


@pytest.fixture(scope="module")
def fused_run(mini_corpus, mini_meta, tiny_upstreams, tmp_path_factory, one_thread):
    """fbank and a tiny HuBERT (late fusion), fold1; the HuBERT checkpoint is a private copy
    the tests may delete."""
    root = tmp_path_factory.mktemp("fused")
    ckpt = shutil.copy(tiny_upstreams["hubert"], root / "tiny_hubert.pt")
    opts = overrides(mini_corpus, mini_meta, steps=4, every=2, extra="config.downstream_expert.modelrc.fusion=late")
    run_downstream(
        train_args(root / "fold1", opts, upstream="fbank,hubert_local", ckpt=f",{ckpt}", extra=("-v", "fold1"))
    )
    return root / "fold1", Path(ckpt)


def _reseal(model_dir: Path, config: dict) -> None:
    """Write ``config`` as the directory's config.json with a matching config.sha256, computed here
    by hand (sorted keys, no spaces, ASCII JSON): an edit made on purpose, digest and all."""
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    (model_dir / "config.sha256").write_text(hashlib.sha256(canonical).hexdigest() + "\n")


def _wavs():
    rng = np.random.default_rng(0)
    return [torch.from_numpy(rng.uniform(-0.3, 0.3, n).astype("float32")) for n in (16000, 23000, 6000)]


def test_fold_export_gives_the_runs_own_probabilities(cv_run, mini_corpus, mini_meta, tmp_path, capsys):
    export_cli([str(cv_run), "--fold", "fold1", "-o", str(tmp_path / "model")])
    assert "wrote" in capsys.readouterr().out
    exported = EmotionRecognizer.from_pretrained(tmp_path / "model")
    run = EmotionRecognizer.from_pretrained(cv_run / "fold1")
    assert torch.equal(exported.probabilities(_wavs()), run.probabilities(_wavs()))
    items = json.loads((mini_meta / "Session1" / "test_meta_data.json").read_text())["meta_data"]
    labels = [p.label for p in exported.predict_batch([mini_corpus / item["path"] for item in items])]
    written = [line.split()[1] for line in (cv_run / "fold1" / "test_fold1_predict.txt").read_text().splitlines()]
    assert labels == written  # what the run itself predicted on its test session
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["class_names"] == safe_torch_load(cv_run / "fold1" / "dev-avg.ckpt")["ClassNames"]
    assert config["source"] == {"kind": "fold", "run": "fbank_cv", "folds": ["fold1"]}
    assert config["members"][0]["source"]["checkpoint"] == "fold1/dev-avg.ckpt"  # relative to the run


def test_fused_export_embeds_the_upstream_and_loads_offline(fused_run, tmp_path, monkeypatch):
    run, ckpt = fused_run
    expected = EmotionRecognizer.from_pretrained(run).probabilities(_wavs())
    export_run(run, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    specs = config["upstreams"][0]
    assert [s["entry"] for s in specs] == ["fbank", "hubert_local"]
    assert specs[1]["converted"]["model_cfg"]["encoder_embed_dim"] == 48
    ckpt.unlink()  # the -k file is gone ...

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access while loading a model directory: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)  # ... and so is the network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = EmotionRecognizer.from_pretrained(tmp_path / "model")
    assert torch.equal(loaded.probabilities(_wavs()), expected)
    with pytest.raises(FileNotFoundError, match="tiny_hubert.pt"):
        EmotionRecognizer.from_pretrained(run)  # the run itself needs its -k file


def test_ensemble_averages_the_fold_models(cv_run, tmp_path):
    export_cli([str(cv_run), "--ensemble", "-o", str(tmp_path / "ens")])
    ensemble = EmotionRecognizer.from_pretrained(tmp_path / "ens")
    assert len(ensemble.members) == 2 and len(ensemble.upstreams) == 1  # one shared fbank upstream
    folds = [EmotionRecognizer.from_pretrained(cv_run / f).probabilities(_wavs()) for f in ("fold1", "fold2")]
    assert not torch.allclose(folds[0], folds[1], atol=1e-6)  # two different models ...
    assert torch.allclose(ensemble.probabilities(_wavs()), (folds[0] + folds[1]) / 2, atol=1e-6)  # ... averaged
    card = (tmp_path / "ens" / "README.md").read_text()
    for fold in ("fold1", "fold2"):
        metrics = json.loads((cv_run / fold / f"test_{fold}_metrics.json").read_text())
        assert f"| {fold} | {100 * metrics['wa']:.2f} | {100 * metrics['ua']:.2f} |" in card
    assert "The ensemble itself has no held-out score" in card


def test_card_metadata_is_what_the_hub_parses(cv_run, tmp_path):
    from huggingface_hub import ModelCard, metadata_load

    out = export_run(cv_run, tmp_path / "ens", ensemble=True)
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["pipeline_tag"] == "audio-classification"
    assert data["library_name"] == "s3prl-ser" and data["datasets"] == ["IEMOCAP"]  # as the protocol names it
    assert {"speech-emotion-recognition", "audio-classification", "s3prl", "fbank"} <= set(data["tags"])
    assert data["metrics"] == ["accuracy", "unweighted_accuracy", "f1"]
    found = {
        (result["dataset"]["split"], metric["type"]): metric["value"]
        for entry in data["model-index"]
        for result in entry["results"]
        for metric in result["metrics"]
    }
    expected, names = {}, {"wa": "accuracy", "ua": "unweighted_accuracy", "macro_f1": "f1"}
    for fold in ("fold1", "fold2"):
        metrics = json.loads((cv_run / fold / f"test_{fold}_metrics.json").read_text())
        expected |= {(fold, metric): metrics[key] for key, metric in names.items()}
    for metric in names.values():
        expected["mean over 2 folds", metric] = (expected["fold1", metric] + expected["fold2", metric]) / 2
    assert found.keys() == expected.keys()
    assert all(found[key] == pytest.approx(value, abs=1e-12) for key, value in expected.items())
    assert {r.task_type for r in card.data.eval_results} == {"audio-classification"}
    assert metadata_load(out / "README.md") == data  # the front matter round-trips
    assert "| fold1 |" in card.text and "The ensemble itself has no held-out score" in card.text  # prose kept


def test_tampered_or_mismatched_directories_are_refused(cv_run, tmp_path):
    export_run(cv_run, tmp_path / "a", fold="fold1")
    export_run(cv_run, tmp_path / "b", fold="fold2")
    weights = tmp_path / "a" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match=r"a/model\.safetensors: sha256 .* differs from config\.json"):
        EmotionRecognizer.from_pretrained(tmp_path / "a")
    shutil.copy(tmp_path / "b" / "model.safetensors", weights)  # the other fold's weights: same size, other digest
    with pytest.raises(ModelDirError, match="comes from another export"):
        EmotionRecognizer.from_pretrained(tmp_path / "a")
    config_path = tmp_path / "b" / "config.json"
    config = json.loads(config_path.read_text())
    config["class_names"] = config["class_names"][:3]  # a config edited by hand: 3 classes, 4 outputs
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"b/config\.json: its digest differs from config\.sha256"):
        EmotionRecognizer.from_pretrained(tmp_path / "b")
    _reseal(tmp_path / "b", config)  # the digest rewritten too: the shapes still refuse it
    with pytest.raises(ModelDirError, match=r"config\.json: classifier num_classes 4 does not match 3"):
        EmotionRecognizer.from_pretrained(tmp_path / "b")
    config["format_version"] = 99
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="format version 99"):
        EmotionRecognizer.from_pretrained(tmp_path / "b")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_run(cv_run, tmp_path / "b", fold="fold2")
    export_run(cv_run, tmp_path / "b", fold="fold2", overwrite=True)  # replaced whole
    EmotionRecognizer.from_pretrained(tmp_path / "b")


def test_hub_layout_and_upload_of_the_verified_files_only(cv_run, tmp_path, monkeypatch):
    import inspect

    from huggingface_hub import HfApi
    from safetensors import safe_open

    out = export_run(cv_run, tmp_path / "model", fold="fold2")
    published = ["README.md", "config.json", "config.sha256", "model.safetensors"]
    assert hub_files(out) == published
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "s3prl-ser" and front["pipeline_tag"] == "audio-classification"
    assert front["s3prl_ser"]["classes"] == json.loads((out / "config.json").read_text())["class_names"]
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert weights.metadata() == {"format": "pt"}  # what transformers/the Hub expect of PyTorch weights
    secret = tmp_path / "secret.txt"
    secret.write_text("token")
    (out / "notes.txt").write_text("private")  # files the export did not write ...
    (out / "linked.txt").symlink_to(secret)
    (out / "sub").mkdir()
    (out / "sub" / "x.bin").write_bytes(b"x")

    signatures = {name: inspect.signature(getattr(HfApi, name)).parameters for name in ("create_repo", "create_commit")}
    calls = []  # huggingface_hub's own API, its two network calls recorded instead of sent
    monkeypatch.setattr(HfApi, "create_repo", lambda self, **kw: calls.append(("create_repo", kw)) or "URL")
    monkeypatch.setattr(HfApi, "create_commit", lambda self, **kw: calls.append(("create_commit", kw)))
    assert push_model_dir(out, "someone/ser-fold2") == "URL"
    assert [name for name, _ in calls] == ["create_repo", "create_commit"]
    assert calls[0][1] == {"repo_id": "someone/ser-fold2", "repo_type": "model", "private": False, "exist_ok": True}
    commit = calls[1][1]
    assert (commit["repo_id"], commit["repo_type"]) == ("someone/ser-fold2", "model")
    operations = commit["operations"]
    assert [op.path_in_repo for op in operations] == published  # ... are not published
    assert [Path(op.path_or_fileobj) for op in operations] == [out / name for name in published]
    for name, kwargs in calls:  # the keywords exist in the installed huggingface_hub
        assert set(kwargs) <= set(signatures[name]), name
    (out / "README.md").rename(out / "card.md")
    (out / "README.md").symlink_to(secret)  # a card linked to a private file is not published
    calls.clear()
    with pytest.raises(ModelDirError, match="README.md: not a regular file"):
        push_model_dir(out, "someone/ser-fold2")
    (out / "README.md").unlink()
    (out / "card.md").rename(out / "README.md")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text((out / "config.json").read_text().replace('"neu"', '"calm"'))
    with pytest.raises(ModelDirError, match="config.json: its digest differs"):
        push_model_dir(out, "someone/ser-fold2")
    config["files"]["../secret.txt"] = {"sha256": hashlib.sha256(b"token").hexdigest(), "bytes": 5}
    _reseal(out, config)  # a listed file outside the directory, digest and all
    with pytest.raises(ModelDirError, match=r"files: '\.\./secret\.txt' is not a weight file of the directory"):
        push_model_dir(out, "someone/ser-fold2")
    assert calls == []  # a modified directory is never published


def test_text_models_and_bad_sources_are_refused(cv_run, tmp_path):
    fold = tmp_path / "text_run"
    shutil.copytree(cv_run / "fold1", fold)
    ckpt = safe_torch_load(fold / "dev-avg.ckpt")
    ckpt["Config"]["downstream_expert"]["text"] = {"encoder": "bert-base-uncased"}
    atomic_torch_save(ckpt, fold / "dev-avg.ckpt")
    with pytest.raises(ExportError, match="reads transcripts"):
        export_run(fold, tmp_path / "m")
    with pytest.raises(SystemExit, match="choose --fold FOLD or --ensemble"):
        export_cli([str(cv_run), "-o", str(tmp_path / "m")])
    with pytest.raises(SystemExit, match="fold5: not a finished fold"):
        export_cli([str(cv_run), "--fold", "fold5", "-o", str(tmp_path / "m")])
    assert not (tmp_path / "m").exists()


def test_run_downstream_takes_no_silently_ignored_hub_flags():
    from s3prl_ser.cli.run_downstream import build_parser

    for flag in ("--push_to_hf_hub", "--hf_hub_org", "--upstream_model_name", "--upstream_revision"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["-m", "train", flag, "x"])


def test_fine_tuned_upstream_of_another_corpus_exports_and_loads_without_ft_dir(tmp_path, tiny_upstreams, one_thread):
    """EmoDB (2 classes: any label set): stage 1 per fold (``hubert_ft_avg -k FT_DIR``), stage 2, export;
    the model directory holds the fold's fine-tuned upstream and loads with FT_DIR gone."""
    from helpers import finetune_args, finetune_overrides
    from s3prl_ser.data.corpora import emodb
    from test_corpora import make_emodb, train_one_fold  # the corpus tests' EmoDB stand-in and short run
    from upstream_ft.__main__ import main as upstream_ft

    root, meta, ft_dir = make_emodb(tmp_path / "emodb"), tmp_path / "meta", tmp_path / "ft"
    emodb.prepare(root, meta)
    upstream_ft(
        finetune_args(
            "hubert_local", tiny_upstreams["hubert"], "fold2", ft_dir, finetune_overrides(root, meta, 2, 2, 1)
        )
    )
    train_one_fold(root, meta, tmp_path / "exp", "fold2", ("-u", "hubert_ft_avg", "-k", str(ft_dir)))
    clip = root / "wav" / "08a01Fa.wav"
    expected = EmotionRecognizer.from_pretrained(tmp_path / "exp" / "fold2").predict(clip)
    export_cli([str(tmp_path / "exp"), "--fold", "fold2", "-o", str(tmp_path / "model")])
    spec = json.loads((tmp_path / "model" / "config.json").read_text())["upstreams"][0][0]
    assert (spec["entry"], spec["trained_as"]) == ("hubert_local", "hubert_ft_avg")
    shutil.rmtree(ft_dir)
    loaded = EmotionRecognizer.from_pretrained(tmp_path / "model")
    assert loaded.class_names == ["hap", "ang"]
    assert loaded.predict(clip) == expected


def test_an_edited_config_is_refused_and_a_model_directory_never_downloads(cv_run, tmp_path, monkeypatch):
    from s3prl_ser.cli.inference import main as inference_cli

    out = export_run(cv_run, tmp_path / "model", fold="fold1")
    config = json.loads((out / "config.json").read_text())
    config["class_names"] = config["class_names"][::-1]  # relabel every prediction, same shapes
    (out / "config.json").write_text(json.dumps(config, indent=1))
    with pytest.raises(SystemExit, match=r"^error: .*model/config\.json: its digest differs from config\.sha256"):
        inference_cli([str(out), str(tmp_path / "x.wav"), "--no-progress"])
    config["upstreams"][0][0]["entry"] = "tera"  # a pretrained entry: s3prl would download its weights
    _reseal(out, config)

    attempts = []

    def download(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"network access while loading a model directory: {args}")

    import huggingface_hub
    import s3prl.util.download

    for module, name in [
        (s3prl.util.download, "_download"),  # every s3prl URL entry goes through it, cached or not
        (torch.hub, "download_url_to_file"),
        (huggingface_hub, "hf_hub_download"),
        (huggingface_hub.file_download, "hf_hub_download"),
        (huggingface_hub, "snapshot_download"),
        (socket.socket, "connect"),
    ]:
        monkeypatch.setattr(module, name, download)
    with pytest.raises(ModelDirError, match=r"model/config\.json: upstream entry 'tera' is not rebuilt offline"):
        EmotionRecognizer.from_pretrained(out)
    assert attempts == []


def test_exports_record_no_absolute_path_of_this_machine(
    cv_run, fused_run, tiny_upstreams, mini_corpus, tmp_path, tmp_path_factory
):
    run, ckpt = fused_run
    if not ckpt.exists():  # the offline test deletes the run's private copy of its -k file
        shutil.copy(tiny_upstreams["hubert"], ckpt)
    machine = [str(tmp_path_factory.getbasetemp().resolve()), str(Path(__file__).resolve().parents[1])]
    assert str(mini_corpus.resolve()).startswith(machine[1])  # the corpus root is one of them
    for out in (export_run(cv_run, tmp_path / "ens", ensemble=True), export_run(run, tmp_path / "fused")):
        for name in ("config.json", "README.md"):
            text = (out / name).read_text()
            assert not [root for root in machine if root in text], f"{out / name} holds an absolute path"
    config = json.loads((tmp_path / "ens" / "config.json").read_text())
    assert [m["source"]["checkpoint"] for m in config["members"]] == ["fold1/dev-avg.ckpt", "fold2/dev-avg.ckpt"]
    card = (tmp_path / "fused" / "README.md").read_text()
    assert "(`-k ,tiny_hubert.pt`)" in card  # paths outside the run: their last component only
    assert f"root: {mini_corpus.resolve().name}\n" in card and f"(corpus root `{mini_corpus.resolve().name}`;" in card


def test_card_escapes_names_from_the_data():
    from s3prl_ser.inference.model_card import render_card

    hostile = "<img src=x onerror=alert(1)>"
    config = {"downstream_expert": {"datarc": {"meta_data": "a`b", "root": "```\n</details><script>x</script>"}}}
    record = {"fold": "f|1 *x*", "test": {"wa": 0.5, "ua": 0.25, "num_utterances": 4}, "config": config}
    card = render_card(f"# {hostile}", "fold", [hostile, "ang"], [{**record, "args": {"upstream": "fbank"}}], {})
    front, body = card.split("---\n")[1], card.split("\n---\n", 1)[1]
    assert yaml.safe_load(front)["s3prl_ser"]["classes"] == [hostile, "ang"]  # YAML quotes what it must
    escaped = "&lt;img src=x onerror=alert\\(1\\)&gt;"
    assert f"# # {escaped}" in body and f"Classes (output order): {escaped}, ang." in body
    assert "| f\\|1 \\*x\\* | 50.00 | 25.00 | 4 |" in body  # one table cell, nothing emphasised
    span = "- meta data: `` a`b `` (corpus root ```` ``` </details><script>x</script> ````;"
    assert span in body  # code spans, fenced longer than the backticks inside: shown as written
    lines = body.split("\n")
    opening = lines.index("````yaml")  # longer than the ``` inside the config, which cannot close it
    closing = lines.index("````", opening)
    outside = "\n".join(lines[:opening] + lines[closing + 1 :]).replace(span, "")
    assert "<img" not in outside and "<script" not in outside and "</details><" not in outside


def test_weights_that_are_not_safetensors_give_an_error_line(cv_run, tmp_path):
    from s3prl_ser.cli.inference import main as inference_cli

    out = export_run(cv_run, tmp_path / "model", fold="fold1")
    (out / "model.safetensors").write_bytes(b"PK\x03\x04 this is a zip archive, not safetensors" * 4)
    config = json.loads((out / "config.json").read_text())
    data = (out / "model.safetensors").read_bytes()
    config["files"]["model.safetensors"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _reseal(out, config)
    with pytest.raises(SystemExit, match=r"^error: .*model/model\.safetensors: not a safetensors file"):
        inference_cli([str(out), str(tmp_path / "x.wav"), "--no-progress"])


def test_a_killed_exports_leftovers_are_removed_and_a_replaced_model_restored(cv_run, tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        stale, busy = tmp_path / f".model.tmp-{dead.pid}", tmp_path / f".model.tmp-{alive.pid}"
        for leftover in (stale, busy):
            leftover.mkdir()
            (leftover / "model.safetensors").write_bytes(b"\0" * 1000)  # a killed export's half-written weights
        export_run(cv_run, tmp_path / "model", fold="fold1")
        assert not stale.exists()  # its process is gone: removed
        assert busy.is_dir()  # another export still writing: left alone
    finally:
        alive.kill()
        alive.wait()
    # killed while replacing: the previous model renamed aside, the new one not yet in place
    expected = EmotionRecognizer.from_pretrained(tmp_path / "model").probabilities(_wavs())
    (tmp_path / "model").rename(tmp_path / f".model.old-{dead.pid}")
    with pytest.raises(SystemExit, match=r"model exists; pass --overwrite to replace it"):
        export_cli([str(cv_run), "--fold", "fold2", "-o", str(tmp_path / "model")])
    assert torch.equal(EmotionRecognizer.from_pretrained(tmp_path / "model").probabilities(_wavs()), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the busy one's process has ended since
