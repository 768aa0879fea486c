"""Continuous attribute labels on the data side: scales, validation, dataset targets, fold filtering
(issue 22, items 2 and 8)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from s3prl_ser.data.attributes import denormalise, normalise
from s3prl_ser.data.emotion_dataset import EmotionDataset, read_meta_data
from s3prl_ser.data.fold_data import load_fold_data
from s3prl_ser.data.manifest import Manifest, ManifestFold, read_manifest

SCALE = {"arousal": [1, 7], "valence": [1, 7], "dominance": [1, 7]}


def write_audio(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), 0.1 * np.random.default_rng(seed).standard_normal(4800).astype(np.float32), 16000)


def rated_manifest(root: Path) -> Manifest:
    """12 utterances of 4 speakers (speaker 3 is the test set); u2 and u9 have no category (X),
    u5 knows no attribute, u7 knows only arousal."""
    rows = []
    for i in range(12):
        uid = f"u{i}"
        write_audio(root / f"{uid}.wav", i)
        attributes = {"arousal": 1.0 + i * 0.5, "valence": 7.0 - i * 0.5, "dominance": 4.0}
        if i == 5:
            attributes = {}
        if i == 7:
            attributes = {"arousal": 2.5, "valence": None}
        label = None if i in (2, 9) else "ab"[i % 2]
        rows.append(
            {"id": uid, "path": f"{uid}.wav", "label": label, "speaker": f"s{i // 3}", "attributes": attributes}
        )
    test = ("u9", "u10", "u11")
    fold = ManifestFold(tuple(f"u{i}" for i in range(2, 9)), test, ("u0", "u1"))
    return Manifest("rated", ["a", "b"], rows, {"fold1": fold}, attribute_scale={k: tuple(v) for k, v in SCALE.items()})


def test_normalise_and_denormalise_by_hand():
    values = np.array([[1.0, 4.0, np.nan], [7.0, 2.5, 3.0]])
    scale = [(1, 7), (1, 5), (2, 4)]
    expected = np.array([[0.0, 0.75, np.nan], [1.0, 0.375, 0.5]])
    np.testing.assert_allclose(normalise(values, scale), expected)
    np.testing.assert_allclose(denormalise(expected, scale), values)
    tensor = normalise(torch.tensor(values, dtype=torch.float32), scale)
    assert tensor.dtype == torch.float32 and torch.isnan(tensor[0, 2])
    torch.testing.assert_close(tensor[1], torch.tensor([1.0, 0.375, 0.5]))
    assert normalise(np.array([3.0]), (1, 5)).tolist() == [0.5]


def test_dataset_targets_are_normalised_in_the_requested_order(tmp_path):
    manifest = rated_manifest(tmp_path)
    manifest.write(tmp_path / "meta")
    data = load_fold_data(
        {"root": str(tmp_path), "meta_data": str(tmp_path / "meta")},
        "fold1",
        categories=False,
        attributes=["valence", "arousal"],
    )
    assert data.attribute_scale == {"valence": (1.0, 7.0), "arousal": (1.0, 7.0)}
    # u2 (no category) stays in an attributes run; u5 (no attribute) is left out.
    assert [data.train.name(i) for i in range(len(data.train))] == ["u2", "u3", "u4", "u6", "u7", "u8"]
    wav, (label, values), name = data.train[0]
    assert name == "u2" and label == -1 and values.dtype == np.float32 and wav.shape == (4800,)
    np.testing.assert_allclose(values, [(6.0 - 1) / 6, (2.0 - 1) / 6])  # valence 6.0, arousal 2.0
    _, (label, values), _ = data.train[4]  # u7: valence null, arousal 2.5
    assert label == 1 and np.isnan(values[0]) and values[1] == pytest.approx(1.5 / 6)
    raw = data.train.attribute_values()
    assert raw.shape == (6, 2) and raw[0].tolist() == [6.0, 2.0] and np.isnan(raw[4, 0])
    assert data.train.labels() == [-1, 1, 0, 0, 1, 0]
    assert [data.test.name(i) for i in range(len(data.test))] == ["u9", "u10", "u11"]


def test_categorical_run_drops_items_without_category_and_keeps_int_targets(tmp_path, caplog):
    rated_manifest(tmp_path).write(tmp_path / "meta")
    with caplog.at_level("INFO"):
        data = load_fold_data({"root": str(tmp_path), "meta_data": str(tmp_path / "meta")}, "fold1")
    assert [data.train.name(i) for i in range(len(data.train))] == ["u3", "u4", "u5", "u6", "u7", "u8"]
    assert [data.test.name(i) for i in range(len(data.test))] == ["u10", "u11"]
    assert data.train[0][1] == 1 and isinstance(data.train[0][1], int)
    assert "1 of the 7 utterances" in caplog.text and "without a category" in caplog.text
    assert data.protocol.sizes == {"train": 6, "dev": 2, "test": 2}
    assert data.attribute_scale == {k: tuple(v) for k, v in SCALE.items()}
    both = load_fold_data({"root": str(tmp_path), "meta_data": str(tmp_path / "meta")}, "fold1", attributes=["arousal"])
    assert [both.train.name(i) for i in range(len(both.train))] == ["u3", "u4", "u5", "u6", "u7", "u8"]
    label, values = both.train[2][1]  # u5: a category, no attributes: NaN, masked downstream
    assert label == 1 and np.isnan(values).all()


def test_undeclared_attribute_and_no_target_are_errors(tmp_path, mini_corpus, mini_meta):
    rated_manifest(tmp_path).write(tmp_path / "meta")
    datarc = {"root": str(tmp_path), "meta_data": str(tmp_path / "meta")}
    with pytest.raises(
        ValueError, match=r"meta: the corpus declares no attribute_scale for pleasure.*arousal, valence"
    ):
        load_fold_data(datarc, "fold1", attributes=["arousal", "pleasure"])
    with pytest.raises(ValueError, match="categories, attributes, or both"):
        load_fold_data(datarc, "fold1", categories=False)
    with pytest.raises(ValueError, match="declares no attribute_scale for arousal.*no attributes"):
        load_fold_data({"root": str(mini_corpus), "meta_data": str(mini_meta)}, "fold1", attributes=["arousal"])


def test_manifest_round_trip_and_validation(tmp_path):
    manifest = rated_manifest(tmp_path)
    path = manifest.write(tmp_path / "meta")
    read = read_manifest(path)
    assert read.attribute_scale == {k: tuple(v) for k, v in SCALE.items()}
    assert read.rows(["u7"])[0]["attributes"] == {"arousal": 2.5, "valence": None}
    table = read.count_table()
    assert "none" in table.splitlines()[1]  # the X rows get a column
    assert "fold1   test   arousal 5.50-6.50 mean 6.00 (3)" in table
    data = json.loads(path.read_text())
    data["utterances"][4]["attributes"]["arousal"] = 7.5
    path.write_text(json.dumps(data))
    with pytest.raises(
        ValueError, match=r"manifest.json: utterances\[4\] \(u4.wav\): arousal 7.5 is outside .*\[1, 7\]"
    ):
        read_manifest(path)
    data["utterances"][4]["attributes"] = {"pleasure": 3}
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="attribute 'pleasure' has no declared attribute_scale"):
        read_manifest(path)
    data["utterances"][4] = {**data["utterances"][4], "label": None, "attributes": {}}
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"utterances\[4\] \(u4.wav\): label None is not among"):
        read_manifest(path)


def test_s3prl_meta_data_with_attributes(tmp_path):
    items = [
        {"path": "a.wav", "label": "neu", "attributes": {"arousal": 2.0, "valence": 3.0, "dominance": 5.0}},
        {"path": "b.wav", "label": "sad", "attributes": {"arousal": 1.0}},
    ]
    meta = {"labels": {"neu": 0, "sad": 1}, "meta_data": items, "attribute_scale": {"arousal": [1, 5]}}
    path = tmp_path / "test_meta_data.json"
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"test_meta_data.json: utterance a.wav: attribute 'valence' has no declared"):
        read_meta_data(path)
    meta["attribute_scale"] = {"arousal": [1, 5], "valence": [1, 5], "dominance": [1, 5]}
    path.write_text(json.dumps(meta))
    data = EmotionDataset(tmp_path, read_meta_data(path), read_audio=False, attributes=["dominance", "arousal"])
    np.testing.assert_allclose(data[0][1][1], [1.0, 0.25])
    assert data[1][1][0] == 1 and np.isnan(data[1][1][1][0]) and data[1][1][1][1] == 0.0
    assert EmotionDataset(tmp_path, read_meta_data(path), read_audio=False)[1][1] == 1
    meta["attribute_scale"] = {"arousal": [5, 1]}
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="attribute_scale.arousal must be \\[low, high\\] with low < high"):
        read_meta_data(path)
