"""Hostile input: every kind of bad input ends the command with one ``error:`` line naming the
file or key and the cause, before any training step, and leaves files already written alone.

Each row of :data:`ROWS` damages its own copy of the mini corpus and meta data (fold1: the test
split is Session1, train and dev come from Sessions 2-5), runs a real entry point, and checks
the exit, that no training step ran, and, for a row run beside a finished run, that the run's
files are untouched.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import finetune_args, finetune_overrides, overrides, train_args
from s3prl_ser.cli.prepare_iemocap import main as prepare_iemocap
from s3prl_ser.cli.run_downstream import main as run_downstream
from s3prl_ser.data.audio import AudioError, load_audio
from s3prl_ser.data.corpora.iemocap import prepare
from s3prl_ser.data.fold_data import load_fold_data
from upstream_ft.__main__ import main as upstream_ft

pytestmark = pytest.mark.usefixtures("one_thread")

FOLD = "fold1"


class Case:
    """One row's own corpus and meta data copies, experiment and fine-tuning directories."""

    def __init__(self, tmp_path: Path, mini_corpus: Path, mini_meta: Path, tiny_upstreams: dict[str, Path]) -> None:
        self.tmp = tmp_path
        self.corpus = tmp_path / "corpus"
        self.meta = tmp_path / "meta"
        shutil.copytree(mini_corpus, self.corpus)
        shutil.copytree(mini_meta, self.meta)
        self.expdir = tmp_path / "exp"
        self.ft_dir = tmp_path / "ft"
        self.tiny = tiny_upstreams

    def meta_file(self, split: str) -> Path:
        return self.meta / "Session1" / f"{split}_meta_data.json"

    def utterance(self, split: str, index: int = 0) -> Path:
        """The audio of item ``index`` of fold1's ``train`` (train + dev) or ``test`` meta data."""
        return self.corpus / json.loads(self.meta_file(split).read_text())["meta_data"][index]["path"]

    def edit_items(self, split: str, change: Callable[[list], None]) -> None:
        data = json.loads(self.meta_file(split).read_text())
        change(data["meta_data"])
        self.meta_file(split).write_text(json.dumps(data))

    def train(self, extra: str = "", *, upstream: str = "fbank", ckpt: Path | None = None) -> None:
        """Stage 2: a 2-step run of fold1 into ``expdir`` (``extra``: more ``-o`` overrides)."""
        opts = overrides(self.corpus, self.meta, steps=2, every=2, k=1, extra=extra)
        run_downstream(train_args(self.expdir, opts, upstream=upstream, ckpt=ckpt))

    def finetune(self) -> None:
        """Stage 1: a 2-step fine-tuning of the tiny HuBERT on fold1 into ``ft_dir``."""
        opts = finetune_overrides(self.corpus, self.meta, steps=2, k=1)
        upstream_ft(finetune_args("hubert_local", self.tiny["hubert"], FOLD, self.ft_dir, opts))

    def resume(self, extra: str) -> None:
        """Stage 2: ``-a`` in ``expdir`` with overrides ``extra``."""
        run_downstream(["-m", "train", "-a", "-p", str(self.expdir), "--device", "cpu", "-o", extra])


def _write_wav(path: Path, data: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> None:
    sf.write(path, data, rate, subtype=subtype)


def _truncate(path: Path) -> None:
    """Cut a file to half its bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _noise(frames: int, channels: int = 1) -> np.ndarray:
    shape = (frames, channels) if channels > 1 else (frames,)
    return (0.1 * np.random.default_rng(0).standard_normal(shape)).astype("float32")


def _nan_audio(path: Path) -> None:
    data = _noise(1600)
    data[100] = np.nan
    _write_wav(path, data, subtype="FLOAT")


def _indent_label_line(case: Case) -> None:
    path = case.corpus / "Session2" / "dialog" / "EmoEvaluation" / "Ses02F_impro02.txt"
    lines = path.read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.startswith("["))
    lines[first] = " " + lines[first]
    path.write_text("".join(lines))


def _outside_root(case: Case, absolute: bool) -> None:
    outside = case.tmp / "elsewhere" / "stray.wav"
    outside.parent.mkdir()
    _write_wav(outside, _noise(1600))
    path = str(outside) if absolute else "../elsewhere/stray.wav"
    case.edit_items("train", lambda items: items[1].update(path=path))


@dataclass(frozen=True)
class Row:
    """One kind of bad input: ``damage`` breaks the case's copies, ``command`` runs an entry
    point, ``error`` is a regex the message must match; ``finished`` first trains a run in
    ``expdir`` whose files must survive."""

    id: str
    damage: Callable[[Case], object]
    command: Callable[[Case], None]
    error: str
    finished: bool = False


ROWS = [
    # ---- audio, found by the start-up scan of every utterance of the fold (header only)
    Row(
        "corrupt audio in the test split",
        lambda c: c.utterance("test").write_bytes(b"RIFF\x24\x00\x00\x00WAVEnot really audio"),
        Case.train,
        r"1 of the 24 audio files of fold1 cannot be used.*Session1/\S+: cannot read",
    ),
    Row(
        "WAV cut to half its bytes (train split)",
        lambda c: _truncate(c.utterance("train", 2)),
        Case.train,
        r"Session\d/\S+\.wav: truncated: its header declares 3200 data bytes, the file holds 1578",
    ),
    Row(
        "empty audio in the test split (stage 1)",
        lambda c: _write_wav(c.utterance("test", 1), np.zeros(0, dtype="float32")),
        Case.finetune,
        r"Session1/\S+\.wav: audio is empty \(0 samples\)",
    ),
    Row(
        "too-short audio in the test split",
        lambda c: _write_wav(c.utterance("test", 2), _noise(200)),
        Case.train,
        r"Session1/\S+\.wav: clip is 200 samples \(12\.5 ms\) at 16000 Hz.*required 560 samples",
    ),
    Row(
        "44.1 kHz stereo, too short only after resampling",
        lambda c: _write_wav(c.utterance("test", 3), _noise(1000, channels=2), rate=44100),
        Case.train,
        r"Session1/\S+\.wav: clip is 363 samples .* after resampling.*required 560 samples",
    ),
    Row(
        "several bad files: the first few are named, then a count",
        lambda c: [_truncate(c.utterance("test", i)) for i in range(5)],
        Case.train,
        r"5 of the 24 audio files .*truncated.*truncated.*truncated.* and 2 more",
    ),
    Row(
        "test clip longer than max_eval_seconds",
        lambda c: _write_wav(c.utterance("test", 1), _noise(16000 * 3)),
        lambda c: c.train("config.downstream_expert.datarc.max_eval_seconds=2"),
        r"Session1/\S+\.wav: clip is 3\.0 s, longer than the evaluation limit of 2 s \(datarc\.max_eval_seconds",
    ),
    Row(
        "NaN samples in the train split (found when decoding, at start-up with pre_load)",
        lambda c: _nan_audio(c.utterance("train", 3)),
        Case.train,
        r"Session\d/\S+\.wav: audio contains NaN",
    ),
    Row(
        "truncated test audio when resuming a finished run to train longer",
        lambda c: _truncate(c.utterance("test")),
        lambda c: c.resume("config.runner.total_steps=4"),
        r"Session1/\S+\.wav: truncated",
        finished=True,
    ),
    # ---- meta data
    Row(
        "no meta data for the fold (stage 1)",
        lambda c: shutil.rmtree(c.meta / "Session1"),
        Case.finetune,
        r"no meta data for fold1: .*Session1 does not exist",
    ),
    Row(
        "listed audio file missing",
        lambda c: c.utterance("test", 1).unlink(),
        Case.train,
        r"test_meta_data\.json: 1 audio file\(s\) missing under .*Session1/\S+\.wav",
    ),
    Row(
        "unknown label",
        lambda c: c.edit_items("train", lambda items: items[4].update(label="fru")),
        Case.train,
        r"train_meta_data\.json: utterance \S+ has unknown label 'fru'",
    ),
    Row(
        "label line with a leading space (prepare_iemocap, over earlier meta data)",
        _indent_label_line,
        lambda c: prepare_iemocap([str(c.corpus), "--out", str(c.meta)]),
        r"Ses02F_impro02\.txt:3: label line starts with whitespace",
    ),
    Row(
        "path escaping the corpus root with ..",
        lambda c: _outside_root(c, absolute=False),
        Case.train,
        r"train_meta_data\.json: meta_data\[1\]: path '\.\./elsewhere/stray\.wav' is outside the corpus root"
        r".*allow_outside_root",
    ),
    Row(
        "absolute path",
        lambda c: _outside_root(c, absolute=True),
        Case.train,
        r"train_meta_data\.json: meta_data\[1\]: path '/\S+/stray\.wav' is outside the corpus root",
    ),
    Row(
        "item that is not an object",
        lambda c: c.edit_items("test", lambda items: items.__setitem__(2, items[2]["path"])),
        Case.train,
        r"test_meta_data\.json: meta_data\[2\] is not an object",
    ),
    Row(
        "item without a path (stage 1)",
        lambda c: c.edit_items("train", lambda items: items[3].pop("path")),
        Case.finetune,
        r"train_meta_data\.json: meta_data\[3\] has no 'path'",
    ),
    # ---- config and arguments
    Row(
        "config typo",
        lambda c: None,
        lambda c: c.train("config.runner.total_step=4"),
        r"unknown config key 'config\.runner\.total_step'.*did you mean 'total_steps'",
    ),
    Row(
        "total_steps not a number",
        lambda c: None,
        lambda c: c.train("config.runner.total_steps=abc"),
        r"config\.runner\.total_steps must be an integer >= 1, got 'abc'",
    ),
    Row(
        "eval_step zero",
        lambda c: None,
        lambda c: c.train("config.runner.eval_step=0"),
        r"config\.runner\.eval_step must be an integer >= 1, got 0",
    ),
    Row(
        "gradient_clipping not a number",
        lambda c: None,
        lambda c: c.train("config.runner.gradient_clipping=none"),
        r"config\.runner\.gradient_clipping must be a number > 0, got 'none'",
    ),
    Row(
        "max_seconds not a positive number (stage 2)",
        lambda c: None,
        lambda c: c.train("config.downstream_expert.datarc.max_seconds=0"),
        r"downstream_expert\.datarc\.max_seconds must be a positive number of seconds or null, got 0",
    ),
    Row(
        "best_k zero",
        lambda c: None,
        lambda c: c.train("config.downstream_expert.checkpoint_averaging.best_k=0"),
        r"config\.downstream_expert\.checkpoint_averaging\.best_k must be an integer >= 1, got 0",
    ),
    Row(
        "total_steps not a number when resuming a finished run",
        lambda c: None,
        lambda c: c.resume("config.runner.total_steps=abc"),
        r"config\.runner\.total_steps must be an integer >= 1, got 'abc'",
        finished=True,
    ),
    Row(
        "-k that does not exist",
        lambda c: None,
        lambda c: c.train(upstream="hubert_local", ckpt=c.tmp / "missing.pt"),
        r"-k \S+missing\.pt: checkpoint of upstream 'hubert_local' not found",
    ),
    Row(
        "-k of the wrong kind (an audio file)",
        lambda c: None,
        lambda c: c.train(upstream="hubert_local", ckpt=c.utterance("test")),
        r"upstream 'hubert_local' cannot load -k \S+\.wav \(",
    ),
    Row(
        "-m inference -t a missing file, beside a finished run",
        lambda c: None,
        lambda c: run_downstream(
            ["-m", "inference", "-e", str(c.expdir / "dev-avg.ckpt"), "-t", str(c.tmp / "missing.wav")]
            + ["--device", "cpu"]
        ),
        r"-t \S+missing\.wav: audio file for -m inference not found",
        finished=True,
    ),
]


def _snapshot(directory: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``directory`` (but the run lock, which records its last holder):
    modification time and content digest."""
    return {
        str(path.relative_to(directory)): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_is_refused_before_training(row, tmp_path, mini_corpus, mini_meta, tiny_upstreams):
    case = Case(tmp_path, mini_corpus, mini_meta, tiny_upstreams)
    if row.finished:
        case.train()
    row.damage(case)
    run, meta = _snapshot(case.expdir), _snapshot(case.meta)
    with pytest.raises(SystemExit) as exit_info:
        row.command(case)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and re.search(row.error, message), message
    # No training step ran and no run record was written; a finished run is untouched.
    assert _snapshot(case.expdir) == run, message
    assert _snapshot(case.ft_dir) == {}, message
    assert _snapshot(case.meta) == meta  # e.g. earlier meta data that prepare_iemocap would overwrite


def test_paths_outside_the_root_are_read_when_allowed(tmp_path, mini_corpus, mini_meta, tiny_upstreams):
    case = Case(tmp_path, mini_corpus, mini_meta, tiny_upstreams)
    _outside_root(case, absolute=False)
    datarc = {"root": str(case.corpus), "meta_data": str(case.meta), "allow_outside_root": True}
    data = load_fold_data(datarc, FOLD)
    assert data.train.meta.items[1]["path"] == "../elsewhere/stray.wav"
    with pytest.raises(ValueError, match=r"datarc\.allow_outside_root must be true or false, got 'yes please'"):
        load_fold_data({**datarc, "allow_outside_root": "yes please"}, FOLD)


def test_truncation_is_told_from_a_streamed_wav(tmp_path, mini_corpus, mini_meta, tiny_upstreams):
    """Writers that cannot seek back (a pipe) leave the RIFF and data sizes at 0xFFFFFFFF: such a
    file is read whole; a cut-off one is refused when decoded too (e.g. for inference)."""
    case = Case(tmp_path, mini_corpus, mini_meta, tiny_upstreams)
    streamed, cut = case.utterance("test", 0), case.utterance("test", 1)
    data = bytearray(streamed.read_bytes())
    assert data[36:40] == b"data"
    data[4:8] = data[40:44] = b"\xff\xff\xff\xff"
    streamed.write_bytes(bytes(data))
    datarc = {"root": str(case.corpus), "meta_data": str(case.meta)}
    assert len(load_fold_data(datarc, FOLD).test[0][0]) == 1600
    _truncate(cut)
    with pytest.raises(AudioError, match=rf"{cut.name}: truncated: its header declares 3200 data bytes"):
        load_audio(cut)


def test_the_mini_corpus_prepares_cleanly(tmp_path, mini_corpus):
    """The label-line check leaves well-formed label files (the mini corpus) alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one labelled utterance without audio, on purpose
        kept = prepare(mini_corpus, tmp_path)
    assert sum(len(utterances) for utterances in kept.values()) == 24


def test_a_feature_cache_that_does_not_fit_ends_the_run_with_an_error_line(
    mini_corpus, mini_meta, tmp_path, monkeypatch
):
    from s3prl_ser.feature_cache import speech as feature_cache

    monkeypatch.setenv(feature_cache.CACHE_ENV, str(tmp_path / "cache"))  # empty: extraction is due
    full = shutil.disk_usage(tmp_path)._replace(free=0)
    monkeypatch.setattr(feature_cache.shutil, "disk_usage", lambda path: full)
    opts = overrides(mini_corpus, mini_meta, steps=2, every=2, k=1)
    with pytest.raises(SystemExit, match=r"^error: .*needs about .* free: free space, point feature_cache.dir"):
        run_downstream(train_args(tmp_path / "exp", opts))
