"""The command-line layer: one error exit for every program, entry points, and layering."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from s3prl_ser.cli.errors import EXPECTED_ERRORS, exit_on_error
from s3prl_ser.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_expected_errors_become_an_error_exit():
    for error in (ConfigError("bad key"), FileNotFoundError("no file"), ValueError("bad value")):
        with pytest.raises(SystemExit) as exit_info:
            with exit_on_error():
                raise error
        assert exit_info.value.code == f"error: {error}"  # sys.exit(str): printed to stderr, status 1
    assert ConfigError in EXPECTED_ERRORS


def test_other_errors_keep_their_traceback():
    with pytest.raises(RuntimeError, match="a bug"):
        with exit_on_error():
            raise RuntimeError("a bug")
    with pytest.raises(ValueError):  # an explicit list replaces the default one
        with exit_on_error(OSError):
            raise ValueError("not expected here")


def test_exit_on_error_as_a_decorator():
    calls = []

    @exit_on_error(KeyError)
    def command(key: str) -> str:
        calls.append(key)
        return {"a": "found"}[key]

    assert command("a") == "found"
    with pytest.raises(SystemExit, match=r"^error: 'b'$"):
        command("b")
    assert calls == ["a", "b"]


def test_every_cli_reports_expected_errors_the_same_way(tmp_path, capsys):
    from s3prl_ser.cli.inference import main as inference
    from s3prl_ser.cli.run_downstream import main as run_downstream
    from s3prl_ser.cli.tiny_upstream import main as tiny_upstream

    with pytest.raises(SystemExit, match=r"^error: checkpoint not found: .*nope\.ckpt"):
        inference([str(tmp_path / "nope.ckpt"), "speech.wav", "--device", "cpu"])
    with pytest.raises(SystemExit, match=r"^error: config file not found: .*missing\.yaml"):
        run_downstream(
            [
                "-m",
                "train",
                "-u",
                "fbank",
                "-d",
                "emotion_ecapa",
                "-c",
                str(tmp_path / "missing.yaml"),
                "-p",
                str(tmp_path / "run"),
            ]
        )
    with pytest.raises(SystemExit, match=r"^error: dim \(30\) must be divisible by heads \(4\)"):
        tiny_upstream(["hubert", str(tmp_path / "t.pt"), "--dim", "30"])


def test_library_never_imports_a_cli_module():
    offenders = []
    for path in sorted((REPO / "s3prl_ser").rglob("*.py")):
        if "cli" in path.relative_to(REPO / "s3prl_ser").parts:
            continue
        if re.search(
            r"^\s*(from|import)\s+s3prl_ser\.cli\b|^\s*from\s+s3prl_ser\s+import\s+cli\b", path.read_text(), re.M
        ):
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders


def test_upstream_ft_is_a_thin_entry_to_the_cli():
    import upstream_ft.__main__ as entry
    from s3prl_ser.cli import finetune

    assert entry.main is finetune.main
    help_text = subprocess.run(
        [sys.executable, "-m", "upstream_ft", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert help_text.startswith("usage: python -m upstream_ft") and "--folds" in help_text


def test_demo_seeds():
    from s3prl_ser.cli.demo import main as demo
    from s3prl_ser.experiments.main_job import main_job_seeds as _seeds

    assert _seeds(None, "fbank") == [0, 1, 2, 3, 4] and _seeds("7,8", "fbank") == [7, 8]
    assert _seeds(None, "finetune") == [None] and _seeds("5", "finetune") == [5]
    for argv, message in (
        (["--pipeline", "table1", "--seeds", "3"], "table1 none"),
        (["--pipeline", "finetune", "--seeds", "3,4"], "finetune one"),
        (["--seeds", "a,b"], "comma-separated integers, got 'a,b'"),
    ):
        with pytest.raises(SystemExit, match=f"^error: --seeds.*{message}"):
            demo(argv)  # refused before the corpus is generated
