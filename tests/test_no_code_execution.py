"""No checkpoint may run code: a pickle whose payload writes a marker file, fired through every
entry point that reads a checkpoint (s3prl's tera/mockingjay/distiller loaders ask ``torch.load``
for full unpickling; :mod:`s3prl_ser.compat` makes every load weights-only).

Each row of :data:`ROWS` gets its own payload file, ``evil.pt``, and a *poisoned* copy of one
tiny finished run whose ``Args`` name ``-u tera_local -k evil.pt``; it runs one entry point and
checks that the marker was never written and that the message names the file.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from helpers import finetune_args, overrides, train_args
from s3prl_ser import compat
from s3prl_ser.cli.average_checkpoints import main as average_checkpoints
from s3prl_ser.cli.cross_validate import main as cross_validate
from s3prl_ser.cli.run_downstream import main as run_downstream
from s3prl_ser.inference import EmotionRecognizer
from upstream_ft.__main__ import main as upstream_ft

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this creates ``marker``: no shell, just ``Path.touch``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, mini_corpus, mini_meta) -> Path:
    """A 2-step fbank + emotion_ecapa run of fold1 (final model, states, final.json)."""
    expdir = tmp_path_factory.mktemp("no_code_execution") / "run"
    run_downstream(train_args(expdir, overrides(mini_corpus, mini_meta, steps=2, every=2, k=1)))
    return expdir


class Case:
    """One row's payload (``evil.pt`` -> ``PWNED``) and a poisoned copy of the finished run."""

    def __init__(self, tmp: Path, run: Path, corpus: Path, meta: Path) -> None:
        self.tmp, self.run, self.corpus, self.meta = tmp, run, corpus, meta
        self.marker = tmp / "PWNED"
        self.evil = tmp / "evil.pt"
        torch.save({"Config": Payload(self.marker), "Transformer": {}}, self.evil)
        self.poisoned = tmp / "poisoned"
        shutil.copytree(run, self.poisoned)
        self.final = self.poisoned / "dev-avg.ckpt"
        self.states = self.poisoned / "states-2.ckpt"
        for path in (self.final, self.states):
            ckpt = compat.safe_torch_load(path)
            ckpt["Args"].upstream, ckpt["Args"].upstream_ckpt = "tera_local", str(self.evil)
            torch.save(ckpt, path)
        self.wav = next(corpus.glob("Session1/sentences/wav/*/*.wav"))

    def opts(self) -> str:
        return overrides(self.corpus, self.meta, steps=2, every=2, k=1)

    def evil_runner_checkpoint(self) -> Path:
        """A file looking like a runner checkpoint, with a payload among its entries."""
        ckpt = compat.safe_torch_load(self.run / "dev-avg.ckpt")
        path = self.tmp / "dev-top-step2.ckpt"
        torch.save({**ckpt, "Extra": Payload(self.marker)}, path)
        return path


def exit_message(main: Callable, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return str(info.value.code)


def train(c: Case, upstream: str, ckpt) -> str:
    return exit_message(run_downstream, train_args(c.tmp / "exp", c.opts(), upstream=upstream, ckpt=ckpt))


def tera_url(c: Case, monkeypatch) -> str:
    """``-u tera_url -k http://...``: s3prl downloads the file, then unpickles it (a local server)."""
    import functools
    import http.server
    import threading

    import s3prl.util.download

    for proxy in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(s3prl.util.download, "_download_dir", c.tmp / "downloads")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(c.tmp))
    handler.log_message = lambda *args: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            return train(c, "tera_url", f"http://127.0.0.1:{server.server_port}/{c.evil.name}")
        finally:
            server.shutdown()


def evaluate_init_ckpt(c: Case, ckpt: Path, upstream: str, upstream_ckpt) -> str:
    argv = train_args(c.tmp / "eval", c.opts(), upstream=upstream, ckpt=upstream_ckpt, extra=("-i", str(ckpt)))
    argv[1] = "evaluate"
    return exit_message(run_downstream, argv)


def from_pretrained(c: Case, path: Path) -> str:
    with pytest.raises(ValueError) as info:
        EmotionRecognizer.from_pretrained(path)
    return str(info.value)


def inference_cli(c: Case) -> str:
    """A fresh process: the guard must come with the entry point, not with this test session."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    command = [sys.executable, "-m", "s3prl_ser.cli.inference", str(c.poisoned), str(c.wav), "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=c.tmp)
    assert done.returncode == 1, done.stderr[-3000:]
    return done.stderr.strip().splitlines()[-1]


def stage1(c: Case, upstream: str) -> str:
    opts = ",,".join(
        [
            f"config.datarc.root={c.corpus}",
            f"config.datarc.meta_data={c.meta}",
            "config.runner.total_steps=2",
            "config.scheduler.warmup_steps=1",
            "config.datarc.num_workers=0",
        ]
    )
    return exit_message(upstream_ft, finetune_args(upstream, c.evil, "fold1", c.tmp / "ft", opts))


# (id, entry point, what the message must name: "evil" = the payload file's path)
ROWS: list[tuple[str, Callable, str]] = [
    ("-u tera_local -k", lambda c, mp: train(c, "tera_local", c.evil), "evil"),
    ("-u mockingjay_local -k", lambda c, mp: train(c, "mockingjay_local", c.evil), "evil"),
    ("-u distiller_local -k", lambda c, mp: train(c, "distiller_local", c.evil), "evil"),
    ("-u hubert_local -k", lambda c, mp: train(c, "hubert_local", c.evil), "evil"),
    ("-u tera_url -k http://", tera_url, ".evil.pt"),  # s3prl's downloaded copy: <sha256>.evil.pt
    ("-m train -e states", lambda c, mp: exit_message(run_downstream, ["-m", "train", "-e", str(c.states)]), "evil"),
    (
        "-m evaluate -e",
        lambda c, mp: exit_message(run_downstream, ["-m", "evaluate", "-e", str(c.final), "--device", "cpu"]),
        "evil",
    ),
    (
        "-m inference -e",
        lambda c, mp: exit_message(
            run_downstream, ["-m", "inference", "-e", str(c.final), "-t", str(c.wav), "--device", "cpu"]
        ),
        "evil",
    ),
    (
        "-m evaluate -i, -u tera_local -k",
        lambda c, mp: evaluate_init_ckpt(c, c.run / "dev-avg.ckpt", "tera_local", c.evil),
        "evil",
    ),
    (
        "-m evaluate -i payload",
        lambda c, mp: evaluate_init_ckpt(c, c.evil_runner_checkpoint(), "fbank", None),
        "dev-top-step2.ckpt",
    ),
    (
        "-m evaluate -e payload",
        lambda c, mp: exit_message(run_downstream, ["-m", "evaluate", "-e", str(c.evil)]),
        "evil",
    ),
    ("EmotionRecognizer (run dir)", lambda c, mp: from_pretrained(c, c.poisoned), "evil"),
    ("EmotionRecognizer (payload)", lambda c, mp: from_pretrained(c, c.evil), "evil"),
    ("python -m s3prl_ser.cli.inference", lambda c, mp: inference_cli(c), "evil"),
    (
        "average_checkpoints (payload file)",
        lambda c, mp: exit_message(
            average_checkpoints, [str(c.run / "dev-avg.ckpt"), str(c.evil), "-o", str(c.tmp / "avg.ckpt")]
        ),
        "evil",
    ),
    (
        "average_checkpoints (payload entry)",
        lambda c, mp: exit_message(
            average_checkpoints,
            [str(c.run / "dev-avg.ckpt"), str(c.evil_runner_checkpoint()), "-o", str(c.tmp / "avg.ckpt")],
        ),
        "dev-top-step2.ckpt",
    ),
    (
        "cross_validate -u tera_local -k",
        lambda c, mp: exit_message(
            cross_validate,
            ["-p", str(c.tmp / "cv"), "--folds", "fold1", "-u", "tera_local", "-k", str(c.evil), "-d", "emotion_ecapa"]
            + ["--device", "cpu", "-o", c.opts()],
        ),
        "evil",
    ),
    ("upstream_ft -u tera_local -k", lambda c, mp: stage1(c, "tera_local"), "evil"),
    ("upstream_ft -u hubert_local -k", lambda c, mp: stage1(c, "hubert_local"), "evil"),
]


@pytest.mark.parametrize(("entry", "named"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_no_entry_point_runs_a_checkpoints_code(
    entry, named, tmp_path, monkeypatch, finished_run, mini_corpus, mini_meta
):
    c = Case(tmp_path, finished_run, mini_corpus, mini_meta)
    message = entry(c, monkeypatch)
    assert not c.marker.exists(), f"the checkpoint's code ran; message: {message}"
    named = str(c.evil) if named == "evil" else named
    assert "cannot load checkpoint" in message and named in message, message
    assert "weights_only=False" in message and "torch.save" in message, message  # how to convert it


def test_torch_load_is_weights_only_whatever_the_caller_asks(tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    torch.save({"x": Payload(marker)}, tmp_path / "evil.pt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # set after install(): no effect
    for kwargs in ({"weights_only": False}, {"pickle_module": pickle}, {}):
        with pytest.raises(
            compat.UnsafeCheckpointError, match=r"cannot load checkpoint .*evil\.pt.*Unsupported global"
        ):
            torch.load(tmp_path / "evil.pt", **kwargs)
    with pytest.raises(compat.UnsafeCheckpointError):
        torch.serialization.load(tmp_path / "evil.pt", weights_only=False)
    assert not marker.exists()


def test_full_unpickling_requests_still_load_plain_checkpoints(tmp_path):
    """s3prl's tera/mockingjay/distiller loaders ask for weights_only=False: a checkpoint of
    tensors, plain values and an argparse.Namespace (as s3prl's pretraining writes) loads."""
    state = {"Args": argparse.Namespace(seed=1), "Config": {"transformer": {"hidden_size": 4}}, "w": torch.ones(2)}
    torch.save(state, tmp_path / "plain.pt")
    loaded = torch.load(tmp_path / "plain.pt", map_location="cpu", weights_only=False)
    assert loaded["Args"].seed == 1 and torch.equal(loaded["w"], torch.ones(2))
    # torch itself unpickles pickled tensors through torch.load(weights_only=False)
    # (all_gather_object under torchrun): those still load.
    assert torch.equal(pickle.loads(pickle.dumps({"t": torch.arange(3)}))["t"], torch.arange(3))
    compat.install()  # idempotent: one wrapper
    assert not getattr(torch.load.__wrapped__, "s3prl_ser_weights_only", False)
