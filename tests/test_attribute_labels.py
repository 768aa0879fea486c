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
    # IEMOCAP's meta data carry the summary triples (all 2.5 in the mini corpus) unless prepared without.
    mini = load_fold_data({"root": str(mini_corpus), "meta_data": str(mini_meta)}, "fold1", attributes=["arousal"])
    assert mini.attribute_scale == {"arousal": (1.0, 5.0)} and mini.test[0][1][1].tolist() == [0.375]
    from s3prl_ser.data.corpora.iemocap import prepare

    with pytest.warns(UserWarning):
        prepare(mini_corpus, tmp_path / "plain", attributes=None)
    with pytest.raises(ValueError, match="plain: the corpus declares no attribute_scale for arousal.*no attributes"):
        load_fold_data(
            {"root": str(mini_corpus), "meta_data": str(tmp_path / "plain")}, "fold1", attributes=["arousal"]
        )


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


# ------------------------------------------------------------------ sources

EMO_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def iemocap_corpus(root: Path, session2_triple: str = "[4.0000, 1.5000, 2.0000]") -> Path:
    """Two sessions, two kept turns each (and a dropped fru), with summary and evaluator lines."""
    turns = {
        1: [
            (
                "Ses01F_impro01_F000",
                "neu",
                "[2.5000, 3.5000, 3.0000]",
                ["val 2; act 3; dom  4;", "val 3; act 5; dom  ;"],
            ),
            ("Ses01F_impro01_M000", "fru", "[2.0000, 4.0000, 4.0000]", ["val 2; act 4; dom  4;"]),
            (
                "Ses01F_impro01_F001",
                "exc",
                "[4.5000, 4.0000, 3.5000]",
                ["val 5; act 4; dom  3;", "val 4; act 4; dom  4;"],
            ),
        ],
        2: [
            ("Ses02M_impro01_M000", "sad", session2_triple, ["val 1; act 1; dom  2;", "val 2; act 2; dom  2;"]),
            (
                "Ses02M_impro01_F000",
                "ang",
                "[1.5000, 4.5000, 4.5000]",
                ["val 1; act 5; dom  5;", "val 2; act 4; dom  4;"],
            ),
        ],
    }
    for session, rows in turns.items():
        dialog = rows[0][0].rsplit("_", 1)[0]
        lines = [EMO_HEADER]
        for index, (name, code, triple, ratings) in enumerate(rows):
            lines.append(f"[{index}.0000 - {index}.5000]\t{name}\t{code}\t{triple}\n")
            lines.append("C-E1:\tNeutral;\t()\n")
            lines += [f"A-E{k}:\t{r}\t()\n" for k, r in enumerate(ratings, 1)]
            lines.append("A-F1:\tval 5; act 5; dom  5;\t()\n\n")  # the actor's self-assessment: not used
            write_audio(root / f"Session{session}" / "sentences" / "wav" / dialog / f"{name}.wav", index)
        for sub in ("EmoEvaluation", "transcriptions"):
            (root / f"Session{session}" / "dialog" / sub).mkdir(parents=True, exist_ok=True)
        (root / f"Session{session}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text("".join(lines))
        (root / f"Session{session}" / "dialog" / "transcriptions" / f"{dialog}.txt").write_text("")
    return root


def test_iemocap_summary_and_evaluator_attributes(tmp_path):
    from s3prl_ser.data.corpora.iemocap import PreparationError, count_table, prepare

    corpus = iemocap_corpus(tmp_path / "IEMOCAP")
    with pytest.warns(UserWarning, match="no transcript"):
        per_session = prepare(corpus, tmp_path / "summary", sessions=(1, 2))
    meta = json.loads((tmp_path / "summary" / "Session1" / "test_meta_data.json").read_text())
    assert meta["attribute_scale"] == {"arousal": [1, 5], "valence": [1, 5], "dominance": [1, 5]}
    # [V, A, D] order on the line; exc merged into hap, fru dropped.
    assert [(m["label"], m["attributes"]) for m in meta["meta_data"]] == [
        ("neu", {"arousal": 3.5, "valence": 2.5, "dominance": 3.0}),
        ("hap", {"arousal": 4.0, "valence": 4.5, "dominance": 3.5}),
    ]
    table = count_table(per_session)
    assert "fold1  test   arousal 3.50-4.00 mean 3.75 (2); valence 2.50-4.50 mean 3.50 (2)" in table
    assert "fold1  train  arousal 1.50-4.50 mean 3.00 (2)" in table
    with pytest.warns(UserWarning):
        prepare(corpus, tmp_path / "evaluators", sessions=(1, 2), attributes="evaluators")
    items = json.loads((tmp_path / "evaluators" / "Session2" / "train_meta_data.json").read_text())["meta_data"]
    # Mean of the A-E lines (the second evaluator gave no dominance); the A-F self-assessment is left out.
    assert items[0]["attributes"] == {"arousal": 4.0, "valence": 2.5, "dominance": 4.0}
    assert items[1]["attributes"] == {"arousal": 4.0, "valence": 4.5, "dominance": 3.5}
    data = load_fold_data(
        {"root": str(corpus), "meta_data": str(tmp_path / "evaluators")}, "fold2", attributes=["arousal"]
    )
    assert data.test[0][1][0] == 3 and data.test[0][1][1].tolist() == [pytest.approx((1.5 - 1) / 4)]
    bad = iemocap_corpus(tmp_path / "bad", session2_triple="[4.0000, 5.5000, 2.0000]")
    with pytest.raises(PreparationError, match=r"Ses02M_impro01.txt:3: Ses02M_impro01_M000's arousal 5.5 .*\[1, 5\]"):
        prepare(bad, tmp_path / "bad_meta", sessions=(1, 2))


MSP_CSV = """FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set
MSP-PODCAST_0001_0001.wav,N,3.4,4.2,3.0,10,Female,Train
MSP-PODCAST_0001_0002.wav,X,5.8,2.2,6.6,10,Female,Train
MSP-PODCAST_0002_0001.wav,A,6.0,1.6,,11,Male,Train
MSP-PODCAST_0002_0002.wav,O,,,,11,Male,Train
MSP-PODCAST_0003_0001.wav,H,4.4,6.0,4.0,12,Female,Development
MSP-PODCAST_0004_0001.wav,S,2.0,2.2,2.4,13,Male,Test1
MSP-PODCAST_0004_0002.wav,X,4.0,3.0,5.0,13,Male,Test1
"""


def test_msp_podcast_attributes(tmp_path):
    from s3prl_ser.data.corpora import msp_podcast
    from s3prl_ser.data.corpora.common import PreparationError

    root = tmp_path / "MSP-Podcast"
    (root / "Labels").mkdir(parents=True)
    labels = root / "Labels" / "labels_consensus.csv"
    labels.write_text(MSP_CSV)
    for index, line in enumerate(MSP_CSV.splitlines()[1:]):
        write_audio(root / "Audios" / line.split(",")[0], index)
    manifest = msp_podcast.prepare(root, tmp_path / "meta")
    assert manifest.attribute_scale == {"arousal": (1.0, 7.0), "valence": (1.0, 7.0), "dominance": (1.0, 7.0)}
    rows = {row["id"][-9:]: row for row in manifest.utterances}
    assert "0002_0002" not in rows  # O without any attribute: nothing to learn
    assert rows["0001_0002"]["label"] is None
    assert rows["0001_0002"]["attributes"] == {"arousal": 5.8, "valence": 2.2, "dominance": 6.6}
    assert rows["0002_0001"]["attributes"] == {"arousal": 6.0, "valence": 1.6, "dominance": None}
    assert "fold1   train  arousal 3.40-6.00 mean 5.07 (3); valence 1.60-4.20 mean 2.67 (3); dominance 3.00-6.60" in (
        manifest.count_table()
    )
    datarc = {"root": str(root), "meta_data": str(tmp_path / "meta")}
    categorical = load_fold_data(datarc, "fold1")
    assert len(categorical.train) == 2 and len(categorical.test) == 1  # X left out
    rated = load_fold_data(datarc, "fold1", categories=False, attributes=["valence", "dominance"])
    assert len(rated.train) == 3 and len(rated.test) == 2
    np.testing.assert_allclose(rated.test[1][1][1], [(3.0 - 1) / 6, (5.0 - 1) / 6])
    labels.write_text(MSP_CSV.replace("6.0,1.6", "7.5,1.6"))
    with pytest.raises(
        PreparationError,
        match=r"labels_consensus.csv:4 \(MSP-PODCAST_0002_0001.wav\): arousal 7.5 \(column 'EmoAct'\) is outside",
    ):
        msp_podcast.prepare(root, tmp_path / "bad")


def test_table_attribute_columns(tmp_path):
    from s3prl_ser.cli.prepare_corpus import main as prepare_main

    rows = ["file,emotion,actor,act,val,split"]
    for i in range(6):
        write_audio(tmp_path / f"c{i}.wav", i)
        label = "" if i == 2 else "ab"[i % 2]
        rows.append(f"c{i}.wav,{label},s{i},{1 + i},{'' if i == 1 else 7 - i},{'test' if i >= 4 else 'train'}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    argv = ["table", str(tmp_path), str(tmp_path / "meta"), "--table", str(tmp_path / "list.csv")]
    argv += ["--columns", "path=file,label=emotion,speaker=actor", "--split-column", "split"]
    prepare_main(
        [*argv, "--attribute-columns", "arousal=act,valence=val", "--attribute-scale", "arousal=1:7,valence=0:7"]
    )
    manifest = read_manifest(tmp_path / "meta")
    assert manifest.attribute_scale == {"arousal": (1.0, 7.0), "valence": (0.0, 7.0)}
    assert manifest.rows(["c1"])[0]["attributes"] == {"arousal": 2.0, "valence": None}
    assert manifest.rows(["c2"])[0]["label"] is None and manifest.labels == ["a", "b"]
    with pytest.raises(SystemExit, match=r"list.csv:2: arousal 1 \(column 'act'\) is outside its scale \[2, 7\]"):
        prepare_main([*argv, "--attribute-columns", "arousal=act", "--attribute-scale", "2:7"])
    with pytest.raises(SystemExit, match="--attribute-scale: no scale for valence"):
        prepare_main([*argv, "--attribute-columns", "arousal=act,valence=val", "--attribute-scale", "arousal=1:7"])
