"""The deployment model: trained on every utterance with the folds' schedule, exported without a
held-out score, and refused wherever it could leak into a cross-validation."""

import json
import logging
import shutil
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from helpers import overrides, run_request, train_args
from s3prl_ser.cli.cross_validate import main as cross_validate
from s3prl_ser.cli.export import main as export_cli
from s3prl_ser.cli.run_downstream import main as run_downstream
from s3prl_ser.config import ConfigError
from s3prl_ser.data.emotion_dataset import utterance_key
from s3prl_ser.data.fold_data import load_fold_data
from s3prl_ser.data.folds import superb_train_dev_split
from s3prl_ser.data.protocol import PROTOCOL_KEY, FoldMismatchError, check_fine_tuned, digest
from s3prl_ser.experiments.deployment import train_deployment
from s3prl_ser.fileio import safe_torch_load
from s3prl_ser.inference import EmotionRecognizer
from s3prl_ser.inference.export import ExportError, export_run
from s3prl_ser.upstreams.build import build_upstream

MEAN = "config.downstream_expert.modelrc.aggregator=mean"
RUN_ARGS = ["-u", "fbank", "-d", "emotion_ecapa", "--device", "cpu"]


def request(run_args, opts):
    """The cross-validation's run: ``run_args`` with the overrides ``opts``."""
    return run_request(["-m", "train", *run_args, "-o", opts])


@pytest.fixture(scope="module")
def deployed(mini_corpus, mini_meta, tmp_path_factory, one_thread):
    """Folds 1 and 2 (4 steps), then ``--deploy --export``: the deployment run and its model directory."""
    root = tmp_path_factory.mktemp("deploy")
    opts = overrides(mini_corpus, mini_meta, steps=4, every=2, extra=MEAN)
    cross_validate(
        ["-p", str(root / "cv"), "--folds", "fold1,fold2", *RUN_ARGS, "-o", opts]
        + ["--deploy", "--export", str(root / "model")]
    )
    return root / "cv", root / "model", opts


def _datarc(root, meta, **extra):
    return {"root": str(root), "meta_data": str(meta), "num_workers": 0, **extra}


def _session_items(meta: Path) -> list[dict]:
    """Every utterance of the prepared corpus: the union of the five sessions' test lists."""
    return [
        item
        for session in sorted(meta.glob("Session*"))
        for item in json.loads((session / "test_meta_data.json").read_text())["meta_data"]
    ]


def test_the_run_trains_on_every_utterance_but_its_dev_set(deployed, mini_corpus, mini_meta):
    cv, _, _ = deployed
    everything = _session_items(mini_meta)
    assert len(everything) == 24  # tests/data/README.md
    # Independently: the SUPERB 80/20 permutation of the pool sorted by path is the dev set.
    pool = sorted(everything, key=utterance_key)
    _, dev_idx = superb_train_dev_split(len(pool), 0.2)
    expected_dev = {Path(pool[i]["path"]).stem for i in dev_idx}
    run_dev = {line.split()[0] for line in (cv / "deploy" / "dev_deploy_predict.txt").read_text().splitlines()}
    assert run_dev == expected_dev  # what the run itself selected checkpoints on
    data = load_fold_data(_datarc(mini_corpus, mini_meta), "deploy")
    train = {data.train.name(i) for i in range(len(data.train))}
    assert train == {Path(item["path"]).stem for item in everything} - expected_dev
    assert len(data.test) == 0
    for session in range(1, 6):  # every fold's test session is training data here
        tested = json.loads((mini_meta / f"Session{session}" / "test_meta_data.json").read_text())["meta_data"]
        assert {Path(item["path"]).stem for item in tested} <= train | expected_dev
    recorded = safe_torch_load(cv / "deploy" / "dev-avg.ckpt")[PROTOCOL_KEY]
    assert recorded["fold"] == "deploy" and recorded["sizes"] == {"train": 19, "dev": 5, "test": 0}
    assert recorded["dev"] == digest(item["path"] for item in pool if Path(item["path"]).stem in expected_dev)
    final = json.loads((cv / "deploy" / "final.json").read_text())
    assert final["test_metrics"] is None and not list((cv / "deploy").glob("test_*"))
    schedule = json.loads((cv / "deploy" / "deployment.json").read_text())
    assert schedule["total_steps"] == 4 and set(schedule["folds"]) == {"fold1", "fold2"}
    assert safe_torch_load(cv / "deploy" / "dev-avg.ckpt")["Config"]["runner"]["total_steps"] == 4


def test_speaker_rule_holds_out_a_whole_session(mini_corpus, mini_meta):
    data = load_fold_data(_datarc(mini_corpus, mini_meta, split="speaker"), "deploy")
    dev = {data.dev.name(i) for i in range(len(data.dev))}
    assert dev and all(name.startswith("Ses05") for name in dev)  # the last session by default
    assert len(data.train) + len(data.dev) == 24 and data.protocol.split["dev_sessions"] == ["Ses05"]


def test_an_official_test_set_never_enters_the_pool(tmp_path):
    from s3prl_ser.data.corpora import msp_podcast
    from test_corpora import make_msp

    root, meta = make_msp(tmp_path / "MSP-Podcast"), tmp_path / "meta"
    manifest = msp_podcast.prepare(root, meta, attributes=False)  # categories only: no X/O rows
    official = manifest.folds["fold1"]
    data = load_fold_data(_datarc(root, meta), "deploy")
    names = {data.train.name(i) for i in range(len(data.train))} | {data.dev.name(i) for i in range(len(data.dev))}
    assert names == set(official.train) | set(official.dev)  # the given dev list joins the pool ...
    assert not names & set(official.test)  # ... the official test set never does
    assert len(data.dev) == 2 and len(data.test) == 0  # dev carved by the superb rule out of 7
    assert data.protocol.official_test == "Test1" and data.protocol.split["rule"] == "superb"
    # end to end: the corpus's one official fold, then its deployment run
    extra = f"{MEAN},,config.downstream_expert.datarc.pre_load=false"
    opts = overrides(root, meta, steps=2, every=2, k=1, extra=extra)
    cross_validate(["-p", str(tmp_path / "exp"), *RUN_ARGS, "-o", opts, "--deploy"])
    run = tmp_path / "exp" / "deploy"
    run_dev = {line.split()[0] for line in (run / "dev_deploy_predict.txt").read_text().splitlines()}
    assert run_dev == {data.dev.name(i) for i in range(len(data.dev))} and not run_dev & set(official.test)
    recorded = safe_torch_load(run / "dev-avg.ckpt")[PROTOCOL_KEY]
    assert recorded["sizes"] == {"train": 5, "dev": 2, "test": 0} and recorded["official_test"] == "Test1"


def _wavs():
    rng = np.random.default_rng(1)
    return [torch.from_numpy(rng.uniform(-0.3, 0.3, n).astype("float32")) for n in (16000, 9000)]


def test_export_loads_offline_with_the_runs_probabilities_and_no_score(deployed, monkeypatch, capsys):
    cv, model, _ = deployed
    expected = EmotionRecognizer.from_pretrained(cv / "deploy").probabilities(_wavs())

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access while loading a model directory: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert torch.equal(EmotionRecognizer.from_pretrained(model).probabilities(_wavs()), expected)
    config = json.loads((model / "config.json").read_text())
    assert config["source"]["kind"] == "deployment" and config["held_out_score"] is None
    assert config["deployment"]["schedule"]["total_steps"] == 4
    assert config["ser_protocol"]["fold"] == "deploy"

    def keys(value):
        if isinstance(value, dict):
            return set(value) | {k for v in value.values() for k in keys(v)}
        return {k for v in value for k in keys(v)} if isinstance(value, list) else set()

    assert not keys(config) & {"wa", "ua", "num_utterances", "test_metrics"}  # no score recorded anywhere
    assert config["deployment"]["schedule"]["cv_dir"] == "cv"  # the run's parent, by name: no absolute path
    card = (model / "README.md").read_text()
    assert str(cv.parent.resolve()) not in card + (model / "config.json").read_text()
    assert "No held-out score" in card and "WA (%)" not in card and "UA" not in card
    metadata = ModelCard.load(model / "README.md").data
    assert metadata.eval_results is None and "model-index" not in metadata.to_dict()  # no invented score
    assert metadata.license == "apache-2.0" and metadata.pipeline_tag == "audio-classification"
    # the CLI route: same refusal of scores, and the deployment run is no ensemble member
    export_cli([str(cv), "--deploy", "-o", str(model.parent / "cli_model")])
    out = capsys.readouterr().out
    assert "wrote" in out and "WA" not in out and "UA" not in out
    assert len(EmotionRecognizer.from_pretrained(export_run(cv, model.parent / "ens", ensemble=True)).members) == 2
    with pytest.raises(ExportError, match="deploy: not a finished fold"):
        export_run(cv, model.parent / "x", fold="deploy")


def test_rerun_reuses_it_and_unfinished_folds_are_refused(deployed, tmp_path, caplog):
    cv, _, opts = deployed
    caplog.set_level(logging.INFO, logger="s3prl_ser")
    train_deployment(cv, request(RUN_ARGS, opts), ["fold1", "fold2"])
    assert "finished earlier, reusing" in caplog.text
    with pytest.raises(ConfigError, match="other settings"):
        train_deployment(cv, request([*RUN_ARGS, "--seed", "3"], opts), ["fold1", "fold2"])
    with pytest.raises(ConfigError, match="fold3: fold not finished"):
        train_deployment(cv, request(RUN_ARGS, opts), ["fold3"])
    with pytest.raises(ExportError, match="no finished deployment run"):
        export_run(tmp_path, tmp_path / "m", deploy=True)


def test_feeding_it_back_into_a_cross_validation_is_refused(deployed, mini_corpus, mini_meta, tmp_path):
    cv, model, opts = deployed
    protocol = load_fold_data(_datarc(mini_corpus, mini_meta), "fold1", read_audio=False).protocol
    for path in (model, model / "model.safetensors", cv / "deploy" / "dev-avg.ckpt", cv / "deploy" / "states-4.ckpt"):
        with pytest.raises(FoldMismatchError, match="is a deployment model"):
            check_fine_tuned(path, protocol)
        with pytest.raises(FoldMismatchError, match="is a deployment model"):
            build_upstream("fbank", str(path), fold="fold3")  # -k of any fold run, stage 1 or 2
    check_fine_tuned(cv / "deploy" / "dev-avg.ckpt", "deploy")  # another deployment run may read it
    fold1 = cv / "fold1" / "dev-avg.ckpt"  # a fold's model is refused for the other folds too
    with pytest.raises(FoldMismatchError, match="fine-tuned for fold1"):
        check_fine_tuned(fold1, "fold2")
    with pytest.raises(FoldMismatchError, match="a deployment run .* cannot use it"):
        check_fine_tuned(fold1, "deploy")  # nor is a one-fold model part of a deployment model
    with pytest.raises(SystemExit, match="is a deployment model"):  # -k MODEL_DIR in a cross-validation
        cross_validate(["-p", str(tmp_path / "cv"), "--folds", "fold1", *RUN_ARGS, "-k", str(model), "-o", opts])
    with pytest.raises(SystemExit, match="is a deployment model"):  # scored on a fold's test set (-e)
        run_downstream(
            ["-m", "evaluate", "-e", str(cv / "deploy" / "dev-avg.ckpt"), "--device", "cpu"]
            + ["-o", "config.downstream_expert.datarc.test_fold=fold1"]
        )
    with pytest.raises(SystemExit, match="is a deployment model"):  # starting weights of a fold (-i)
        run_downstream(train_args(tmp_path / "init", opts, extra=("-i", str(cv / "deploy" / "dev-avg.ckpt"))))
    with pytest.raises(SystemExit, match="has no test set"):
        run_downstream(["-m", "evaluate", "-e", str(cv / "deploy" / "dev-avg.ckpt"), "--device", "cpu"])


def test_a_runner_checkpoint_with_the_older_protocol_key_is_still_guarded(deployed, tmp_path):
    """Runner checkpoints write the record under PROTOCOL_KEY only; one that keeps it under the
    older ``FoldProtocol`` key is read and refused all the same (-k and -i)."""
    cv, _, opts = deployed
    state = safe_torch_load(cv / "deploy" / "dev-avg.ckpt")
    assert "FoldProtocol" not in state
    state["FoldProtocol"] = state.pop(PROTOCOL_KEY)
    older = tmp_path / "older.ckpt"
    torch.save(state, older)
    with pytest.raises(FoldMismatchError, match="is a deployment model"):
        check_fine_tuned(older, "fold1")
    with pytest.raises(SystemExit, match="is a deployment model"):
        run_downstream(train_args(tmp_path / "init", opts, extra=("-i", str(older))))


def test_rerunning_deploy_export_refuses_an_existing_directory_unless_overwrite(deployed, tmp_path, capsys):
    cv, model, opts = deployed
    command = ["-p", str(cv), "--folds", "fold1,fold2", *RUN_ARGS, "-o", opts, "--deploy", "--export"]
    shutil.copytree(model, tmp_path / "model")
    before = (tmp_path / "model" / "config.sha256").read_text()
    with pytest.raises(SystemExit, match=r"^error: .*model exists; pass --overwrite to replace it$"):
        cross_validate([*command, str(tmp_path / "model")])
    assert "[cross_validate]" not in capsys.readouterr().err  # refused before any fold was looked at
    (tmp_path / "other").mkdir()
    with pytest.raises(SystemExit, match=r"other exists and is not a model directory"):
        cross_validate([*command, str(tmp_path / "other"), "--overwrite"])
    (tmp_path / "model" / "notes.txt").write_text("replaced whole")
    cross_validate([*command, str(tmp_path / "model"), "--overwrite"])  # folds and deployment run reused
    printed = capsys.readouterr()  # progress logged to stderr, what was written printed to stdout
    assert "finished earlier, reusing" in printed.err and f"wrote {tmp_path / 'model'}" in printed.out
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted(p.name for p in model.iterdir())
    assert (tmp_path / "model" / "config.sha256").read_text() == before  # the same deployment model
    with pytest.raises(SystemExit):
        cross_validate(["-p", str(cv), *RUN_ARGS, "--overwrite"])  # --overwrite needs --export


def test_cross_validate_refuses_deploy_as_a_fold(mini_corpus, mini_meta, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SystemExit, match="invalid fold 'deploy'"):
            cross_validate(["-p", str(tmp_path), "--folds", "deploy", *RUN_ARGS])
    with pytest.raises(SystemExit):
        cross_validate(["-p", str(tmp_path), *RUN_ARGS, "--export", str(tmp_path / "m")])  # --export needs --deploy


def test_a_killed_deployment_run_resumes_to_the_same_model(deployed, tmp_path, monkeypatch, caplog):
    import shutil

    from s3prl_ser.training.runner import _RunnerHooks

    cv, _, opts = deployed
    copy = tmp_path / "cv"
    shutil.copytree(cv, copy, ignore=shutil.ignore_patterns("deploy"))  # the finished folds only
    save = _RunnerHooks.save

    def save_then_die(self, progress, names, states):
        save(self, progress, names, states)
        if states and progress.step == 2:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(_RunnerHooks, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_deployment(copy, request(RUN_ARGS, opts), ["fold1", "fold2"])
    assert not (copy / "deploy" / "final.json").exists() and (copy / "deploy" / "states-2.ckpt").is_file()
    monkeypatch.setattr(_RunnerHooks, "save", save)
    caplog.set_level(logging.INFO, logger="s3prl_ser")
    train_deployment(copy, request(RUN_ARGS, opts), ["fold1", "fold2"])  # resumes at step 2 (run_downstream -a)
    assert "Resume from" in caplog.text
    resumed = safe_torch_load(copy / "deploy" / "dev-avg.ckpt")["Downstream"]
    reference = safe_torch_load(cv / "deploy" / "dev-avg.ckpt")["Downstream"]
    assert resumed.keys() == reference.keys() and all(torch.equal(resumed[k], reference[k]) for k in reference)
