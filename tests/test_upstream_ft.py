"""The fine-tuning stage (python -m upstream_ft) on tiny HuBERT / wav2vec 2.0 and the mini corpus."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3prl.hub
import torch

from helpers import die_after_saving, finetune_args, finetune_overrides, torchrun, train_args
from s3prl_ser.data.audio import load_audio
from s3prl_ser.fileio import safe_torch_load
from s3prl_ser.finetuning.model import FineTuneModel
from upstream_ft.__main__ import main as upstream_ft

REPO = Path(__file__).resolve().parents[1]
CNN = "feature_extractor."


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def meta(mini_meta):
    return mini_meta


def overrides(corpus, meta, steps=8, every=2, k=2, extra=""):
    return finetune_overrides(corpus, meta, steps=steps, every=every, k=k, accumulate=2, extra=extra)


def cli(arch, tiny, ft_dir, fold, opts):
    return upstream_ft(finetune_args(f"{arch}_local", tiny[arch], fold, ft_dir, opts))


@pytest.fixture(scope="module")
def runs(tiny_upstreams, mini_corpus, meta, tmp_path_factory):
    """HuBERT fold1 (last layer, 2 best averaged) and wav2vec 2.0 fold2 (weighted sum, best only)."""
    root = tmp_path_factory.mktemp("ft")
    cli("hubert", tiny_upstreams, root / "hubert", "fold1", overrides(mini_corpus, meta))
    cli(
        "wav2vec2",
        tiny_upstreams,
        root / "wav2vec2",
        "fold2",
        overrides(
            mini_corpus,
            meta,
            extra=("config.upstream.feature_selection=hidden_states,,config.checkpoint_averaging.average=false"),
        ),
    )
    return {"hubert": (root / "hubert", "fold1"), "wav2vec2": (root / "wav2vec2", "fold2")}


def weights(path):
    return safe_torch_load(path)["model_weight"]


@pytest.mark.parametrize("arch", ["hubert", "wav2vec2"])
def test_finetuning_trains_the_transformer_and_keeps_the_cnn(runs, tiny_upstreams, arch):
    ft_dir, fold = runs[arch]
    base, tuned = weights(tiny_upstreams[arch]), weights(ft_dir / fold / "upstream.ckpt")
    assert base.keys() == tuned.keys()
    cnn = [key for key in base if key.startswith(CNN)]
    assert cnn and all(torch.equal(base[key], tuned[key]) for key in cnn)  # bit-identical
    for layer in range(2):
        key = f"encoder.layers.{layer}.self_attn.k_proj.weight"
        assert not torch.allclose(base[key], tuned[key]), key


def test_hubert_export_is_the_average_of_the_kept_checkpoints(runs):
    ft_dir, fold = runs["hubert"]
    fold_dir = ft_dir / fold
    kept = json.loads((fold_dir / "dev-top.json").read_text())
    record = json.loads((fold_dir / "upstream.json").read_text())
    assert len(kept) == 2 and record["averaged"]
    assert [c["step"] for c in record["checkpoints"]] == [e["step"] for e in kept]
    states = [safe_torch_load(fold_dir / e["name"]) for e in kept]
    exported = safe_torch_load(fold_dir / "upstream.ckpt")
    assert not torch.equal(
        states[0]["model_weight"]["encoder.layers.0.fc1.weight"],
        states[1]["model_weight"]["encoder.layers.0.fc1.weight"],
    )
    for section in ("model_weight", "ft_head"):
        for key, value in exported[section].items():
            expected = (states[0][section][key].double() + states[1][section][key].double()) / 2
            assert torch.allclose(value.double(), expected, atol=1e-6), (section, key)
    assert exported["model_cfg"] == safe_torch_load(fold_dir / kept[0]["name"])["model_cfg"]


def test_wav2vec2_export_without_averaging_is_the_best_checkpoint(runs):
    ft_dir, fold = runs["wav2vec2"]
    fold_dir = ft_dir / fold
    record = json.loads((fold_dir / "upstream.json").read_text())
    best = json.loads((fold_dir / "dev-top.json").read_text())[0]
    assert not record["averaged"] and [c["step"] for c in record["checkpoints"]] == [best["step"]]
    exported, top = safe_torch_load(fold_dir / "upstream.ckpt"), safe_torch_load(fold_dir / best["name"])
    for section in ("model_weight", "ft_head"):
        assert all(torch.equal(exported[section][k], top[section][k]) for k in top[section])
    assert "featurizer.weights" in exported["ft_head"]  # weighted sum of layers was trained


@pytest.mark.parametrize("arch", ["hubert", "wav2vec2"])
def test_export_loads_through_stock_s3prl_and_the_ft_hub_entry(runs, arch):
    import s3prl.hub as hub

    from s3prl_ser.finetuning.hub_entries import register_ft_avg_entries

    ft_dir, fold = runs[arch]
    register_ft_avg_entries()
    wavs = [torch.randn(16000), torch.randn(12000)]
    stock = getattr(hub, f"{arch}_local")(ckpt=str(ft_dir / fold / "upstream.ckpt")).eval()
    via_entry = getattr(hub, f"{arch}_ft_avg")(ckpt=str(ft_dir), fold=fold).eval()
    with torch.no_grad():
        a, b = stock(wavs)["hidden_states"], via_entry(wavs)["hidden_states"]
    assert len(a) == 3 and a[-1].shape[:2] == (2, 49)  # 2 layers + the CNN projection; 20 ms frames
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_metadata_records_provenance_and_a_single_test(runs, tiny_upstreams):
    ft_dir, fold = runs["hubert"]
    record = json.loads((ft_dir / fold / "upstream.json").read_text())
    assert record["base_upstream"] == "hubert_local" and record["loader"] == "hubert_local"
    assert record["base_ckpt"] == str(tiny_upstreams["hubert"])
    assert record["fold"] == "fold1" and record["test_session"] == "Session1"
    assert record["test"]["num_utterances"] == 7
    exported = ft_dir / fold / "upstream.ckpt"  # scored again by hand: stage 1 writes no per-utterance output
    datarc, classes = record["config"]["datarc"], record["class_names"]
    upstream = getattr(s3prl.hub, record["loader"])(ckpt=str(exported))
    model = FineTuneModel(upstream, len(classes), record["config"]["upstream"]["feature_selection"], "cpu").eval()
    model.head.load_state_dict(safe_torch_load(exported)["ft_head"])
    items = json.loads((Path(datarc["meta_data"]) / "Session1" / "test_meta_data.json").read_text())["meta_data"]
    with torch.no_grad():
        logits = model([load_audio(Path(datarc["root"]) / item["path"], min_samples=400) for item in items])
    pairs = [(item["label"], classes[i]) for item, i in zip(items, logits.argmax(dim=-1).tolist())]
    recall = [sum(t == p == c for t, p in pairs) / sum(t == c for t, _ in pairs) for c in {t for t, _ in pairs}]
    assert record["test"]["wa"] == pytest.approx(sum(t == p for t, p in pairs) / len(pairs))
    assert record["test"]["ua"] == pytest.approx(sum(recall) / len(recall))
    assert record["test"]["confusion"] == [[pairs.count((t, p)) for p in classes] for t in classes]
    assert all("dev_wa" in c for c in record["checkpoints"])
    assert record["config"]["runner"]["total_steps"] == 8
    assert record["environment"]["packages"]["s3prl"] == "0.4.18"
    log = (ft_dir / fold / "log.log").read_text().splitlines()
    assert [line for line in log if line.startswith("test")] == [log[-1]]  # scored once, at the end
    assert list((ft_dir / fold).glob("events.out.tfevents.*"))
    assert [p.name for p in (ft_dir / fold).glob("states-*.ckpt")] == ["states-8.ckpt"]  # latest only


def test_rerun_skips_exported_folds_and_prints_the_table(runs, tiny_upstreams, mini_corpus, meta, capsys):
    ft_dir, fold = runs["hubert"]
    before = (ft_dir / fold / "upstream.ckpt").stat().st_mtime_ns
    records = cli("hubert", tiny_upstreams, ft_dir, fold, overrides(mini_corpus, meta))
    out = capsys.readouterr().out
    assert "already exported" in out and "| fold1 | Session1 |" in out and "earlier run" in out
    assert records["fold1"]["fold"] == "fold1"
    assert (ft_dir / fold / "upstream.ckpt").stat().st_mtime_ns == before
    with pytest.raises(
        SystemExit, match=r"exported with other settings \(config.optimizer.upstream_lr: 0.001 -> 0.002\)"
    ):
        cli(
            "hubert",
            tiny_upstreams,
            ft_dir,
            fold,
            overrides(mini_corpus, meta, extra="config.optimizer.upstream_lr=2.0e-3"),
        )
    with pytest.raises(
        SystemExit, match=r"exported with other settings \(base_ckpt: .*tiny_hubert.pt' -> .*tiny_wav2vec2.pt'"
    ):
        upstream_ft(
            finetune_args("hubert_local", tiny_upstreams["wav2vec2"], fold, ft_dir, overrides(mini_corpus, meta))
        )
    assert (ft_dir / fold / "upstream.ckpt").stat().st_mtime_ns == before


def test_frozen_transformer_steps_train_only_the_head(tiny_upstreams, mini_corpus, meta, tmp_path):
    cli(
        "hubert",
        tiny_upstreams,
        tmp_path,
        "fold3",
        overrides(mini_corpus, meta, steps=2, k=1, extra="config.upstream.freeze_transformer_steps=2"),
    )
    base, tuned = weights(tiny_upstreams["hubert"]), weights(tmp_path / "fold3" / "upstream.ckpt")
    assert all(torch.equal(base[key], tuned[key]) for key in base)


def test_unfrozen_feature_encoder_is_trained(tiny_upstreams, mini_corpus, meta, tmp_path):
    cli(
        "wav2vec2",
        tiny_upstreams,
        tmp_path,
        "fold3",
        overrides(mini_corpus, meta, steps=2, k=1, extra="config.upstream.freeze_feature_encoder=false"),
    )
    base, tuned = weights(tiny_upstreams["wav2vec2"]), weights(tmp_path / "fold3" / "upstream.ckpt")
    key = CNN + "conv_layers.0.0.weight"
    assert key in base and not torch.equal(base[key], tuned[key])


def test_interrupted_run_resumes_to_the_same_result(tiny_upstreams, mini_corpus, meta, tmp_path, monkeypatch):
    """Stopping after the step-4 states and rerunning gives what an uninterrupted run gives."""
    opts = overrides(mini_corpus, meta, steps=8, k=2)
    cli("hubert", tiny_upstreams, tmp_path / "straight", "fold4", opts)

    die_after_saving(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        cli("hubert", tiny_upstreams, tmp_path / "resumed", "fold4", opts)
    monkeypatch.undo()
    with pytest.raises(SystemExit, match=r"states-4.ckpt belongs to a run with other settings \(config.datarc.split"):
        cli("hubert", tiny_upstreams, tmp_path / "resumed", "fold4", opts + ",,config.datarc.split=speaker")
    cli("hubert", tiny_upstreams, tmp_path / "resumed", "fold4", opts)

    log = (tmp_path / "resumed" / "fold4" / "log.log").read_text()
    assert "at step 4" in log.split("resumed from")[1].splitlines()[0]
    straight, resumed = (safe_torch_load(tmp_path / d / "fold4" / "upstream.ckpt") for d in ("straight", "resumed"))
    for section in ("model_weight", "ft_head"):
        assert all(torch.equal(straight[section][k], resumed[section][k]) for k in straight[section])
    read = lambda d: (tmp_path / d / "fold4" / "dev-top.json").read_text()  # noqa: E731
    assert read("straight") == read("resumed")


def test_killed_process_resumes_and_finishes(tiny_upstreams, mini_corpus, meta, tmp_path):
    argv = finetune_args(
        "hubert_local", tiny_upstreams["hubert"], "fold5", tmp_path, overrides(mini_corpus, meta, steps=300, k=2)
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "upstream_ft", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    fold_dir = tmp_path / "fold5"
    deadline = time.time() + 120
    while not list(fold_dir.glob("states-*.ckpt")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    saved = [int(p.stem.split("-")[1]) for p in fold_dir.glob("states-*.ckpt")]
    assert len(saved) == 1 and saved[0] < 300 and not (fold_dir / "upstream.json").exists()
    for path in fold_dir.glob("*.ckpt"):
        safe_torch_load(path)  # nothing half-written

    upstream_ft(argv)  # the same command again
    log = (fold_dir / "log.log").read_text()
    assert f"resumed from {fold_dir / f'states-{saved[0]}.ckpt'} at step {saved[0]}" in log
    dev_steps = [
        int(line.split()[3].rstrip(":")) for line in log.split("resumed from")[1].splitlines() if line.startswith("dev")
    ]
    assert dev_steps[0] == saved[0] + 2 and dev_steps[-1] == 300
    assert json.loads((fold_dir / "upstream.json").read_text())["fold"] == "fold5"


def test_config_errors_are_clear(tiny_upstreams, mini_corpus, meta, tmp_path):
    with pytest.raises(SystemExit, match=r"config\.runner\.totl_steps.*did you mean 'total_steps'"):
        cli("hubert", tiny_upstreams, tmp_path, "fold1", overrides(mini_corpus, meta) + ",,config.runner.totl_steps=3")
    user = tmp_path / "user.yaml"
    user.write_text("runner:\n  eval_steps: 3\n")
    with pytest.raises(SystemExit, match=r"user\.yaml.*runner\.eval_steps.*did you mean 'eval_step'"):
        upstream_ft(["-u", "hubert", "-p", str(tmp_path), "-c", str(user)])
    with pytest.raises(SystemExit, match="datarc.root is not set"):
        upstream_ft(["-u", "hubert", "-p", str(tmp_path)])
    with pytest.raises(SystemExit, match="cannot export a fine-tuned 'fbank'"):
        upstream_ft(
            [
                "-u",
                "fbank",
                "-p",
                str(tmp_path),
                "--folds",
                "fold1",
                "--device",
                "cpu",
                "-o",
                overrides(mini_corpus, meta),
            ]
        )
    assert not (tmp_path / "fold1" / "log.log").exists()  # refused before any training


def _downstream(ft_dir, corpus, meta, expdir, test_fold):
    from s3prl_ser.cli.run_downstream import main as run_downstream

    run_downstream(
        train_args(
            expdir,
            ",,".join(
                [
                    f"config.downstream_expert.datarc.root={corpus}",
                    f"config.downstream_expert.datarc.meta_data={meta}",
                    f"config.downstream_expert.datarc.test_fold={test_fold}",
                    "config.downstream_expert.datarc.num_workers=0",
                    "config.runner.total_steps=4",
                    "config.runner.eval_step=2",
                    "config.runner.save_step=2",
                    "config.runner.log_step=2",
                    "config.runner.gradient_accumulate_steps=1",
                ]
            ),
            upstream="hubert_ft_avg",
            ckpt=ft_dir,
            extra=("-c", str(REPO / "downstream/emotion_ecapa/paper/exp4.yaml")),
        )
    )


def test_export_feeds_emotion_ecapa_through_ft_avg_entry(runs, mini_corpus, meta, tmp_path):
    ft_dir, fold = runs["hubert"]
    _downstream(ft_dir, mini_corpus, meta, tmp_path, fold)  # -u hubert_ft_avg -k FT_DIR picks FT_DIR/<fold>
    assert json.loads((tmp_path / "final.json").read_text())["averaged"] is True
    assert (tmp_path / f"test_{fold}_metrics.json").is_file()
    from s3prl_ser.inference import EmotionRecognizer

    recognizer = EmotionRecognizer.from_pretrained(tmp_path)  # resolves the same fold's upstream
    silence = recognizer.predict(torch.zeros(8000), sample_rate=16000)
    assert silence.label == max(silence.probabilities, key=silence.probabilities.get)
    items = json.loads((meta / "Session1" / "test_meta_data.json").read_text())["meta_data"]
    test_set = recognizer.predict_batch([mini_corpus / item["path"] for item in items])
    written = [line.split() for line in (tmp_path / f"test_{fold}_predict.txt").read_text().splitlines()]
    assert [[Path(item["path"]).stem, p.label] for item, p in zip(items, test_set)] == written


def test_downstream_refuses_upstream_of_another_fold(runs, mini_corpus, meta, tmp_path):
    ft_dir, fold = runs["hubert"]
    other = "fold2" if fold != "fold2" else "fold3"
    with pytest.raises(SystemExit, match=f"^error: .*fine-tuned for {fold}.*requested for {other}"):
        _downstream(ft_dir / fold / "upstream.ckpt", mini_corpus, meta, tmp_path, other)
    with pytest.raises(SystemExit, match=f"^error: .*no fine-tuned upstream for {other}"):
        _downstream(ft_dir, mini_corpus, meta, tmp_path / "b", other)


@pytest.mark.parametrize("number", range(1, 7))
def test_paper_configs(number):
    from downstream.emotion_ecapa.expert import AVERAGING_KEYS, DATARC_KEYS, MODELRC_KEYS
    from s3prl_ser.experiments.launch import load_task_config
    from s3prl_ser.upstreams.registry import register

    path = REPO / "downstream/emotion_ecapa/paper" / f"exp{number}.yaml"
    text = path.read_text()
    register()
    # The experiment as run_downstream.py runs it: the file merged over emotion_ecapa's defaults.
    expert = load_task_config("emotion_ecapa", str(path))["downstream_expert"]
    assert set(expert["datarc"]) <= DATARC_KEYS and set(expert["modelrc"]) <= MODELRC_KEYS
    assert set(expert["checkpoint_averaging"]) <= AVERAGING_KEYS
    assert f"Table 1, experiment {number}:" in text.splitlines()[0]
    base = "wav2vec2" if number % 2 else "hubert"  # W2V2 odd, HuBERT even
    large = {"wav2vec2": "wav2vec2_large_lv60_cv_swbd_fsh", "hubert": "hubert_large_ll60k"}[base]  # the paper's
    assert f"python -m upstream_ft -u {large} -p result/upstream_ft/{base} " in text
    # One stage-1 run: experiments 1-2 take its single best, 3-6 its 5-best average.
    ft_dir = f"result/upstream_ft/{base}" + ("/best" if number <= 2 else "")
    assert f"-u {base}_ft_avg -k {ft_dir} " in text
    assert expert["modelrc"]["aggregator"] == ("ecapa" if number >= 5 else "mean")
    assert expert["checkpoint_averaging"]["average"] is (number >= 3)
    assert expert["datarc"]["split"] == "superb"  # as stage 1's default: dev never seen by the upstream
    assert "config.checkpoint_averaging.export_best=true" in text


def test_two_processes_fine_tune_like_one(tiny_upstreams, mini_corpus, meta, tmp_path):
    """torchrun with 2 gloo processes takes half of every global batch each: the update, and so
    the export, is the single-process one. Dropout is off (the processes draw other masks),
    and the CNN normalises each frame (layer_norm mode): the default mode's GroupNorm spans
    the padding, which differs between a batch of 4 and two batches of 2. SGD, not Adam: Adam
    turns float noise in a zero gradient (HuBERT's key biases) into full-size steps."""
    base = safe_torch_load(tiny_upstreams["hubert"])
    for key in (
        "dropout",
        "attention_dropout",
        "activation_dropout",
        "encoder_layerdrop",
        "dropout_input",
        "dropout_features",
    ):
        base["model_cfg"][key] = 0.0
    base["model_cfg"]["extractor_mode"] = "layer_norm"
    from s3prl_ser.toy.tiny_upstream import _build

    torch.manual_seed(0)
    base["model_weight"] = _build(
        "hubert", base["model_cfg"], base["task_cfg"], base["dictionaries_symbols"]
    ).state_dict()
    torch.save(base, tmp_path / "no_dropout.pt")
    opts = overrides(mini_corpus, meta, steps=4, every=2, k=2, extra="config.optimizer.name=SGD")
    argv = finetune_args("hubert_local", tmp_path / "no_dropout.pt", "fold2", None, opts)
    upstream_ft(argv + ["-p", str(tmp_path / "one")])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = torchrun(
        "-m",
        "upstream_ft",
        *argv,
        "-p",
        str(tmp_path / "two"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one, other = (safe_torch_load(tmp_path / run / "fold2" / "upstream.ckpt") for run in ("one", "two"))
    assert not torch.equal(
        one["model_weight"]["encoder.layers.0.fc1.weight"], base["model_weight"]["encoder.layers.0.fc1.weight"]
    )  # it trained
    for section in ("model_weight", "ft_head"):
        for key in one[section]:
            assert torch.allclose(one[section][key], other[section][key], atol=1e-5), (section, key)
    records = [json.loads((tmp_path / run / "fold2" / "upstream.json").read_text()) for run in ("one", "two")]
    assert records[0]["test"]["confusion"] == records[1]["test"]["confusion"]
