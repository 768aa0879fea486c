"""Meta-data validation and the utterance dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from s3prl_ser.data.emotion_dataset import EmotionDataset, collate, read_meta_data

LABELS = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}


def _write(path, data) -> str:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_dataset_items_follow_the_meta_data(mini_corpus, mini_meta):
    meta = read_meta_data(mini_meta / "Session1" / "test_meta_data.json", mini_corpus)
    dataset = EmotionDataset(mini_corpus, meta, indices=[2, 0])
    assert meta.class_names == ["neu", "hap", "ang", "sad"]
    wav, label, name = dataset[0]
    item = meta.items[2]
    assert label == LABELS[item["label"]] and name == item["path"].split("/")[-1][: -len(".wav")]
    assert wav.dtype == np.float32 and wav.ndim == 1 and wav.size >= 400
    assert dataset.labels() == [LABELS[meta.items[i]["label"]] for i in (2, 0)]
    wavs, labels, names = collate([dataset[0], dataset[1]])
    assert labels == tuple(dataset.labels()) and len(wavs) == len(names) == 2


def test_preload_reads_once(mini_corpus, mini_meta, monkeypatch):
    meta = read_meta_data(mini_meta / "Session1" / "test_meta_data.json", mini_corpus)
    dataset = EmotionDataset(mini_corpus, meta)
    first = dataset[0][0]
    dataset.preload()

    def no_audio(path, **_):
        raise AssertionError(f"read {path} again")

    monkeypatch.setattr("s3prl_ser.data.emotion_dataset.load_audio", no_audio)
    dataset.preload()  # already loaded: nothing read
    assert np.array_equal(dataset[0][0], first) and len(dataset) == len(meta.items)


def test_dataset_without_audio_serves_names_and_labels(mini_corpus, mini_meta, monkeypatch):
    def no_audio(path, **_):
        raise AssertionError(f"read {path}")

    monkeypatch.setattr("s3prl_ser.data.emotion_dataset.load_audio", no_audio)
    meta = read_meta_data(mini_meta / "Session1" / "test_meta_data.json", mini_corpus)
    dataset = EmotionDataset(mini_corpus, meta, pre_load=True, read_audio=False)
    wav, label, name = dataset[1]
    assert wav.shape == (0,) and label == LABELS[meta.items[1]["label"]]
    assert name in meta.items[1]["path"]


def test_meta_data_errors_name_the_file_and_the_problem(mini_corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="meta data not found.*prepare_iemocap"):
        read_meta_data(tmp_path / "absent.json")
    with pytest.raises(ValueError, match=r"bad\.json: not an s3prl emotion meta-data file"):
        read_meta_data(_write(tmp_path / "bad.json", "{not json"))
    with pytest.raises(ValueError, match=r"ids\.json: label ids must be 0\.\.1"):
        read_meta_data(_write(tmp_path / "ids.json", {"labels": {"neu": 0, "hap": 2}, "meta_data": []}))
    unknown = {"labels": LABELS, "meta_data": [{"path": "a.wav", "label": "fru", "speaker": "x"}]}
    with pytest.raises(ValueError, match=r"utterance a\.wav has unknown label 'fru' \(known: neu, hap, ang, sad\)"):
        read_meta_data(_write(tmp_path / "unknown.json", unknown))
    with pytest.raises(ValueError, match="lists no utterances"):
        read_meta_data(_write(tmp_path / "empty.json", {"labels": LABELS, "meta_data": []}))
    missing = {
        "labels": LABELS,
        "meta_data": [{"path": f"gone{i}.wav", "label": "neu", "speaker": "x"} for i in range(5)],
    }
    with pytest.raises(
        FileNotFoundError, match=r"5 audio file\(s\) missing under .*gone0\.wav, gone1\.wav, gone2\.wav and 2 more"
    ):
        read_meta_data(_write(tmp_path / "missing.json", missing), mini_corpus)
