"""No checkpoint may run code: a pickle whose payload writes a marker file, fired through every
entry point that reads a checkpoint (s3prl's tera/mockingjay/distiller loaders ask ``torch.load``
for full unpickling; :mod:`s3prl_ser.compat` makes every load weights-only).

Each row of :data:`ROWS` gets its own payload file, ``evil.pt``, and a *poisoned* copy of one
tiny finished run whose ``Args`` name ``-u tera_local -k evil.pt``; it runs one entry point and
checks that the marker was never written and that the message names the file.

The second half fires plain strings that s3prl would ``eval`` (:mod:`s3prl_ser.evaluated_strings`):
one row per upstream family and field through ``-k`` (:data:`EVAL_SINKS`), runner names
through ``-e``, a baseline feature config through ``-g``, an export and a run directory whose
``-k`` file carries one, and model directories whose ``config.json`` does (:data:`MODEL_DIR_SINKS`,
through ``from_pretrained`` and the inference CLI).
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
from s3prl_ser import compat, fileio
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
            ckpt = fileio.safe_torch_load(path)
            ckpt["Args"].upstream, ckpt["Args"].upstream_ckpt = "tera_local", str(self.evil)
            torch.save(ckpt, path)
        self.wav = next(corpus.glob("Session1/sentences/wav/*/*.wav"))

    def opts(self) -> str:
        return overrides(self.corpus, self.meta, steps=2, every=2, k=1)

    def evil_runner_checkpoint(self) -> Path:
        """A file looking like a runner checkpoint, with a payload among its entries."""
        ckpt = fileio.safe_torch_load(self.run / "dev-avg.ckpt")
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


# ----------------------------------------------------------- strings s3prl evaluates as code
# A weights-only checkpoint (or a model directory's config.json) holds plain strings, and
# s3prl's builders eval some of them. Each row puts a payload that writes a marker into one
# such field and runs an entry point: the marker must never appear, and the message must name
# the file and the field.

TINY_CONV = "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2"


def eval_payload(marker: Path, original: str) -> str:
    """A string that evaluates to ``original`` after writing ``marker``."""
    return f"(__import__('pathlib').Path({str(marker)!r}).write_text('x'), {original})[1]"


def poisoned_tiny(tiny: Path, marker: Path) -> dict:
    ckpt = fileio.safe_torch_load(tiny)
    ckpt["model_cfg"]["conv_feature_layers"] = eval_payload(marker, ckpt["model_cfg"]["conv_feature_layers"])
    return ckpt


def converted(field: str, original: str, **model_cfg) -> Callable[[Path], dict]:
    """s3prl's converted layout (data2vec, MR-HuBERT, wav2vec): enough to reach its model's eval."""
    return lambda marker: {
        "task_cfg": {"normalize": False},
        "model_cfg": {**model_cfg, field: eval_payload(marker, original)},
        "model_weight": {},
        "dictionaries_symbols": [[]],
    }


# (hub entry, checkpoint builder (marker, tiny upstreams) -> state, the field s3prl evaluates)
EVAL_SINKS: list[tuple[str, Callable[[Path, dict], dict], str]] = [
    ("hubert_local", lambda m, t: poisoned_tiny(t["hubert"], m), "model_cfg.conv_feature_layers"),
    ("wav2vec2_local", lambda m, t: poisoned_tiny(t["wav2vec2"], m), "model_cfg.conv_feature_layers"),
    ("data2vec_local", lambda m, t: converted("conv_feature_layers", TINY_CONV)(m), "model_cfg.conv_feature_layers"),
    (
        "multires_hubert_local",
        lambda m, t: converted("conv_feature_layers", TINY_CONV, label_rate=50)(m),
        "model_cfg.conv_feature_layers",
    ),
    (
        "multires_hubert_local",
        lambda m, t: converted("override_encoder_layers", "(1, 1, 1)", label_rate=50)(m),
        "model_cfg.override_encoder_layers",
    ),
    (
        "wav2vec_local",
        lambda m, t: converted("conv_feature_layers", TINY_CONV, infonce=True)(m),
        "model_cfg.conv_feature_layers",
    ),
    (
        "wav2vec_local",
        lambda m, t: converted("conv_aggregator_layers", "[(512, 3, 1)] * 9", infonce=True)(m),
        "model_cfg.conv_aggregator_layers",
    ),
    (
        "wavlm_local",
        lambda m, t: {"cfg": {"conv_feature_layers": eval_payload(m, TINY_CONV)}, "model": {}},
        "cfg.conv_feature_layers",
    ),
    (
        "unispeech_sat_local",
        lambda m, t: {"cfg": {"conv_feature_layers": eval_payload(m, TINY_CONV)}, "model": {}},
        "cfg.conv_feature_layers",
    ),
    (
        "lighthubert_local",
        lambda m, t: {
            "cfg": {"model": {"_name": "student_hubert", "conv_feature_layers": eval_payload(m, TINY_CONV)}},
            "model": {},
        },
        "cfg.model.conv_feature_layers",
    ),
    (
        "distiller_local",
        lambda m, t: {"Config": {"distiller": {"extractor_conv_feature_layers": eval_payload(m, TINY_CONV)}}},
        "Config.distiller.extractor_conv_feature_layers",
    ),
]


def refused(message: str, marker: Path, file: Path | str, field: str) -> None:
    """The payload never ran, and the message names the file and the field."""
    assert not marker.exists(), f"s3prl evaluated the payload; message: {message}"
    assert str(file) in message and f"field {field} = " in message and "refused" in message, message


@pytest.mark.parametrize(
    ("entry", "make", "field"), EVAL_SINKS, ids=[f"{row[0]} {row[2].rsplit('.', 1)[1]}" for row in EVAL_SINKS]
)
def test_no_upstream_checkpoint_string_is_evaluated(
    entry, make, field, tmp_path, tiny_upstreams, mini_corpus, mini_meta, one_thread
):
    """``-u ENTRY -k evil.pt``: every s3prl upstream whose builder evals a config field."""
    marker, evil = tmp_path / "PWNED", tmp_path / "evil.pt"
    torch.save(make(marker, tiny_upstreams), evil)
    opts = overrides(mini_corpus, mini_meta, steps=2, every=2, k=1)
    message = exit_message(run_downstream, train_args(tmp_path / "exp", opts, upstream=entry, ckpt=evil))
    assert message.startswith("error: "), message
    refused(message, marker, evil, field)


def test_s3prl_evaluates_no_other_config_field():
    """Every ``eval(<cfg>.<field>)`` in s3prl's upstream builders is a field the guard checks
    (a new one in an s3prl upgrade fails here), and so is every field the rows above poison."""
    import re

    import s3prl

    from s3prl_ser.evaluated_strings import EVALUATED_FIELDS

    upstream = Path(s3prl.__file__).parent / "upstream"
    pattern = re.compile(r"\beval\(\s*(?:self\.)?(?:cfg|config|args)\.(\w+)\s*\)")
    found = {m for path in upstream.rglob("*.py") for m in pattern.findall(path.read_text(encoding="utf-8"))}
    assert found == {"conv_feature_layers", "extractor_conv_feature_layers", "conv_aggregator_layers"} | {
        "override_encoder_layers"
    }
    assert found <= set(EVALUATED_FIELDS) and {row[2].rsplit(".", 1)[1] for row in EVAL_SINKS} == found
    extracter = (upstream / "baseline" / "extracter.py").read_text(encoding="utf-8")
    assert 'eval(f"torchaudio.compliance.kaldi.{feat_type}")' in extracter  # checked by check_feature_config


def test_runner_checkpoint_names_are_not_evaluated(tmp_path, finished_run):
    """``-m train -e states``: s3prl's runner evals ``get_<name>`` for the optimizer and scheduler."""
    for field, payload in (
        ("Config.optimizer.name", "TorchOptim"),
        ("Config.scheduler.name", "linear_schedule_with_warmup"),
    ):
        marker, run = tmp_path / f"PWNED-{field}", tmp_path / field
        shutil.copytree(finished_run, run)
        states = run / "states-2.ckpt"
        ckpt = fileio.safe_torch_load(states)
        section = field.split(".")[1]
        ckpt["Config"][section] = {**(ckpt["Config"][section] or {"num_warmup_steps": 1})}
        ckpt["Config"][section]["name"] = (
            f"{payload} if not __import__('pathlib').Path({str(marker)!r}).touch() else {payload}"
        )
        torch.save(ckpt, states)
        refused(exit_message(run_downstream, ["-m", "train", "-e", str(states)]), marker, states, field)


def test_baseline_feature_config_is_not_evaluated(tmp_path, mini_corpus, mini_meta, one_thread):
    """``-u baseline_local -g CONFIG``: s3prl evals ``torchaudio.compliance.kaldi.<feat_type>``."""
    marker, config = tmp_path / "PWNED", tmp_path / "evil.yaml"
    feat_type = f"fbank if not __import__('pathlib').Path({str(marker)!r}).touch() else fbank"
    config.write_text(f'kaldi:\n  feat_type: "{feat_type}"\n  fbank: {{num_mel_bins: 80}}\n', encoding="utf-8")
    opts = overrides(mini_corpus, mini_meta, steps=2, every=2, k=1)
    argv = train_args(tmp_path / "exp", opts, upstream="baseline_local", extra=("-g", str(config)))
    refused(exit_message(run_downstream, argv), marker, config, "kaldi.feat_type")
    config.write_text("kaldi: !!python/object/apply:os.getcwd []\n", encoding="utf-8")  # FullLoader's tags too
    message = exit_message(
        run_downstream, train_args(tmp_path / "exp2", opts, upstream="baseline_local", extra=("-g", str(config)))
    )
    assert str(config) in message and "not plain YAML" in message, message


@pytest.fixture(scope="module")
def hubert_run(tmp_path_factory, tiny_upstreams, mini_corpus, mini_meta) -> tuple[Path, Path]:
    """A 2-step tiny-HuBERT run of fold1 (``-u hubert_local -k``) and its own copy of the -k file."""
    root = tmp_path_factory.mktemp("hubert_run")
    ckpt = Path(shutil.copy(tiny_upstreams["hubert"], root / "tiny_hubert.pt"))
    opts = overrides(mini_corpus, mini_meta, steps=2, every=2, k=1)
    run_downstream(train_args(root / "fold1", opts, upstream="hubert_local", ckpt=ckpt, extra=("-v", "fold1")))
    return root / "fold1", ckpt


@pytest.fixture(scope="module")
def model_dirs(hubert_run, finished_run, tmp_path_factory) -> dict[str, Path]:
    """Clean exports of the tiny-HuBERT run and of the fbank run."""
    from s3prl_ser.cli.export import main as export_cli

    root = tmp_path_factory.mktemp("model_dirs")
    export_cli([str(hubert_run[0]), "-o", str(root / "hubert")])
    export_cli([str(finished_run), "-o", str(root / "fbank")])
    return {"hubert": root / "hubert", "fbank": root / "fbank"}


def doctored(source: Path, out: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the model directory ``source`` with ``edit`` applied to its config.json,
    written (digests and all) by the project's own writer, as anyone can."""
    import json

    from safetensors.torch import load_file

    from s3prl_ser.inference.model_dir import write_model_dir

    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    edit(config)
    config = {k: v for k, v in config.items() if k not in ("format", "format_version", "files")}
    card = (source / "README.md").read_text(encoding="utf-8")
    return write_model_dir(out, config, load_file(source / "model.safetensors"), card)


def poison_converted(marker: Path) -> Callable[[dict], None]:
    def edit(config: dict) -> None:
        model_cfg = config["upstreams"][0][0]["converted"]["model_cfg"]
        model_cfg["conv_feature_layers"] = eval_payload(marker, model_cfg["conv_feature_layers"])

    return edit


def poison_feature_config(marker: Path) -> Callable[[dict], None]:
    def edit(config: dict) -> None:
        feat_type = f"fbank if not __import__('pathlib').Path({str(marker)!r}).touch() else fbank"
        spec = config["upstreams"][0][0]
        spec["entry"] = "baseline_local"  # s3prl's fbank, from the given config
        spec["model_config"] = f'kaldi:\n  feat_type: "{feat_type}"\n  fbank: {{num_mel_bins: 80}}\n'

    return edit


# (model directory, config.json edit, the field named)
MODEL_DIR_SINKS = [
    ("hubert", poison_converted, "upstreams[0][0].converted.model_cfg.conv_feature_layers"),
    ("fbank", poison_feature_config, "upstreams[0][0].model_config.kaldi.feat_type"),
]


@pytest.mark.parametrize(("base", "poison", "field"), MODEL_DIR_SINKS, ids=[row[0] for row in MODEL_DIR_SINKS])
def test_no_model_directory_string_is_evaluated(base, poison, field, model_dirs, tmp_path, mini_corpus):
    """``from_pretrained(MODEL_DIR)`` and ``python -m s3prl_ser.inference MODEL_DIR x.wav`` on a
    config.json that carries a payload (its digests match: the check holds by itself)."""
    marker = tmp_path / "PWNED"
    model = doctored(model_dirs[base], tmp_path / "model", poison(marker))
    refused(from_pretrained(None, model), marker, model / "config.json", field)
    wav = next(mini_corpus.glob("Session1/sentences/wav/*/*.wav"))
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    command = [sys.executable, "-m", "s3prl_ser.inference", str(model), str(wav), "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    message = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and message.startswith("error: "), done.stderr[-3000:]
    refused(message, marker, model / "config.json", field)


def test_export_and_run_directory_do_not_evaluate_the_upstream_checkpoint(hubert_run, tmp_path):
    """A finished run whose -k file now carries a payload: export and ``from_pretrained(run)``."""
    from s3prl_ser.cli.export import main as export_cli

    run, ckpt = hubert_run
    original = ckpt.read_bytes()
    marker = tmp_path / "PWNED"
    try:
        torch.save(poisoned_tiny(ckpt, marker), ckpt)
        message = exit_message(export_cli, [str(run), "-o", str(tmp_path / "model")])
        assert message.startswith("error: "), message
        refused(message, marker, ckpt, "model_cfg.conv_feature_layers")
        assert not (tmp_path / "model").exists()
        refused(from_pretrained(None, run), marker, ckpt, "model_cfg.conv_feature_layers")
    finally:
        ckpt.write_bytes(original)
