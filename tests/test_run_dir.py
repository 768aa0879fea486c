"""RunDir: the one reader and writer of a run directory's records (final.json, test metrics,
deployment record, states), and its "finished with these settings?" answers."""

import argparse
import os

import pytest
import torch

from s3prl_ser.config import ConfigError
from s3prl_ser.experiments.cross_validation import check_unfinished, fold_finished
from s3prl_ser.training.run_dir import NO_IDENTITY, RunDir
from s3prl_ser.training.run_identity import run_identity


def _identity(fold: str = "fold1", seed: int = 1) -> dict:
    config = {"downstream_expert": {"datarc": {"test_fold": fold}}, "runner": {"total_steps": 8}}
    return run_identity(argparse.Namespace(upstream="fbank", seed=seed), config)


def _finish(path, fold: str = "fold1", identity: dict | None = None, metrics: dict | None = None) -> RunDir:
    run = RunDir(path)
    path.mkdir(parents=True, exist_ok=True)
    tested = fold != "deploy"
    if tested:
        (path / f"test_{fold}_metrics.json").write_text('{"ua": 0.5, "wa": 0.6, "num_utterances": 7}')
    run.write_final(
        {
            "checkpoint": "dev-avg.ckpt",
            "test_metrics": f"test_{fold}_metrics.json" if tested else None,
            "identity": identity,
        }
    )
    return run


def test_final_record_round_trip_and_what_it_names(tmp_path):
    run = RunDir(tmp_path / "fold1")
    assert not run.is_finished() and run.final() is None and run.test_metrics() is None
    with pytest.raises(FileNotFoundError, match=r"fold1: no final\.json; is training of this fold finished\?"):
        run.reported_checkpoint()
    _finish(tmp_path / "fold1", identity=_identity())
    assert run.reported_checkpoint() == tmp_path / "fold1" / "dev-avg.ckpt"
    assert run.test_metrics() == {"ua": 0.5, "wa": 0.6, "num_utterances": 7}
    assert run.identity() == _identity() and not run.is_deployment()
    assert sorted(os.listdir(tmp_path / "fold1")) == ["final.json", "test_fold1_metrics.json"]  # no temporary


def test_finished_with_these_settings(tmp_path):
    run = _finish(tmp_path / "fold1", identity=_identity(seed=1))
    assert RunDir(tmp_path / "fold2").finished_differences(_identity()) is None
    assert run.finished_differences(_identity(seed=1)) == []
    assert run.finished_differences(_identity(seed=2)) == ["args.seed: 1 -> 2"]
    assert _finish(tmp_path / "old", identity=None).finished_differences(_identity()) == [NO_IDENTITY]
    # the cross-validation's reading of the same records
    assert fold_finished(tmp_path / "fold1", "fold1", _identity(seed=1))["ua"] == 0.5
    with pytest.raises(ConfigError, match=r"finished with other settings \(args\.seed: 1 -> 2\)"):
        fold_finished(tmp_path / "fold1", "fold1", _identity(seed=2))
    with pytest.raises(ConfigError, match="finished before runs recorded their settings"):
        fold_finished(tmp_path / "old", "fold1", _identity())


def test_a_damaged_final_record_is_named(tmp_path):
    """A truncated final.json (written by hand, or by a tool that is not atomic) is an error
    naming the file, which the commands print as one error line, not a JSON traceback."""
    _finish(tmp_path / "fold1", identity=_identity())
    (tmp_path / "fold1" / "final.json").write_text('{"checkpoint": "dev-')
    with pytest.raises(ValueError, match=r"fold1/final\.json: not a readable JSON file"):
        fold_finished(tmp_path / "fold1", "fold1", _identity())


def test_deployment_run_and_its_record(tmp_path):
    run = _finish(tmp_path / "deploy", fold="deploy", identity=_identity(fold="deploy"))
    assert run.is_deployment() and run.test_metrics() is None
    assert run.deployment_record() is None
    run.write_deployment_record({"total_steps": 8, "folds": {"fold1": {"total_steps": 8}}})
    assert run.deployment_record()["total_steps"] == 8
    # -v deploy instead of datarc.test_fold: the expert resolves the fold the same way
    by_variant = run_identity(argparse.Namespace(downstream_variant="deploy"), {"downstream_expert": {"datarc": {}}})
    assert _finish(tmp_path / "v", fold="deploy", identity=by_variant).is_deployment()


def test_unfinished_run_with_other_settings_is_refused(tmp_path):
    run = RunDir(tmp_path / "fold1")
    assert run.latest_states() is None and run.unfinished_differences(_identity()) == []
    (tmp_path / "fold1").mkdir()
    identity = _identity(seed=1)
    for step in (2, 4):
        torch.save(
            {"Args": argparse.Namespace(**identity["args"]), "Config": identity["config"]},
            run.path / f"states-{step}.ckpt",
        )
    assert run.latest_states() == run.path / "states-4.ckpt"
    assert run.unfinished_differences(_identity(seed=1)) == []
    check_unfinished(run.path, _identity(seed=1))
    with pytest.raises(ConfigError, match=r"unfinished run with other settings \(args\.seed: 1 -> 2\)"):
        check_unfinished(run.path, _identity(seed=2))
