"""The library logs instead of printing; the commands print results, log progress to stderr, take
-q/-v, keep s3prl's import-time noise out unless -v, and document every option."""

import argparse
import ast
import importlib
import logging
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import s3prl_ser.cli
from s3prl_ser.cli.logs import add_verbosity_options, setup_logging

REPO = Path(__file__).resolve().parents[1]


def _commands() -> dict[str, argparse.ArgumentParser]:
    return {
        info.name: importlib.import_module(f"s3prl_ser.cli.{info.name}").build_parser()
        for info in pkgutil.iter_modules(s3prl_ser.cli.__path__)
        if hasattr(importlib.import_module(f"s3prl_ser.cli.{info.name}"), "build_parser")
    }


def test_every_command_option_has_help_and_shows_its_default():
    commands = _commands()
    assert {"run_downstream", "cross_validate", "inference", "export", "finetune", "main"} <= commands.keys()
    undocumented, hidden_default = [], []
    for name, parser in commands.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            option = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                undocumented.append(option)
            elif (
                action.option_strings
                and action.default not in (None, False, "", argparse.SUPPRESS)
                and "default" not in action.help
            ):
                hidden_default.append(option)
    assert undocumented == [] and hidden_default == []


def test_the_library_does_not_print():
    library = [p for p in (REPO / "s3prl_ser").rglob("*.py") if "cli" not in p.relative_to(REPO / "s3prl_ser").parts]
    printing = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for path in [*library, REPO / "downstream" / "emotion_ecapa" / "expert.py"]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]
    assert len(library) > 50 and printing == []


@pytest.mark.parametrize(
    "flags, shown",
    [
        ([], ["progress", "warning: a note"]),
        (["-q"], ["warning: a note"]),
        (["-v"], ["debug: detail", "progress", "warning: a note", "a library's chatter"]),
    ],
)
def test_quiet_and_verbose(flags, shown, capsys, monkeypatch):
    from tqdm import tqdm

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(tqdm, "__init__", tqdm.__init__)  # -q changes it for the process: restored after
    parser = argparse.ArgumentParser()
    add_verbosity_options(parser)
    setup_logging(parser.parse_args(flags))
    setup_logging(parser.parse_args(flags))  # again (a command calling another): still one handler
    library = logging.getLogger("s3prl_ser.experiments.demo_module")
    library.debug("detail")
    library.info("progress")
    library.warning("a note")
    logging.getLogger("some_dependency").info("a library's chatter")
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.splitlines() == shown
    assert tqdm(range(2)).disable == (flags == ["-q"])  # -q turns progress bars off


def test_s3prl_noise_only_with_verbose(tmp_path):
    """A real command that builds an s3prl upstream (importing s3prl.hub) and then stops on a
    missing setting: by default its stderr is its progress and that error; --verbose shows s3prl's
    ESPnet warning and Featurizer note as log records."""
    command = [sys.executable, "-m", "s3prl_ser.cli.run_downstream", "-m", "train", "-u", "fbank"]
    command += ["-d", "emotion_ecapa", "-p", str(tmp_path / "run"), "--no_feature_cache", "--device", "cpu"]
    command += ["-o", "config.downstream_expert.datarc.root=/nonexistent"]
    error = "error: downstream_expert.datarc.meta_data is not set"

    def stderr(*extra: str) -> list[str]:
        done = subprocess.run([*command, *extra], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1 and done.stdout == "", done.stderr[-3000:]
        return [line for line in done.stderr.splitlines() if not line.startswith(" ")]

    default = stderr()  # progress as the plain message, then the error
    assert len(default) == 2 and default[0].startswith("[FeatureCache] - off: ") and default[1].startswith(error)
    verbose = stderr("--verbose")
    assert "warning: ESPnet is not installed, cannot use espnet_hubert upstream" in verbose
    assert any(line.startswith("debug: [Featurizer] - ") for line in verbose) and verbose[-1].startswith(error)
