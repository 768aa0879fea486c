"""EmotionRecognizer's inputs, as transformers' audio-classification pipeline takes them: a path,
bytes, a binary file object, an array with its rate, a dict; lists with one rate each;
``batch_size``; ``-`` for stdin on the command line; URLs refused."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import tiny_fbank_model
from s3prl_ser.data.audio import AudioError
from s3prl_ser.inference import EmotionRecognizer


@pytest.fixture(scope="module")
def model_dir(mini_corpus, mini_meta, tmp_path_factory, one_thread):
    """fbank + tiny ECAPA-TDNN, fold2 (4 steps), exported."""
    root = tmp_path_factory.mktemp("input_types_model")
    return tiny_fbank_model(mini_corpus, mini_meta, root, "fold2")


@pytest.fixture(scope="module")
def recognizer(model_dir):
    return EmotionRecognizer.from_pretrained(model_dir)


def _noise(seconds, rate, seed):
    return np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * rate)).astype("float32")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Five float WAVs (their samples exactly as an array holds them); the last at 8 kHz."""
    root = tmp_path_factory.mktemp("input_types_audio")
    paths = []
    for index, (seconds, rate) in enumerate(((1.1, 16000), (0.7, 16000), (1.6, 16000), (0.5, 16000), (0.9, 8000))):
        path = root / f"{index}.wav"
        sf.write(path, _noise(seconds, rate, index), rate, subtype="FLOAT")
        paths.append(path)
    return paths


def _probs(prediction):
    return np.array(list(prediction.probabilities.values()))


def test_every_input_type_gives_the_paths_probabilities(recognizer, files):
    path = files[0]
    expected = _probs(recognizer.predict(path))
    data = path.read_bytes()
    array, rate = sf.read(path, dtype="float32")
    with open(path, "rb") as handle:
        inputs = {
            "str": str(path),
            "bytes": data,
            "BytesIO": io.BytesIO(data),
            "open file": handle,
            "array": (array, rate),
            "dict array": {"array": array, "sampling_rate": rate},
            "dict raw": {"raw": array, "sampling_rate": rate, "path": "ignored"},
        }
        for name, audio in inputs.items():
            audio, sample_rate = audio if isinstance(audio, tuple) else (audio, None)
            got = _probs(recognizer.predict(audio, sample_rate))
            assert np.abs(got - expected).max() < 1e-6, name
    # not the same probabilities for any input: another file differs
    assert np.abs(_probs(recognizer.predict(files[1])) - expected).max() > 1e-4


def test_a_list_of_arrays_with_one_rate_each(recognizer, files):
    arrays = [sf.read(path, dtype="float32") for path in (files[1], files[4])]  # 16 kHz, 8 kHz
    assert [rate for _, rate in arrays] == [16000, 8000]
    by_path = recognizer.predict_batch([files[1], files[4]])
    by_array = recognizer.predict_batch([a for a, _ in arrays], sample_rate=[r for _, r in arrays])
    for want, got in zip(by_path, by_array):
        assert np.abs(_probs(got) - _probs(want)).max() < 1e-6
    # one rate for both reads the 8 kHz array as 16 kHz: half as long, other probabilities
    wrong = recognizer.predict_batch([a for a, _ in arrays], sample_rate=16000)
    assert np.abs(_probs(wrong[1]) - _probs(by_path[1])).max() > 1e-4
    embeddings = recognizer.embed([a for a, _ in arrays], sample_rate=[16000, 8000])
    assert torch.allclose(embeddings[1], recognizer.embed(files[4]), rtol=1e-6, atol=1e-4)  # |values| ~ 400
    with pytest.raises(ValueError, match="2 sample rates for 1 inputs"):
        recognizer.predict_batch([arrays[0][0]], sample_rate=[16000, 8000])


def test_urls_and_incomplete_inputs_are_refused_clearly(recognizer, files):
    array = sf.read(files[0], dtype="float32")[0]
    cases = {
        "https://example.org/speech.wav": "a URL; audio is read from local files only",
        "file:///tmp/speech.wav": "a URL",
    }
    for url, message in cases.items():
        with pytest.raises(AudioError, match=message) as error:
            recognizer.predict(url)
        assert url in str(error.value)  # named as given, not as the path "https:/example.org/..."
    with pytest.raises(AudioError, match="needs 'array' .or 'raw'. and 'sampling_rate'"):
        recognizer.predict({"array": array})
    with pytest.raises(AudioError, match="waveform array needs its rate"):
        recognizer.predict(array)
    with pytest.raises(AudioError, match="contradicts sample_rate=8000"):
        recognizer.predict({"array": array, "sampling_rate": 16000}, sample_rate=8000)
    with pytest.raises(AudioError, match="binary mode"):
        recognizer.predict(io.StringIO("not audio"))
    with pytest.raises(AudioError, match="<bytes>: truncated"):
        recognizer.predict(files[0].read_bytes()[:1000])
    with pytest.raises(AudioError, match="a URL"):
        recognizer.predict_files(["https://example.org/speech.wav"])


def test_batch_size_gives_the_probabilities_of_one_pass(recognizer, files):
    whole = recognizer.predict_batch(files, batch_size=None)
    for batch_size in (2, 8):
        assert [p.label for p in recognizer.predict_batch(files, batch_size=batch_size)] == [p.label for p in whole]
        for got, want in zip(recognizer.predict_batch(files, batch_size=batch_size), whole):
            assert np.abs(_probs(got) - _probs(want)).max() < 1e-6
    with pytest.raises(ValueError, match="batch_size"):
        recognizer.predict_batch(files, batch_size=0)


def test_cli_reads_audio_from_stdin(model_dir, files):
    command = [sys.executable, "-m", "s3prl_ser.inference", str(model_dir), "--no-progress"]
    by_path = subprocess.run(command + [str(files[2])], capture_output=True, text=True, check=True)
    with open(files[2], "rb") as stdin:
        by_stdin = subprocess.run(command + ["-"], stdin=stdin, capture_output=True, text=True, check=True)
    path_row, stdin_row = json.loads(by_path.stdout), json.loads(by_stdin.stdout)
    assert stdin_row.pop("file") == "-" and path_row.pop("file") == str(files[2])
    assert stdin_row == path_row
    broken = subprocess.run(command + ["-"], input=b"not audio", capture_output=True)
    assert broken.returncode == 3
    row = json.loads(broken.stdout)
    assert row["file"] == "-" and row["status"] == "error" and row["error"].startswith("-: ")
