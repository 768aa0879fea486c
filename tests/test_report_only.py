"""The cross-validation report of folds trained as independent jobs (cross_validate --report-only)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import overrides, train_args
from s3prl_ser.cli.cross_validate import main as cross_validate_main
from s3prl_ser.training.run_lock import DirectoryLock

REPO = Path(__file__).resolve().parents[1]
FOLDS = ("fold1", "fold3")


def _results(root: Path) -> tuple[dict, str]:
    return json.loads((root / "results.json").read_text()), (root / "results.md").read_text()


@pytest.mark.usefixtures("one_thread")
def test_report_gathers_folds_trained_as_separate_jobs(mini_corpus, mini_meta, tmp_path):
    root = tmp_path / "cv"
    opts = overrides(mini_corpus, mini_meta, steps=4, every=2)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # Like a Slurm array: one run_downstream.py process per fold, side by side, each in ROOT/<fold>.
    jobs = [
        subprocess.Popen(
            [
                sys.executable,
                "run_downstream.py",
                *train_args(root / fold, f"{opts},,config.downstream_expert.datarc.test_fold={fold}", extra=("-a",)),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for fold in FOLDS
    ]
    for job in jobs:
        _, err = job.communicate(timeout=600)
        assert job.returncode == 0, err[-3000:]
    trained = {fold: (root / fold / "dev-avg.ckpt").stat().st_mtime_ns for fold in FOLDS}
    argv = ["-p", str(root), "--folds", ",".join(FOLDS), "-u", "fbank", "-d", "emotion_ecapa", "--device", "cpu"]
    argv += ["-o", opts]

    cross_validate_main([*argv, "--report-only"])
    reported = _results(root)
    assert (root / "confusion.png").stat().st_size > 1000
    assert sorted(reported[0]["folds"]) == list(FOLDS)
    for fold in FOLDS:  # each fold's own test metrics, as its job wrote them
        metrics = json.loads((root / fold / f"test_{fold}_metrics.json").read_text())
        assert reported[0]["folds"][fold]["ua"] == pytest.approx(100 * metrics["ua"])
    (root / "results.json").unlink()
    cross_validate_main(argv)  # the cross-validation's own report of the same folds
    assert _results(root) == reported
    assert {fold: (root / fold / "dev-avg.ckpt").stat().st_mtime_ns for fold in FOLDS} == trained  # nothing retrained

    (root / "fold4").mkdir()  # a job that has not finished (or not started writing)
    folds = ["--folds", "fold1,fold2,fold3,fold4"]
    with pytest.raises(
        SystemExit, match=r"^error: cannot report .*: fold2 is missing \(no .*fold2\); fold4 is unfinished"
    ):
        cross_validate_main([*argv, *folds, "--report-only"])
    other = [*argv[:-1], f"{opts},,config.optimizer.lr=0.5", "--report-only"]
    with pytest.raises(SystemExit, match=r"fold1 finished with other settings \(config.optimizer.lr: .* -> 0.5\)"):
        cross_validate_main(other)
    with DirectoryLock(root / "fold3"):  # a job still running in that fold
        with pytest.raises(SystemExit, match=r"fold3 is in use by another run \(pid"):
            cross_validate_main([*argv, "--report-only"])
    assert not list((root / "fold4").iterdir())  # not locked, not written
    assert not (root / "fold2").exists()  # nothing trained


def test_report_only_refuses_what_would_train(tmp_path, capsys):
    argv = ["-p", str(tmp_path), "-u", "fbank", "-d", "emotion_ecapa", "--report-only"]
    for extra in (["--deploy"], ["--workers", "2"]):
        with pytest.raises(SystemExit):
            cross_validate_main([*argv, *extra])
        assert "--report-only trains nothing: drop --deploy and --workers" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
