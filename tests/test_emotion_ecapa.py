"""End-to-end runs of run_downstream.py -d emotion_ecapa on the hand-written mini corpus."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from helpers import overrides, train_args
from s3prl_ser.cli.run_downstream import main as run_downstream
from s3prl_ser.fileio import safe_torch_load

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def meta(mini_meta):
    return mini_meta


@pytest.fixture(scope="module")
def trained(mini_corpus, meta, tmp_path_factory):
    expdir = tmp_path_factory.mktemp("exp") / "fold2"
    run_downstream(train_args(expdir, overrides(mini_corpus, meta), extra=("-v", "fold2")))  # s3prl's -v picks the fold
    return expdir


def _labels(path):
    """``<utterance> <label>`` lines (s3prl's format) -> [(utterance, label), ...]."""
    return [tuple(line.split()) for line in path.read_text().splitlines()]


def test_training_writes_reported_model_and_predictions(trained, meta):
    final = json.loads((trained / "final.json").read_text())
    assert final["checkpoint"] == "dev-avg.ckpt" and final["averaged"] is True
    assert len(final["selected"]) == 2
    truth = _labels(trained / "test_fold2_truth.txt")
    predict = _labels(trained / "test_fold2_predict.txt")
    assert len(truth) == len(predict) == 5  # Session2 of the mini corpus
    assert [t[0] for t in truth] == [p[0] for p in predict]
    items = json.loads((meta / "Session2" / "test_meta_data.json").read_text())["meta_data"]
    assert truth == [(Path(item["path"]).stem, item["label"]) for item in items]
    metrics = json.loads((trained / "test_fold2_metrics.json").read_text())
    assert metrics["num_utterances"] == 5
    pairs = [(t[1], p[1]) for t, p in zip(truth, predict)]
    assert metrics["wa"] == pytest.approx(sum(t == p for t, p in pairs) / len(pairs))
    present = sorted({t for t, _ in pairs})
    recall = {c: sum(t == p == c for t, p in pairs) / sum(t == c for t, _ in pairs) for c in present}
    assert metrics["ua"] == pytest.approx(sum(recall.values()) / len(recall))
    assert {c: metrics["recall"][c] for c in present} == pytest.approx(recall)
    classes = metrics["labels"]
    assert metrics["confusion"] == [[sum(pair == (t, p) for pair in pairs) for p in classes] for t in classes]
    assert list(trained.glob("config_*.yaml")) and list(trained.glob("versions_*.yaml"))
    assert list(trained.glob("events.out.tfevents.*"))


def test_averaged_model_is_the_mean_of_the_k_best(trained):
    final = json.loads((trained / "final.json").read_text())
    states = [safe_torch_load(trained / s["file"]) for s in final["selected"]]
    averaged = safe_torch_load(trained / "dev-avg.ckpt")
    assert len(states) == 2
    sections = [name for name in ("Upstream", "Featurizer", "Downstream") if name in states[0]]
    assert "Downstream" in sections and "Featurizer" in sections  # fbank: an empty Featurizer state
    assert all([name for name in ("Upstream", "Featurizer", "Downstream") if name in s] == sections for s in states)
    assert [name for name in ("Upstream", "Featurizer", "Downstream") if name in averaged] == sections
    keys = list(states[0]["Downstream"])
    for suffix in ("running_mean", "running_var", "num_batches_tracked"):  # ECAPA's BatchNorm buffers
        assert any(key.endswith(f".norm.{suffix}") for key in keys), suffix
    counts = [[int(s["Downstream"][k]) for s in states] for k in keys if k.endswith("num_batches_tracked")]
    assert any(len(set(c)) > 1 for c in counts)  # the integer rule's "differ" case is exercised
    for section in sections:
        assert list(averaged[section]) == list(states[0][section])
        assert all(set(s[section]) == set(states[0][section]) for s in states)
        for key, got in averaged[section].items():
            values = [s[section][key] for s in states]
            assert got.dtype == values[0].dtype and got.shape == values[0].shape, key
            if values[0].is_floating_point():
                expected = (sum(v.double() for v in values) / len(values)).to(values[0].dtype)
                torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7, msg=key)
            else:  # integers: the floor of the mean (which keeps identical values as they are)
                columns = zip(*(v.flatten().tolist() for v in values))
                assert got.flatten().tolist() == [sum(column) // len(column) for column in columns], key
    assert averaged["ClassNames"] == ["neu", "hap", "ang", "sad"]
    assert averaged["Averaged"]["steps"] == [s["step"] for s in final["selected"]]


def test_test_set_never_selects(mini_corpus, meta, tmp_path):
    """Relabelling the test set changes nothing about which checkpoints are kept or averaged."""
    scrambled = tmp_path / "meta"
    shutil.copytree(meta, scrambled)
    test_json = scrambled / "Session2" / "test_meta_data.json"
    data = json.loads(test_json.read_text())
    for item in data["meta_data"]:
        item["label"] = "sad"
    test_json.write_text(json.dumps(data))
    runs = {}
    for name, meta_dir in (("original", meta), ("scrambled", scrambled)):
        expdir = tmp_path / name
        run_downstream(
            train_args(
                expdir, overrides(mini_corpus, meta_dir, extra="config.downstream_expert.datarc.test_fold=fold2")
            )
        )
        runs[name] = expdir
    assert (runs["original"] / "dev-top.json").read_text() == (runs["scrambled"] / "dev-top.json").read_text()
    a = safe_torch_load(runs["original"] / "dev-avg.ckpt")["Downstream"]
    b = safe_torch_load(runs["scrambled"] / "dev-avg.ckpt")["Downstream"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = (runs["original"] / "log.log").read_text().splitlines()
    assert [line for line in log if line.startswith("test")] == [log[-1]]  # tested once, at the end


def test_averaging_off_reports_single_best(mini_corpus, meta, tmp_path):
    run_downstream(
        train_args(
            tmp_path,
            overrides(mini_corpus, meta, steps=8, extra="config.downstream_expert.checkpoint_averaging.average=false"),
        )
    )
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["checkpoint"] == "dev-best.ckpt" and not final["averaged"]
    best = safe_torch_load(tmp_path / "dev-best.ckpt")
    top = safe_torch_load(tmp_path / final["selected"][0]["file"])
    assert all(torch.equal(best["Downstream"][k], top["Downstream"][k]) for k in top["Downstream"])


def test_resume_continues_from_last_step(mini_corpus, meta, tmp_path):
    """A resume may lengthen the schedule and change data-feeding settings; the k best then
    span both parts and are averaged."""
    args = ["-m", "train", "-u", "fbank", "-d", "emotion_ecapa", "-p", str(tmp_path), "--device", "cpu", "-a"]
    run_downstream(args + ["-o", overrides(mini_corpus, meta, steps=8, every=4, k=5)])
    run_downstream(args + ["-o", "config.runner.total_steps=12,,config.downstream_expert.datarc.eval_batch_size=2"])
    assert [s["step"] for s in json.loads((tmp_path / "final.json").read_text())["selected"]] == [4, 8, 12]
    dev_steps = [
        s.split()[3].rstrip(":") for s in (tmp_path / "log.log").read_text().splitlines() if s.startswith("dev")
    ]
    assert dev_steps == ["4", "8", "12"]  # the resumed run did not start over
    assert safe_torch_load(tmp_path / "states-12.ckpt")["Step"] == 12


def test_named_run_resumes_where_it_was_moved(mini_corpus, meta, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_downstream(train_args(None, overrides(mini_corpus, meta, steps=8, every=4), extra=("-n", "named")))
    assert (tmp_path / "result" / "downstream" / "named" / "states-8.ckpt").is_file()
    shutil.move(tmp_path / "result" / "downstream" / "named", tmp_path / "moved")
    run_downstream(
        ["-m", "train", "-p", str(tmp_path / "moved"), "-a", "--device", "cpu", "-o", "config.runner.total_steps=12"]
    )
    assert safe_torch_load(tmp_path / "moved" / "states-12.ckpt")["Step"] == 12
    assert not (tmp_path / "result" / "downstream" / "named").exists()  # not the directory stored in the checkpoint
    run_downstream(["-m", "evaluate", "-e", str(tmp_path / "moved" / "dev-avg.ckpt"), "--device", "cpu"])
    assert (tmp_path / "moved" / "evaluate_dev-avg" / "test_fold1_metrics.json").is_file()


def test_killed_run_resumes(mini_corpus, meta, tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "run_downstream.py"),
        *train_args(
            tmp_path, overrides(mini_corpus, meta, steps=400, every=2, extra="config.runner.max_keep=2"), extra=("-a",)
        ),
    ]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("states-*.ckpt")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    saved = sorted(int(p.stem.split("-")[1]) for p in tmp_path.glob("states-*.ckpt"))
    assert saved
    for path in tmp_path.glob("states-*.ckpt"):
        safe_torch_load(path)  # every checkpoint on disk is complete (atomic saves)
    last = saved[-1]
    resume = subprocess.run(
        cmd[:-2] + ["-o", f"config.runner.total_steps={last + 4}"], capture_output=True, text=True, timeout=300
    )
    assert resume.returncode == 0, resume.stderr[-2000:]
    assert f"Resume from {tmp_path / f'states-{last}.ckpt'}" in resume.stderr  # the command's log
    assert (tmp_path / "final.json").is_file()


def test_averaging_cli_output_is_a_usable_model(trained, tmp_path):
    from s3prl_ser.cli.average_checkpoints import main as average
    from s3prl_ser.inference import EmotionRecognizer

    kept = sorted(trained.glob("dev-top-step*.ckpt"))
    average([*map(str, kept), "-o", str(tmp_path / "avg.ckpt")])
    ours, reported = safe_torch_load(tmp_path / "avg.ckpt"), safe_torch_load(trained / "dev-avg.ckpt")
    assert ours["ClassNames"] == reported["ClassNames"] == ["neu", "hap", "ang", "sad"]
    assert (ours["Step"], ours["Micro"]) == (reported["Step"], reported["Micro"])
    assert all(torch.equal(ours["Downstream"][k], v) for k, v in reported["Downstream"].items())
    wav = np.random.default_rng(0).uniform(-0.3, 0.3, 16000).astype("float32")
    assert (
        EmotionRecognizer.from_pretrained(tmp_path / "avg.ckpt").predict(wav, sample_rate=16000).label
        in ours["ClassNames"]
    )


def test_inference_api_and_cli(trained, mini_corpus, meta, tmp_path, capsys, monkeypatch):
    from s3prl_ser.inference import EmotionRecognizer

    recognizer = EmotionRecognizer.from_pretrained(trained)
    rng = np.random.default_rng(0)
    stereo_44k = rng.uniform(-0.3, 0.3, size=(44100, 2)).astype("float32")
    sf.write(tmp_path / "a.wav", stereo_44k, 44100)
    single = recognizer.predict(tmp_path / "a.wav")
    assert list(single.probabilities) == ["neu", "hap", "ang", "sad"]
    assert single.label == max(single.probabilities, key=single.probabilities.get)
    items = json.loads((meta / "Session2" / "test_meta_data.json").read_text())["meta_data"]
    test_set = recognizer.predict_batch([mini_corpus / item["path"] for item in items])
    predicted = [(Path(item["path"]).stem, p.label) for item, p in zip(items, test_set)]
    assert predicted == _labels(trained / "test_fold2_predict.txt")  # what the run wrote for the same model
    assert sum(single.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    short = rng.uniform(-0.3, 0.3, 8000).astype("float32")
    batch = recognizer.predict_batch([tmp_path / "a.wav", short], sample_rate=16000)
    for label in single.probabilities:
        assert batch[0].probabilities[label] == pytest.approx(single.probabilities[label], abs=1e-5)
    with pytest.raises(ValueError, match="sample_rate"):
        recognizer.predict(short)

    def no_corpus_audio(path, **_):
        raise AssertionError(f"-m inference read corpus audio: {path}")

    monkeypatch.setattr("s3prl_ser.data.emotion_dataset.load_audio", no_corpus_audio)  # nothing pre-loaded
    files = sorted(p.name for p in trained.iterdir())
    run_downstream(
        ["-m", "inference", "-e", str(trained / "dev-avg.ckpt"), "-t", str(tmp_path / "a.wav"), "--device", "cpu"]
    )
    assert sorted(p.name for p in trained.iterdir()) == files  # no run record added to the training directory
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("{")][-1]
    result = json.loads(line)
    assert result["file"] == "a" and result["label"] == single.label
    assert result["probabilities"][single.label] == pytest.approx(single.probabilities[single.label], abs=1e-4)


def test_evaluate_mode_writes_beside_the_run_and_selects_nothing(trained, capsys):
    training_files = {p.name: p.stat().st_mtime_ns for p in trained.iterdir() if p.is_file()}
    before = json.loads((trained / "test_fold2_metrics.json").read_text())
    for split in ("test", "dev"):
        run_downstream(["-m", "evaluate", "-e", str(trained / "dev-avg.ckpt"), "-t", split, "--device", "cpu"])
    output = trained / "evaluate_dev-avg"
    assert f"results in {output}" in capsys.readouterr().err  # the command's log
    after = json.loads((output / "test_fold2_metrics.json").read_text())
    assert after["confusion"] == before["confusion"]  # the reported model, scored again
    assert (output / "dev_fold2_predict.txt").is_file()
    # The training run's files are untouched, and none is added (not even a run record).
    assert {p.name: p.stat().st_mtime_ns for p in trained.iterdir() if p.is_file()} == training_files


def test_training_cannot_continue_from_the_reported_model(trained):
    """dev-avg.ckpt holds averaged weights and no optimizer state: -m train -e refuses it
    before touching the finished run."""
    files = {p.name: p.stat().st_mtime_ns for p in trained.iterdir() if p.is_file()}
    with pytest.raises(
        SystemExit, match=r"^error: .*dev-avg.ckpt is a reported \(averaged\) model, not a training state"
    ):
        run_downstream(["-m", "train", "-e", str(trained / "dev-avg.ckpt"), "--device", "cpu"])
    assert {p.name: p.stat().st_mtime_ns for p in trained.iterdir() if p.is_file()} == files


def test_an_experiment_directory_is_never_silently_reused(trained, mini_corpus, meta):
    final = (trained / "final.json").stat().st_mtime_ns
    fresh = ["-m", "train", "-u", "fbank", "-d", "emotion_ecapa", "-p", str(trained), "--device", "cpu"]
    same = overrides(mini_corpus, meta, extra="config.downstream_expert.datarc.test_fold=fold2")
    with pytest.raises(SystemExit, match=r"already holds a run \(dev-avg.ckpt, dev-top.json, .*resume it with -a"):
        run_downstream(fresh + ["-o", same])
    resume = ["-m", "train", "-p", str(trained), "-a", "--device", "cpu"]
    with pytest.raises(SystemExit, match=r"other settings \(args.upstream: 'fbank' -> 'mfcc'\)"):
        run_downstream(resume + ["-u", "mfcc"])
    with pytest.raises(SystemExit, match=r"config.downstream_expert.modelrc.aggregator: 'ecapa' -> 'mean'"):
        run_downstream(resume + ["-o", "config.downstream_expert.modelrc.aggregator=mean"])
    with pytest.raises(SystemExit, match=r"args.seed: 1337 -> 5"):
        run_downstream(resume + ["-o", "args.seed=5"])
    other = trained.parent / "other.yaml"
    config = yaml.safe_load((REPO / "downstream" / "emotion_ecapa" / "config.yaml").read_text())
    other.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit, match=r"config.downstream_expert.modelrc.ecapa.channels: .*"):
        run_downstream(resume + ["-c", str(other)])  # a -c file is compared, not ignored
    elsewhere = trained.parent / "elsewhere"
    with pytest.raises(SystemExit, match=r"is not the directory of .*states-12.ckpt.*resume with -p"):
        run_downstream(["-m", "train", "-e", str(trained / "states-12.ckpt"), "-p", str(elsewhere), "--device", "cpu"])
    assert (trained / "final.json").stat().st_mtime_ns == final


def test_config_errors_are_clear(mini_corpus, meta, tmp_path):
    base = ["-m", "train", "-u", "fbank", "-d", "emotion_ecapa", "-p", str(tmp_path), "--device", "cpu", "-o"]
    with pytest.raises(SystemExit, match="datarc.rot.*did you mean 'root'"):
        run_downstream(base + ["config.downstream_expert.datarc.rot=/x"])
    with pytest.raises(SystemExit, match="^error: .*datarc.root is not set"):
        run_downstream(base + [f"config.downstream_expert.datarc.meta_data={meta}"])
    assert not list(tmp_path.iterdir())  # refused before anything was written
    with pytest.raises(SystemExit, match="^error: .*invalid fold 'fold9x'"):
        run_downstream(base + [overrides(mini_corpus, meta, extra="config.downstream_expert.datarc.test_fold=fold9x")])
    with pytest.raises(
        SystemExit, match=r"^error: -v fold3 conflicts with config.downstream_expert.datarc.test_fold=fold1"
    ):
        run_downstream(
            base[:-1]
            + [
                "-v",
                "fold3",
                "-o",
                overrides(mini_corpus, meta, extra="config.downstream_expert.datarc.test_fold=fold1"),
            ]
        )
    with pytest.raises(
        SystemExit,
        match=r"^error: no meta data for fold9: .*Session9 does not exist .* has fold1, fold2, fold3, fold4, fold5",
    ):
        run_downstream(base + [overrides(mini_corpus, meta, extra="config.downstream_expert.datarc.test_fold=fold9")])
    with pytest.raises(SystemExit, match=r"^error: .*modelrc.aggregator must be one of mean, ecapa, got 'ecpa'"):
        run_downstream(base + [overrides(mini_corpus, meta, extra="config.downstream_expert.modelrc.aggregator=ecpa")])


def test_stock_emotion_task_still_works(mini_corpus, meta, tmp_path):
    run_downstream(
        train_args(
            tmp_path,
            f"config.downstream_expert.datarc.root={mini_corpus},,config.downstream_expert.datarc.meta_data={meta},,"
            "config.runner.total_steps=4,,config.runner.eval_step=4,,config.runner.save_step=4,,"
            "config.runner.log_step=4,,config.downstream_expert.datarc.num_workers=0",
            task="emotion",
        )
    )
    assert (tmp_path / "dev-best.ckpt").is_file() and (tmp_path / "test_fold1_predict.txt").is_file()


def test_runs_leave_builtins_alone(trained):
    """s3prl's hack_isinstance re-wraps isinstance on every run, slowing repeated runs."""
    import builtins

    assert builtins.isinstance.__module__ == "builtins"
