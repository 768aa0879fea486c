"""Inference rows as they are done: a killed run's --output keeps its finished rows, --resume
completes it to the rows of one uninterrupted run; and --plot of a long file.

The kills are real: ``tests/kill_at.py rows N`` SIGKILLs a forked run of the command right after
its N-th batch of rows is written.
"""

import csv
import json
import os
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import kill_at
from helpers import tiny_fbank_model
from s3prl_ser.cli.inference import FILES_FAILED
from s3prl_ser.cli.inference import main as inference
from s3prl_ser.inference.rows import RowWriter


@pytest.fixture(scope="module")
def model_dir(mini_corpus, mini_meta, tmp_path_factory, one_thread):
    return tiny_fbank_model(mini_corpus, mini_meta, tmp_path_factory.mktemp("streaming_model"), "fold1")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Five short files of distinct lengths, a corrupt one, and a 21 s file (long above 10 s)."""
    root = tmp_path_factory.mktemp("streaming_audio")
    rng = np.random.default_rng(0)
    for i, seconds in enumerate([0.9, 0.5, 1.3, 0.7, 1.1]):
        sf.write(root / f"clip{i}.wav", rng.uniform(-0.3, 0.3, int(seconds * 16000)).astype("float32"), 16000)
    (root / "corrupt.wav").write_bytes(b"RIFF" + bytes(100))
    speech = rng.uniform(-0.3, 0.3, 13 * 16000).astype("float32")
    sf.write(root / "long.wav", np.concatenate([np.zeros(8 * 16000, dtype="float32"), speech]), 16000)
    return root


def _args(model_dir, folder, output, *extra):
    options = ["--batch-size", "2", "--long-audio", "10", "--no-progress", "-q"]
    return [str(model_dir), str(folder), "--output", str(output), *options, *extra]


def _rows(path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _key(row):
    """A row without its probabilities (compared apart, to 1e-5: batches differ between runs)."""
    return tuple((k, str(v)) for k, v in sorted(row.items()) if k != "probabilities" and not k.startswith("p_"))


def _same_rows(resumed, whole):
    assert Counter(map(_key, resumed)) == Counter(map(_key, whole))  # the same rows, none twice
    by_key = {_key(row): row for row in whole}
    for row in resumed:
        expected = by_key[_key(row)]
        if "probabilities" in row:
            assert row["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
        else:  # CSV cells, 6 decimals
            columns = [k for k in row if k.startswith("p_") and row[k]]
            assert [float(row[k]) for k in columns] == pytest.approx([float(expected[k]) for k in columns], abs=2e-6)


def _kill_after(writes, argv):
    status = kill_at.wait(kill_at.fork_run("rows", str(writes), "inference", argv))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.fixture(scope="module")
def whole(model_dir, folder, tmp_path_factory):
    """The rows of one uninterrupted run, CSV and JSON lines."""
    out = tmp_path_factory.mktemp("whole")
    for name in ("out.csv", "out.jsonl"):
        with pytest.raises(SystemExit) as exit_info:
            inference(_args(model_dir, folder, out / name))
        assert exit_info.value.code == FILES_FAILED  # corrupt.wav
    return {suffix: _rows(out / f"out{suffix}") for suffix in (".csv", ".jsonl")}


def test_the_rows_of_a_long_file_come_a_batch_of_windows_at_a_time(whole):
    rows = whole[".jsonl"]
    # as they are done: the unreadable file, the short files by length (batches of 2), then the long file
    assert [(Path(r["file"]).name, r["segment"]) for r in rows] == [
        ("corrupt.wav", "file"),
        *[(f"clip{i}.wav", "file") for i in (1, 3, 0, 4, 2)],
        *[("long.wav", "window")] * 5,
        ("long.wav", "summary"),
    ]
    assert [r["status"] for r in rows].count("error") == 1
    csv_rows = whole[".csv"]
    assert [(r["file"], r["segment"], r["start"]) for r in csv_rows] == [
        (r["file"], r["segment"], "" if r["start"] is None else f"{r['start']:.3f}") for r in rows
    ]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize("writes", [3, 5])
def test_a_killed_run_keeps_its_rows_and_resume_completes_them(model_dir, folder, whole, tmp_path, suffix, writes):
    """Killed after 3 writes (the error row, two batches of two files) or 5 (every short file,
    then the long file's first batch of two windows): the output holds those rows, whole; the
    resumed run drops the long file's windows without their summary and gives, with the kept
    rows, the rows of the uninterrupted run, none twice."""
    output = tmp_path / f"out{suffix}"
    _kill_after(writes, _args(model_dir, folder, output))
    killed = _rows(output)
    assert output.read_bytes().endswith(b"\n")
    expected_files = {3: 5, 5: 7}[writes]
    assert len({row["file"] for row in killed}) == expected_files
    assert killed == whole[suffix][: len(killed)]
    if writes == 5:
        assert [row["segment"] for row in killed[-2:]] == ["window", "window"]
    with pytest.raises(SystemExit) as exit_info:
        inference(_args(model_dir, folder, output, "--resume"))
    assert exit_info.value.code == FILES_FAILED  # the kept error row still counts
    _same_rows(_rows(output), whole[suffix])


def test_resume_drops_a_cut_last_line_and_skips_finished_files(model_dir, folder, whole, tmp_path):
    """A kill inside a write's system call can leave part of a line: resume drops it and
    predicts that file again; a finished output is left as it is, nothing predicted."""
    output = tmp_path / "out.jsonl"
    lines = [json.dumps(row) + "\n" for row in whole[".jsonl"]]
    output.write_text("".join(lines[:4]) + lines[4][:30])
    with pytest.raises(SystemExit):
        inference(_args(model_dir, folder, output, "--resume"))
    _same_rows(_rows(output), whole[".jsonl"])
    before = output.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        inference(_args(model_dir, folder, output, "--resume"))
    assert exit_info.value.code == FILES_FAILED and output.read_bytes() == before


def test_resume_refuses_an_output_of_other_columns(model_dir, folder, whole, tmp_path):
    output = tmp_path / "out.csv"
    with open(output, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(whole[".csv"][0]))
        writer.writeheader()
        writer.writerows(whole[".csv"][:2])
    before = output.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        inference(_args(model_dir, folder, output, "--resume", "--top-k", "2"))
    message = str(exit_info.value.code)
    assert message.startswith(f"error: {output}: its columns are not this run's") and "top1_label" in message
    assert output.read_bytes() == before  # untouched
    jsonl = tmp_path / "out.jsonl"
    jsonl.write_text(json.dumps(whole[".jsonl"][1]) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        inference(_args(model_dir, folder, jsonl, "--resume", "--classes", "neu,ang"))
    assert str(exit_info.value.code).startswith(f"error: {jsonl}: line 1: its classes")
    jsonl.write_text("file,segment\n")
    with pytest.raises(SystemExit) as exit_info:
        inference(_args(model_dir, folder, jsonl, "--resume"))
    assert str(exit_info.value.code).startswith(f"error: {jsonl}: line 1: not a JSON row")
    with pytest.raises(SystemExit) as exit_info:
        inference([str(model_dir), str(folder), "--resume"])
    assert str(exit_info.value.code) == "error: --resume needs --output, the file whose rows it keeps"


def test_row_writer_appends_whole_lines_and_csv_names_resume_exactly(tmp_path):
    """CSV cells of names starting with = are escaped; finished() matches the name, not the cell."""
    row = {"file": "=a.wav", "segment": "file", "status": "ok", "label": "x", "probabilities": {"x": 1.0}}
    output = tmp_path / "rows.csv"
    with RowWriter(output, ["x"]) as writer:
        assert output.read_bytes() == (",".join(writer.columns) + "\r\n").encode()  # the header, before any row
        writer.write([row])
        writer.write([{**row, "file": "b.wav", "segment": "window"}])  # b.wav: cut short
    with RowWriter(output, ["x"], resume=True) as writer:
        assert writer.finished("=a.wav") and not writer.finished("'=a.wav") and not writer.finished("b.wav")
        assert writer.failed == 0
    assert [r["file"] for r in _rows(output)] == ["'=a.wav"]  # b.wav's window dropped
    with pytest.raises(ValueError, match="must end in .csv or .jsonl"):
        RowWriter(tmp_path / "rows.txt", ["x"])


def test_plot_of_a_long_file(model_dir, folder, whole, tmp_path):
    """--plot: a PNG of the figure's size; the bands are the windows' probabilities stacked at
    their centres, the silent first window is hatched, the summary is in the title."""
    from PIL import Image

    from s3prl_ser.inference.long_audio_plot import windows_figure

    png = tmp_path / "long.png"
    inference([str(model_dir), str(folder / "long.wav"), "--long-audio", "10", "--plot", str(png), "-q"])
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1320, 504)  # 11 x 4.2 inches at 120 dpi
    rows = [row for row in whole[".jsonl"] if row["file"].endswith("long.wav")]
    fig = windows_figure(rows)
    ax = fig.axes[0]
    classes = list(rows[0]["probabilities"])
    assert len(ax.collections) == len(classes)
    windows = rows[:-1]
    centres = [(row["start"] + row["end"]) / 2 for row in windows]
    first = ax.collections[0].get_paths()[0].vertices  # the lowest band: the first class
    top = {round(x, 6): y for x, y in first[len(first) // 2 :]}  # its upper edge, drawn backwards
    assert [top[round(x, 6)] for x in centres] == pytest.approx([row["probabilities"][classes[0]] for row in windows])
    spans = [patch.get_x() for patch in ax.patches], [patch.get_width() for patch in ax.patches]
    assert spans == ([0.0], [8.0])  # the silent window (0-8 s), hatched
    assert f"summary label {rows[-1]['label']}" in ax.get_title() and ax.get_xlim() == (0.0, 21.0)


def test_plot_refuses_a_short_file_several_inputs_and_other_formats(model_dir, folder, tmp_path):
    png = str(tmp_path / "p.png")
    with pytest.raises(SystemExit) as exit_info:
        inference([str(model_dir), str(folder / "clip0.wav"), "--plot", png, "-q"])
    assert "clip0.wav: no window rows to draw" in str(exit_info.value.code)
    for argv in (
        [str(folder / "clip0.wav"), str(folder / "long.wav"), "--plot", png],
        [str(folder), "--plot", "p.jpg"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            inference([str(model_dir), *argv])
        assert str(exit_info.value.code).startswith("error: --plot takes a .png file and one long audio file")
    assert not Path(png).exists()


def test_plot_of_speech_segments_draws_each_over_its_span():
    """Rows of ``segments="vad"`` (speech rows, silence rows without prediction, a summary):
    stacked bars from each segment's start to its end, the silences hatched."""
    from s3prl_ser.inference.long_audio_plot import windows_figure

    def row(segment, start, end, probabilities=()):
        probabilities = dict(zip(["neu", "ang"], probabilities))
        return {"file": "call.wav", "segment": segment, "start": start, "end": end, "status": "ok"} | {
            "silence": not probabilities,
            "label": max(probabilities, key=probabilities.get) if probabilities else None,
            "probabilities": probabilities,
        }

    rows = [row("silence", 0, 3), row("speech", 3, 9, (0.75, 0.25)), row("silence", 9, 12)]
    rows += [row("speech", 12, 16, (0.25, 0.75)), row("summary", 0, 20, (0.55, 0.45))]
    ax = windows_figure(rows).axes[0]
    bars = [(p.get_x(), p.get_width(), p.get_y(), p.get_height()) for p in ax.patches if p.get_height() < 1]
    assert bars == [(3, 6, 0, 0.75), (12, 4, 0, 0.25), (3, 6, 0.75, 0.25), (12, 4, 0.25, 0.75)]
    assert [(p.get_x(), p.get_width()) for p in ax.patches if p.get_height() == 1] == [(0, 3), (9, 3)]  # silences
    assert ax.get_title() == "call.wav (0:20): summary label neu; 2 speech segments" and ax.get_xlim() == (0, 20)
