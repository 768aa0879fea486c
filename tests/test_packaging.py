"""The installed command (``s3prl-ser SUBCOMMAND``) and what a wheel installs."""

import importlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from s3prl_ser.cli.main import SUBCOMMANDS, main

REPO = Path(__file__).resolve().parents[1]
# What setup.py and pyproject.toml package: the wheel is built from a copy of these alone.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "s3prl_ser", "downstream", "upstream_ft")


def test_help_lists_every_subcommand_and_imports_none():
    # A fresh process: this one has imported the CLI modules already.
    probe = (
        "import sys\n"
        "from s3prl_ser.cli.main import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 's3prl' or m.startswith('s3prl_ser.cli.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout
    help_text, loaded = out.rstrip().rsplit("\n", 1)
    assert help_text.startswith("usage: s3prl-ser")
    for name, (_, summary) in SUBCOMMANDS.items():
        assert re.search(rf"^  {re.escape(name)} +{re.escape(summary)}$", help_text, re.M), name
    assert max(map(len, help_text.splitlines())) <= 80  # one line per subcommand on a terminal
    assert loaded == "['s3prl_ser.cli.main']"


def test_every_cli_program_is_a_subcommand():
    programs = {
        path.stem
        for path in (REPO / "s3prl_ser" / "cli").glob("*.py")
        if path.stem != "main" and re.search(r"^def main\(", path.read_text(), re.M)
    }
    assert sorted(module for module, _ in SUBCOMMANDS.values()) == sorted(programs)


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_subcommand_help_is_the_program_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    via_subcommand = capsys.readouterr().out
    with pytest.raises(SystemExit):
        importlib.import_module(f"s3prl_ser.cli.{SUBCOMMANDS[name][0]}").main(["--help"])
    assert via_subcommand == capsys.readouterr().out and via_subcommand.startswith("usage: ")


def test_subcommand_runs_the_program_with_its_arguments(tmp_path, capsys):
    from s3prl_ser.fileio import safe_torch_load

    main(["tiny-upstream", "wav2vec2", str(tmp_path / "tiny.pt"), "--layers", "1", "--dim", "32"])
    assert f"wrote tiny wav2vec2 checkpoint to {tmp_path / 'tiny.pt'}" in capsys.readouterr().out
    config = safe_torch_load(tmp_path / "tiny.pt")["model_cfg"]
    assert (config["encoder_layers"], config["encoder_embed_dim"]) == (1, 32)
    with pytest.raises(SystemExit, match=r"^error: dim \(30\) must be divisible by heads \(4\)"):
        main(["tiny-upstream", "hubert", str(tmp_path / "bad.pt"), "--dim", "30"])
    assert not (tmp_path / "bad.pt").exists()


def test_usage_errors(capsys):
    for argv, message in (
        ([], "required: SUBCOMMAND"),
        (["trian"], "unknown subcommand 'trian' (choose from demo, train"),
        (["--device", "cpu", "train"], "unrecognized arguments: --device"),
        (["--", "train"], "the subcommand comes first"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of its sources with this environment's setuptools."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(
            REPO / name,
            source / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            str(source),
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("s3prl_ser-*.whl")
    return built


def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/METADATA"))
        metadata = archive.read(f"{info}/METADATA").decode()
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        license_text = archive.read(f"{info}/licenses/LICENSE").decode()
    assert {name.split("/")[0] for name in names} == {"s3prl_ser", info}  # no top-level downstream/upstream_ft
    for name in (
        "s3prl_ser/py.typed",
        "s3prl_ser/cli/main.py",
        "s3prl_ser/_downstream/emotion_ecapa/expert.py",
        "s3prl_ser/_downstream/emotion_ecapa/config.yaml",
        "s3prl_ser/_downstream/emotion_ecapa/config_builtin.yaml",
        "s3prl_ser/_downstream/emotion_ecapa/paper/exp11.yaml",
        "s3prl_ser/_downstream/emotion/config.yaml",
    ):
        assert name in names
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert license_text == (REPO / "LICENSE").read_text() and "Apache License\n" in license_text
    assert re.search(r"^\[console_scripts\]\ns3prl-ser = s3prl_ser\.cli\.main:main$", entry_points, re.M)


def test_installed_wheel_finds_its_task_and_runs_the_command(wheel, tmp_path):
    # A scratch environment over this one's packages (torch, s3prl), holding only the wheel;
    # run outside the checkout so that nothing is imported from it.
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(env)], check=True)
    python = env / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import importlib, importlib.util, json, s3prl_ser\n"
        "from s3prl_ser.upstreams.registry import default_config, register\n"
        "register()\n"
        "expert = importlib.import_module('s3prl.downstream.emotion_ecapa.expert')\n"
        "print(json.dumps({'package': s3prl_ser.__file__, 'expert': expert.__file__,\n"
        "    'config': str(default_config('emotion_ecapa')), 'stock_config': str(default_config('emotion')),\n"
        "    'generic': [n for n in ('downstream', 'upstream_ft') if importlib.util.find_spec(n)]}))\n"
    )
    found = json.loads(
        subprocess.run([str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    )
    installed = Path(found["package"]).parent
    assert installed.is_relative_to(env)
    assert found["expert"] == str(installed / "_downstream" / "emotion_ecapa" / "expert.py")
    assert found["config"] == str(installed / "_downstream" / "emotion_ecapa" / "config.yaml")
    assert found["stock_config"] == str(installed / "_downstream" / "emotion" / "config.yaml")
    assert found["generic"] == []
    help_text = subprocess.run(
        [str(env / "bin" / "s3prl-ser"), "--help"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert help_text.startswith("usage: s3prl-ser") and "  finetune " in help_text
