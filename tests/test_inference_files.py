"""python -m s3prl_ser.inference over folders and lists: error rows, batching, long files in windows."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import tiny_fbank_model
from s3prl_ser.cli.inference import FILES_FAILED
from s3prl_ser.cli.inference import main as inference
from s3prl_ser.data.audio import resample
from s3prl_ser.inference import EmotionRecognizer
from s3prl_ser.inference.long_audio import window_plan


@pytest.fixture(scope="module")
def model_dir(mini_corpus, mini_meta, tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("inference_model")
    return tiny_fbank_model(mini_corpus, mini_meta, root, "fold3")


@pytest.fixture(scope="module")
def recognizer(model_dir):
    return EmotionRecognizer.from_pretrained(model_dir)


def _noise(seconds, rate, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.3, 0.3, (int(seconds * rate), channels)).astype("float32")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    (root / "nested").mkdir()
    sf.write(root / "mono16k.wav", _noise(1.2, 16000), 16000)
    sf.write(root / "nested" / "stereo44k.wav", _noise(0.9, 44100, channels=2, seed=1), 44100)
    sf.write(root / "speech.ogg", _noise(0.7, 16000, seed=2), 16000, format="OGG", subtype="VORBIS")
    sf.write(root / "short.wav", _noise(0.01, 16000, seed=3), 16000)  # 160 samples < the 400 needed
    (root / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 4)
    (root / "notes.md").write_text("not audio: ignored")
    return root


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_folder_gives_a_row_per_file_with_statuses(model_dir, recognizer, folder, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        inference([str(model_dir), str(folder), "--output", str(tmp_path / "out.csv"), "--batch-size", "2"])
    assert exit_info.value.code == FILES_FAILED  # some files failed; the others are written
    rows = {Path(r["file"]).name: r for r in _read_csv(tmp_path / "out.csv")}
    assert sorted(rows) == ["corrupt.flac", "mono16k.wav", "short.wav", "speech.ogg", "stereo44k.wav"]
    assert {name: r["status"] for name, r in rows.items()} == {
        "corrupt.flac": "error",
        "mono16k.wav": "ok",
        "short.wav": "error",
        "speech.ogg": "ok",
        "stereo44k.wav": "ok",
    }
    assert "corrupt.flac" in rows["corrupt.flac"]["error"] and "cannot decode" in rows["corrupt.flac"]["error"]
    assert "too short" in rows["short.wav"]["error"] and rows["short.wav"]["duration"] == "0.010"
    classes = recognizer.class_names
    for name in ("mono16k.wav", "speech.ogg", "stereo44k.wav"):
        probabilities = [float(rows[name][f"p_{c}"]) for c in classes]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert rows[name]["label"] == classes[int(np.argmax(probabilities))]
    assert float(rows["stereo44k.wav"]["duration"]) == pytest.approx(0.9, abs=1e-3)
    # the stereo 44.1 kHz file is averaged to mono and resampled, as an array would be
    data, rate = sf.read(folder / "nested" / "stereo44k.wav", dtype="float32")
    mono16k = resample(data.mean(axis=1), rate)
    expected = recognizer.probabilities([mono16k])[0]
    assert [float(rows["stereo44k.wav"][f"p_{c}"]) for c in classes] == pytest.approx(expected.tolist(), abs=1e-5)


def test_list_files_jsonl_and_batching(recognizer, model_dir, folder, tmp_path):
    listing = tmp_path / "files.txt"
    listing.write_text(f"# inputs\n{folder / 'mono16k.wav'}\n{folder / 'speech.ogg'}\nmissing.wav\n")
    one = recognizer.predict_files([listing, folder / "nested"], batch_size=1)
    three = recognizer.predict_files([listing, folder / "nested"], batch_size=3)
    assert [Path(r["file"]).name for r in one] == ["mono16k.wav", "speech.ogg", "missing.wav", "stereo44k.wav"]
    assert [r["status"] for r in one] == ["ok", "ok", "error", "ok"]
    assert "audio file not found" in one[2]["error"]
    for a, b in zip(one, three):  # results do not depend on batching (or on the length sorting)
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    inference([str(model_dir), str(folder / "mono16k.wav"), "-O", str(tmp_path / "out.jsonl"), "--no-progress"])
    (row,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert row["status"] == "ok" and row["probabilities"] == pytest.approx(one[0]["probabilities"], abs=1e-6)


def test_long_file_in_windows_with_timestamps_that_add_up(recognizer, model_dir, tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, _noise(21.0, 16000, seed=4), 16000)
    rows = recognizer.predict_files([path], long_audio=10.0, window=8.0, hop=4.0, batch_size=2)
    windows, summary = rows[:-1], rows[-1]
    assert [(r["start"], r["end"]) for r in windows] == [(0, 8), (4, 12), (8, 16), (12, 20), (16, 21)]
    assert summary["segment"] == "summary" and (summary["start"], summary["end"]) == (0.0, 21.0)
    assert all(b["start"] - a["start"] == 4.0 for a, b in zip(windows, windows[1:]))  # the hop
    assert sum(r["duration"] for r in windows) == pytest.approx(8 * 4 + 5)
    audio = torch.from_numpy(sf.read(path, dtype="float32")[0])
    for row in windows:  # each window is the segment [start, end) of the file, read from disk alone
        segment = audio[int(row["start"] * 16000) : int(row["end"] * 16000)]
        assert list(row["probabilities"].values()) == pytest.approx(
            recognizer.probabilities([segment])[0].tolist(), abs=1e-5
        )
    weights = np.array([r["duration"] for r in windows])
    mean = sum(w * np.array(list(r["probabilities"].values())) for w, r in zip(weights, windows)) / weights.sum()
    assert list(summary["probabilities"].values()) == pytest.approx(mean.tolist(), abs=1e-6)
    assert summary["label"] == recognizer.class_names[int(np.argmax(mean))]
    short = recognizer.predict_files([path], long_audio=30.0)
    assert [r["segment"] for r in short] == ["file"]  # below the threshold: one piece


def test_window_plan_rejects_a_hop_longer_than_the_window():
    with pytest.raises(ValueError, match="hop"):
        window_plan(10.0, window=4.0, hop=5.0)


def test_module_entry_is_the_cli(model_dir, folder, monkeypatch, capsys):
    """``python -m s3prl_ser.inference`` runs :mod:`s3prl_ser.cli.inference` (run in-process: a
    subprocess would spend its time importing s3prl)."""
    import runpy

    monkeypatch.setattr(
        sys, "argv", ["s3prl_ser.inference", str(model_dir), str(folder / "mono16k.wav"), "--no-progress"]
    )
    runpy.run_module("s3prl_ser.inference", run_name="__main__")  # the package's __main__.py
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["status"] == "ok"


def test_mp3_through_soundfile_and_m4a_through_ffmpeg(recognizer, tmp_path):
    import shutil
    import subprocess

    from s3prl_ser.data.audio import audio_info

    source = tmp_path / "source.wav"
    sf.write(source, _noise(1.5, 16000, seed=5), 16000)
    sf.write(tmp_path / "clip.mp3", _noise(1.5, 16000, seed=5), 16000, format="MP3", subtype="MPEG_LAYER_III")
    paths = [tmp_path / "clip.mp3"]
    if shutil.which("ffmpeg"):  # M4A/AAC: soundfile cannot read it; ffmpeg, when installed, can
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(source), str(tmp_path / "clip.m4a")], check=True)
        paths.append(tmp_path / "clip.m4a")
        assert audio_info(tmp_path / "clip.m4a").reader == "ffmpeg"
    rows = recognizer.predict_files(paths)
    assert [r["status"] for r in rows] == ["ok"] * len(paths), rows
    for row in rows:
        assert row["duration"] == pytest.approx(1.5, abs=0.1)  # codecs add a few ms of priming


@pytest.mark.skipif(__import__("shutil").which("ffmpeg") is None, reason="ffmpeg makes the MP3")
def test_an_mp3_is_windowed_by_its_decoded_length_not_its_header(recognizer, tmp_path):
    """A CBR MP3 without a Xing tag: its header's length is estimated from the file size (longer
    than the audio); windows and the summary end where the decoded audio does."""
    import subprocess

    from s3prl_ser.data.audio import audio_info

    sf.write(tmp_path / "source.wav", _noise(30.0, 44100, seed=6), 44100)
    path = tmp_path / "long.mp3"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(tmp_path / "source.wav"), "-b:a", "32k", "-write_xing", "0", str(path)],
        check=True,
    )
    rate = sf.info(path).samplerate
    decoded = len(sf.read(path, dtype="float32")[0])
    assert sf.info(path).frames - decoded > rate // 100  # the header claims more than 10 ms too many
    assert audio_info(path).frames == decoded
    rows = recognizer.predict_files([path], long_audio=10.0, window=8.0, hop=4.0)
    assert [r["status"] for r in rows] == ["ok"] * len(rows), rows
    windows, summary = rows[:-1], rows[-1]
    assert summary["end"] == summary["duration"] == pytest.approx(decoded / rate, abs=1 / rate)
    assert windows[-1]["end"] == summary["end"] and all(r["end"] <= summary["end"] for r in windows)


def test_silence_is_flagged_in_rows_and_predictions(recognizer, model_dir, tmp_path):
    """Digital silence and audio below -60 dBFS RMS are ``silence``; -50 dBFS noise is not.
    A long file: its silent windows are flagged, and the summary only when the whole file is."""
    from s3prl_ser.data.audio import SILENCE_DBFS

    assert SILENCE_DBFS == -60.0
    sf.write(tmp_path / "zeros.wav", np.zeros(16000, dtype="float32"), 16000)
    quiet = _noise(1.0, 16000, seed=6) * (10 ** (-50 / 20) / (0.3 / np.sqrt(3)))  # uniform: RMS = 0.3 / sqrt(3)
    sf.write(tmp_path / "quiet.wav", quiet, 16000, subtype="FLOAT")
    sf.write(tmp_path / "speech.wav", _noise(1.0, 16000, seed=7), 16000)
    inference([str(model_dir), str(tmp_path), "-O", str(tmp_path / "out.csv"), "--no-progress"])  # exit status 0
    rows = {Path(r["file"]).name: r for r in _read_csv(tmp_path / "out.csv")}
    assert {name: r["silence"] for name, r in rows.items()} == {
        "quiet.wav": "false",
        "speech.wav": "false",
        "zeros.wav": "true",
    }
    assert all(r["status"] == "ok" and r["label"] for r in rows.values())  # still predicted, and flagged
    # the threshold by hand: a square wave of amplitude a has an RMS level of 20 log10(a) dBFS
    square = np.where(np.arange(16000) % 2 == 0, 1.0, -1.0).astype("float32")
    predictions = recognizer.predict_batch([square * 10 ** (-59 / 20), square * 10 ** (-61 / 20)], sample_rate=16000)
    assert [p.silence for p in predictions] == [False, True]
    long = np.concatenate([np.zeros((8 * 16000, 1), dtype="float32"), _noise(13.0, 16000, seed=8)])
    sf.write(tmp_path / "long.wav", long, 16000)
    rows = recognizer.predict_long(tmp_path / "long.wav", window=8.0, hop=4.0)
    assert [(r["start"], r["silence"]) for r in rows] == [
        (0.0, True),
        (4.0, False),
        (8.0, False),
        (12.0, False),
        (16.0, False),
        (0.0, False),  # the summary: the whole file
    ]
    sf.write(tmp_path / "long_zeros.wav", np.zeros(21 * 16000, dtype="float32"), 16000)
    assert all(r["silence"] for r in recognizer.predict_long(tmp_path / "long_zeros.wav"))


def test_symbolic_link_loop_and_out_of_memory_are_error_rows(model_dir, recognizer, tmp_path):
    """A folder holding a link to itself (a loop) and a FLAC whose header claims 2^36 frames (its
    reading raises MemoryError: numpy refuses 256 GiB) give error rows; the other file its row."""
    sf.write(tmp_path / "speech.wav", _noise(1.0, 16000, seed=9), 16000)
    (tmp_path / "loop.wav").symlink_to(tmp_path / "loop.wav")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to(tmp_path)  # a folder loop: not followed
    sf.write(tmp_path / "huge.flac", _noise(1.0, 16000, seed=10), 16000)
    flac = bytearray((tmp_path / "huge.flac").read_bytes())
    field = int.from_bytes(flac[18:26], "big") | (2**36 - 1)  # STREAMINFO's 36-bit total sample count
    flac[18:26] = field.to_bytes(8, "big")
    (tmp_path / "huge.flac").write_bytes(flac)
    (row,) = recognizer.predict_files([tmp_path / "huge.flac"])  # by default read in windows: no allocation
    assert row["status"] == "error" and "huge.flac: cannot decode audio" in row["error"]
    overcommit = Path("/proc/sys/vm/overcommit_memory")
    huge = overcommit.is_file() and overcommit.read_text().strip() != "1"  # "1": any allocation succeeds
    if not huge:
        (tmp_path / "huge.flac").unlink()
    with pytest.raises(SystemExit) as exit_info:  # --long-audio: read whole, not in windows
        inference([str(model_dir), str(tmp_path), "-O", str(tmp_path / "out.csv"), "--long-audio", "1e12"])
    assert exit_info.value.code == FILES_FAILED
    rows = {Path(r["file"]).name: r for r in _read_csv(tmp_path / "out.csv")}
    assert sorted(rows) == (["huge.flac"] if huge else []) + ["loop.wav", "speech.wav"]
    assert rows["speech.wav"]["status"] == "ok"
    assert rows["loop.wav"]["status"] == "error" and "loop.wav: symbolic link loop" in rows["loop.wav"]["error"]
    if huge:
        assert rows["huge.flac"]["status"] == "error"
        assert "huge.flac: out of memory reading it" in rows["huge.flac"]["error"]


def test_csv_cells_are_never_spreadsheet_formulas(model_dir, tmp_path, monkeypatch):
    """File and label names starting with = + - @ get a leading ' in the CSV (kept as text)."""
    from s3prl_ser.inference.rows import write_rows

    names = ["+1.wav", "-1.wav", "=HYPERLINK(1).wav", "@SUM(1).wav"]
    for seed, name in enumerate(names):
        sf.write(tmp_path / name, _noise(0.5, 16000, seed=20 + seed), 16000)
    monkeypatch.chdir(tmp_path)
    inference([str(model_dir), ".", "-O", "out.csv", "--no-progress"])  # rows name the files relative to "."
    rows = _read_csv(tmp_path / "out.csv")
    assert [r["file"] for r in rows] == [f"'{name}" for name in names]
    assert all(r["status"] == "ok" and float(r["duration"]) == pytest.approx(0.5) for r in rows)  # numbers untouched
    label = "=cmd|' /C calc'!A0"
    row = {"file": "a.wav", "segment": "file", "start": 0.0, "end": 1.0, "duration": 1.0, "status": "ok"}
    write_rows([{**row, "error": "", "label": label, "probabilities": {label: 0.75}}], tmp_path / "l.csv", [label])
    (written,) = _read_csv(tmp_path / "l.csv")
    assert written["label"] == f"'{label}" and written[f"p_{label}"] == "0.750000"


def test_an_fbank_clip_of_one_frame_is_too_short_not_nan(recognizer, tmp_path):
    """fbank's CMVN divides by the std over frames, 0/0 for one frame (400-559 samples): NaN
    probabilities. A recognizer needs 2 frames (560 samples) even when its config says 400."""
    legacy = EmotionRecognizer(recognizer.upstreams, recognizer.members, recognizer.class_names, min_samples=400)
    assert legacy.min_samples == recognizer.min_samples == 400 + 160
    rng = np.random.default_rng(8)
    for samples in (400, 559, 560):
        sf.write(tmp_path / f"{samples}.wav", rng.uniform(-0.3, 0.3, samples).astype("float32"), 16000)
    rows = legacy.predict_files([tmp_path / f"{samples}.wav" for samples in (400, 559, 560)])
    assert [row["status"] for row in rows] == ["error", "error", "ok"], rows
    assert "400.wav" in rows[0]["error"] and "too short" in rows[0]["error"]
    assert np.isfinite(list(legacy.predict(tmp_path / "560.wav").probabilities.values())).all()
