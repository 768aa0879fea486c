"""Folds trained in single-thread worker processes equal the same folds trained here."""

import json
import pickle

import pytest

from helpers import overrides, run_request
from s3prl_ser.experiments.cross_validation import FoldRun, cross_validate, train_in_workers
from s3prl_ser.fileio import safe_torch_load
from s3prl_ser.training.run_lock import DirectoryInUseError, DirectoryLock

pytestmark = pytest.mark.usefixtures("one_thread")  # this process on one thread, as each worker

RUN_ARGS = ["-u", "fbank", "-d", "emotion_ecapa", "--device", "cpu", "--seed", "3"]


def request(opts):
    """The folds' shared run: :data:`RUN_ARGS` with the overrides ``opts``."""
    return run_request(["-m", "train", *RUN_ARGS, "-o", opts])


def test_workers_compute_what_one_thread_computes_here(mini_corpus, mini_meta, tmp_path):
    extra = overrides(mini_corpus, mini_meta, steps=4, every=2)
    here = cross_validate(tmp_path / "here", request(extra), ["fold1", "fold3"])
    there = cross_validate(tmp_path / "workers", request(extra), ["fold1", "fold3"], workers=2)
    assert there == here
    for fold in ("fold1", "fold3"):
        assert (tmp_path / "workers" / fold / "worker.log").read_text().count("training in") == 1
        a = safe_torch_load(tmp_path / "here" / fold / "dev-avg.ckpt")["Downstream"]
        b = safe_torch_load(tmp_path / "workers" / fold / "dev-avg.ckpt")["Downstream"]
        assert a.keys() == b.keys() and all(a[key].equal(b[key]) for key in a)
    report = json.loads((tmp_path / "workers" / "results.json").read_text())
    assert sorted(report["folds"]) == ["fold1", "fold3"]

    # Finished folds are reused without a worker; changed settings are refused before any starts.
    fold1 = FoldRun(tmp_path / "workers", request(extra), "fold1")
    reused = train_in_workers([fold1], 2)
    assert 100 * reused[fold1]["ua"] == here["folds"]["fold1"]["ua"] and reused[fold1]["fold"] == "fold1"
    changed = FoldRun(tmp_path / "workers", request(extra + ",,config.optimizer.lr=0.5"), "fold3")
    with pytest.raises(ValueError, match="fold3 finished with other settings"):
        train_in_workers([changed], 2)


def test_a_worker_refused_a_directory_reports_it_to_the_parent(mini_corpus, mini_meta, tmp_path):
    extra = overrides(mini_corpus, mini_meta, steps=4, every=2)
    (tmp_path / "fold1").mkdir()
    with DirectoryLock(tmp_path / "fold1"):  # held by this process, so the worker is refused
        with pytest.raises(DirectoryInUseError, match="fold1 is in use by another run") as refused:
            train_in_workers([FoldRun(tmp_path, request(extra), "fold1")], 1)
    assert refused.value.directory == tmp_path / "fold1" and refused.value.holder["command"]
    copy = pickle.loads(pickle.dumps(refused.value))
    assert (copy.directory, copy.holder, str(copy)) == (
        refused.value.directory,
        refused.value.holder,
        str(refused.value),
    )
