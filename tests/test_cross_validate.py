import json

import pytest

from helpers import overrides
from s3prl_ser.cli.cross_validate import main as cross_validate_main


@pytest.fixture(scope="module")
def meta(mini_meta):
    return mini_meta


def test_runs_folds_writes_report_and_reuses_finished_folds(mini_corpus, meta, tmp_path, capsys):
    argv = [
        "-p",
        str(tmp_path),
        "--folds",
        "fold1,fold3",
        "-u",
        "fbank",
        "-d",
        "emotion_ecapa",
        "--device",
        "cpu",
        "-o",
        overrides(mini_corpus, meta, steps=4, every=2),
    ]
    cross_validate_main(argv)
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(results["folds"]) == ["fold1", "fold3"]
    assert results["folds"]["fold1"]["num_utterances"] == 7 and results["folds"]["fold3"]["num_utterances"] == 4
    assert sum(map(sum, results["confusion"])) == 11  # every test utterance of both folds, once
    fold_ua = [results["folds"][f]["ua"] for f in ("fold1", "fold3")]
    assert results["ua"]["mean"] == pytest.approx(sum(fold_ua) / 2)
    assert (tmp_path / "results.md").read_text().startswith("# ")
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    mtime = (tmp_path / "fold1" / "dev-avg.ckpt").stat().st_mtime_ns
    capsys.readouterr()

    cross_validate_main(argv)  # second run: nothing retrained
    printed = capsys.readouterr()  # progress is logged to stderr, the results table printed to stdout
    assert "fold1: finished earlier" in printed.err and "fold3: finished earlier" in printed.err
    assert printed.out == (tmp_path / "results.md").read_text() + "\n"
    assert (tmp_path / "fold1" / "dev-avg.ckpt").stat().st_mtime_ns == mtime

    changed = argv[:-1] + [argv[-1] + ",,config.optimizer.lr=0.5"]  # same name, another experiment
    with pytest.raises(SystemExit, match=r"fold1 finished with other settings \(config.optimizer.lr: .* -> 0.5\)"):
        cross_validate_main(changed)
    with pytest.raises(SystemExit, match=r"fold1 finished with other settings \(args.upstream: 'fbank' -> 'mfcc'\)"):
        cross_validate_main([a if a != "fbank" else "mfcc" for a in argv])

    (tmp_path / "fold3" / "final.json").unlink()  # as if killed before the end
    only_fold3 = [a if a != "fold1,fold3" else "fold3" for a in changed]
    with pytest.raises(SystemExit, match=r"fold3 holds an unfinished run with other settings \(config.optimizer.lr"):
        cross_validate_main(only_fold3)
    legacy = json.loads((tmp_path / "fold1" / "final.json").read_text())
    del legacy["identity"]
    (tmp_path / "fold1" / "final.json").write_text(json.dumps(legacy))
    with pytest.raises(SystemExit, match=r"fold1 finished before runs recorded their settings"):
        cross_validate_main(argv)


def test_bad_fold_name_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="invalid fold 'fold0'"):
        cross_validate_main(["-p", str(tmp_path), "--folds", "fold0", "-u", "fbank", "-d", "emotion_ecapa"])
    with pytest.raises(SystemExit, match="sets each fold itself; drop -v"):
        cross_validate_main(["-p", str(tmp_path), "-u", "fbank", "-d", "emotion_ecapa", "-v", "fold2"])


def test_fold_lookup_in_a_fresh_process_reads_the_task_defaults(mini_meta, tmp_path):
    """The folds come from the meta data before anything registered the project's tasks: the
    README's command (no --folds) once stopped with "no config.yaml for downstream task", and
    with -c with "unknown config key ... datarc.root" (the -c file read without the defaults)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    meta = tmp_path / "meta"
    for session in ("Session2", "Session4"):  # two folds: not IEMOCAP's five, which is the fallback
        shutil.copytree(mini_meta / session, meta / session)
    opts = f"config.downstream_expert.datarc.root=/corpus,,config.downstream_expert.datarc.meta_data={meta}"
    code = (  # a fresh interpreter: nothing has called s3prl_ser.upstreams.registry.register()
        "from s3prl_ser.config import parse_overrides\n"
        "from s3prl_ser.experiments.cross_validation import corpus_folds\n"
        "from s3prl_ser.experiments.launch import RunRequest\n"
        f"run = RunRequest(upstream='fbank', downstream='emotion_ecapa', overrides=tuple(parse_overrides({opts!r})))\n"
        "print(corpus_folds(run))\n"
        "print(corpus_folds(RunRequest(**{**vars(run), 'config': 'downstream/emotion_ecapa/config_builtin.yaml'})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-2:] == ["['fold2', 'fold4']"] * 2
