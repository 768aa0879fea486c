"""Long files cut where the speech is (silero-vad through onnxruntime), on real recordings.

The recordings ship in the auditok 0.2.0 wheel (test extra): ``DIGITS``, a man saying the
Arabic numbers one to six with pauses over room noise and a loud non-speech noise burst
(16 kHz); ``SENTENCE``, a German sentence with two short pauses between about 7 s of room tone
before and 5 s after (44.1 kHz). The reference spans below were read by hand off their spectrograms.
"""

import csv
import json
from importlib import metadata

import numpy as np
import onnxruntime
import pytest
import soundfile as sf
import torch

from helpers import tiny_fbank_model
from s3prl_ser.cli.inference import main as inference
from s3prl_ser.data.audio import SAMPLE_RATE, audio_info, load_audio, read_segment
from s3prl_ser.inference import EmotionRecognizer, speech_segments
from s3prl_ser.inference.speech_segments import (
    FRAME,
    SileroVAD,
    VADUnavailableError,
    segment_plan,
    silero_model_path,
    speech_spans,
)

DIGITS = metadata.distribution("auditok").locate_file("auditok/data/1to6arabic_16000_mono_bc_noise.wav")
SENTENCE = metadata.distribution("auditok").locate_file(
    "auditok/data/was_der_mensch_saet_das_wird_er_vielfach_ernten_44100Hz_mono_lead_trail_silence.wav"
)
# Seconds: the six numbers, and the noise burst (broadband, no harmonics) between the second and third.
DIGIT_SPANS = [(0.70, 1.20), (3.85, 4.20), (11.70, 12.05), (15.05, 15.60), (15.85, 16.55), (16.85, 17.40)]
NOISE_BURST = (7.8, 9.6)
SENTENCE_SPAN = (7.50, 11.85)
TOLERANCE = 0.25  # s: silero's 32 ms frames, its 30 ms padding, and where a word's breath ends


@pytest.fixture(scope="module")
def model_dir(mini_corpus, mini_meta, tmp_path_factory, one_thread):
    return tiny_fbank_model(mini_corpus, mini_meta, tmp_path_factory.mktemp("vad_model"), "fold1")


@pytest.fixture(scope="module")
def recognizer(model_dir):
    return EmotionRecognizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def vad():
    return SileroVAD()


def _seconds(spans):
    return [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in spans]


def test_block_model_gives_silero_frame_by_frame_probabilities_in_any_chunks(vad):
    """The sequence model a block at a time (18.8 s: two blocks) against silero-vad's streaming
    ONNX model one frame at a time, as its OnnxWrapper runs it; and any chunking of the input."""
    wav = load_audio(DIGITS)
    probs = vad.probabilities([wav])
    assert probs.shape == (-(-wav.numel() // FRAME),)
    session = onnxruntime.InferenceSession(
        str(silero_model_path("silero_vad.onnx")), providers=["CPUExecutionProvider"]
    )
    padded = np.pad(wav.numpy(), (0, -wav.numel() % FRAME))
    state, context, reference = np.zeros((2, 1, 128), np.float32), np.zeros((1, 64), np.float32), []
    for start in range(0, padded.size, FRAME):
        frame = np.concatenate([context, padded[None, start : start + FRAME]], axis=1)
        out, state = session.run(None, {"input": frame, "state": state, "sr": np.array(SAMPLE_RATE)})
        context = frame[:, -64:]
        reference.append(out[0, 0])
    assert np.abs(probs - np.array(reference)).max() <= 1e-6  # measured: 0.0
    pieces = torch.split(wav, [1000, 70001, 200000, wav.numel() - 271001])
    np.testing.assert_array_equal(vad.probabilities(pieces), probs)


def test_the_six_numbers_are_found_and_the_noise_burst_is_not(vad):
    wav = load_audio(DIGITS)
    spans = _seconds(speech_spans(vad.probabilities([wav]), wav.numel()))
    assert len(spans) == len(DIGIT_SPANS)
    for (start, end), (ref_start, ref_end) in zip(spans, DIGIT_SPANS):
        assert abs(start - ref_start) < TOLERANCE and abs(end - ref_end) < TOLERANCE
    assert not any(start < NOISE_BURST[1] and end > NOISE_BURST[0] for start, end in spans)


def test_plan_merges_short_pauses_and_cuts_long_spans_in_equal_parts():
    spans = [(0, 16000), (20000, 40000), (48000, 240000)]
    assert segment_plan(spans, max_length=128000, merge_gap=8000) == [(0, 40000), (48000, 144000), (144000, 240000)]
    # a gap of 8000 now merges, but not past max_length: no merged span is cut again
    assert segment_plan(spans, max_length=128000, merge_gap=8001) == [(0, 40000), (48000, 144000), (144000, 240000)]
    assert segment_plan(spans, max_length=240000, merge_gap=8001) == [(0, 240000)]
    assert segment_plan(spans[:2], max_length=30000, merge_gap=8000) == [(0, 16000), (20000, 40000)]


def _check_timeline(rows, duration):
    """Rows tile [0, duration] in order, without gap or overlap; silence rows carry no prediction."""
    *segments, summary = rows
    assert summary["segment"] == "summary" and (summary["start"], summary["end"]) == (0.0, duration)
    assert segments[0]["start"] == 0.0 and segments[-1]["end"] == pytest.approx(duration)
    for a, b in zip(segments, segments[1:]):
        assert b["start"] == a["end"] and (a["segment"], b["segment"]) != ("silence", "silence")
    for row in segments:
        assert row["duration"] == pytest.approx(row["end"] - row["start"]) and row["duration"] > 0
        if row["segment"] == "silence":
            assert row["silence"] is True and row["label"] is None and row["probabilities"] == {}
        else:
            assert row["segment"] == "speech" and set(row["probabilities"]) == set(summary["probabilities"])
    return [r for r in segments if r["segment"] == "speech"], [r for r in segments if r["segment"] == "silence"]


def test_sentence_is_one_speech_row_between_silences(recognizer):
    rows = recognizer.predict_long(SENTENCE, segments="vad")
    info = audio_info(SENTENCE)
    speech, silence = _check_timeline(rows, info.samples / SAMPLE_RATE)
    (row,) = speech  # its two pauses (~0.2 s) do not split it
    assert abs(row["start"] - SENTENCE_SPAN[0]) < TOLERANCE and abs(row["end"] - SENTENCE_SPAN[1]) < TOLERANCE
    assert [r["end"] for r in silence[:1]] == [row["start"]] and [r["start"] for r in silence[1:]] == [row["end"]]
    # the row's prediction is the model's on that segment read alone
    wav = read_segment(SENTENCE, info, round(row["start"] * SAMPLE_RATE), round(row["end"] * SAMPLE_RATE))
    expected = recognizer.probabilities([wav])[0]
    assert list(row["probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-6)
    assert rows[-1]["probabilities"] == pytest.approx(row["probabilities"], abs=1e-6)
    assert rows[-1]["silence"] is False and rows[-1]["label"] == row["label"]


def test_segments_never_exceed_max_length_and_cover_the_speech(recognizer, vad):
    wav = load_audio(DIGITS)
    spans = _seconds(speech_spans(vad.probabilities([wav]), wav.numel()))
    rows = recognizer.predict_long(DIGITS, segments="vad", window=0.5, batch_size=3)
    speech, silence = _check_timeline(rows, wav.numel() / SAMPLE_RATE)
    assert all(r["duration"] <= 0.5 for r in speech)
    # each VAD span is covered by consecutive speech rows, and nothing else is speech
    assert sum(r["duration"] for r in speech) == pytest.approx(sum(b - a for a, b in spans))
    assert len(silence) == len(DIGIT_SPANS) + 1  # before, between and after the numbers (none merged at 0.5 s)
    weights = np.array([r["duration"] for r in speech])
    mean = sum(w * np.array(list(r["probabilities"].values())) for w, r in zip(weights, speech)) / weights.sum()
    assert list(rows[-1]["probabilities"].values()) == pytest.approx(mean.tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="shorter than the model"):
        recognizer.predict_long(DIGITS, segments="vad", window=(recognizer.min_samples - 1) / SAMPLE_RATE)
    with pytest.raises(ValueError, match="0 < threshold < 1"):
        recognizer.predict_long(DIGITS, segments="vad", threshold=1.0)
    with pytest.raises(ValueError, match="segments must be one of fixed, vad"):
        recognizer.predict_long(DIGITS, segments="speech")


def test_room_tone_and_very_short_files_are_all_silence(recognizer, tmp_path):
    """The sentence's first 7 s (room tone at about -55 dBFS: not silent by level) and a 20 ms file."""
    wav, rate = sf.read(SENTENCE, frames=7 * 44100)
    sf.write(tmp_path / "room.wav", wav, rate)
    sf.write(tmp_path / "blip.wav", wav[: rate // 50], rate)
    for name, seconds in (("room.wav", 7.0), ("blip.wav", 0.02)):
        rows = recognizer.predict_long(tmp_path / name, segments="vad")
        assert [r["segment"] for r in rows] == ["silence", "summary"]
        assert [(r["start"], r["end"]) for r in rows] == [(0.0, seconds)] * 2
        assert all(r["silence"] is True and r["label"] is None and r["probabilities"] == {} for r in rows)


def test_cli_segments_vad_writes_speech_and_silence_rows_and_resumes(model_dir, tmp_path):
    out = tmp_path / "rows.csv"
    inference([str(model_dir), str(SENTENCE), "--long-audio", "10", "--segments", "vad", "-O", str(out)])
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["segment"] for r in rows] == ["silence", "speech", "silence", "summary"]
    assert rows[0]["label"] == "" and rows[0]["silence"] == "true" and rows[1]["label"] == rows[3]["label"] != ""
    assert [r["end"] for r in rows[:2]] == [rows[1]["start"], rows[2]["start"]]
    # JSON lines with top-k: silence rows have no classes and an empty top_k, which --resume accepts
    jsonl = tmp_path / "rows.jsonl"
    args = [str(model_dir), str(SENTENCE), "--long-audio", "10", "--segments", "vad", "--top-k", "2", "-O", str(jsonl)]
    inference(args)
    first = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["top_k"] for r in first if r["segment"] == "silence"] == [[], []]
    inference([*args, "--resume"])
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == first


def test_cli_without_silero_vad_says_how_to_install_it(model_dir, monkeypatch, tmp_path):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(speech_segments.metadata, "distribution", missing)
    speech_segments.default_vad.cache_clear()  # an earlier test's session; a failed load is not cached
    with pytest.raises(SystemExit, match=r"^error: .*pip install 's3prl-ser\[vad\]'"):
        inference([str(model_dir), str(SENTENCE), "--segments", "vad", "-O", str(tmp_path / "rows.csv")])
    assert not (tmp_path / "rows.csv").exists()


def test_missing_silero_vad_names_the_install(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(speech_segments.metadata, "distribution", missing)
    with pytest.raises(VADUnavailableError, match=r"pip install 's3prl-ser\[vad\]'"):
        silero_model_path()
