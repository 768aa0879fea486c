"""The corpus-neutral data path: manifests, EmoBox lists read as is, dev rules, label rules,
segments and audio formats, IEMOCAP unchanged, and the protocol-aware reports (F1 included)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from s3prl_ser.config import ConfigError
from s3prl_ser.data.audio import AudioError, load_audio
from s3prl_ser.data.corpora import table
from s3prl_ser.data.corpora.common import PreparationError
from s3prl_ser.data.emotion_dataset import available_folds
from s3prl_ser.data.fold_data import load_fold_data
from s3prl_ser.data.manifest import Manifest, ManifestFold, read_manifest
from s3prl_ser.training.cv_report import summarize, write_report
from s3prl_ser.training.metrics import classification_report

GOLDEN = Path(__file__).parent / "data" / "iemocap_mini_folds.json"


def write_audio(path: Path, seconds: float = 0.3, rate: int = 16000, channels: int = 1, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = 0.1 * np.random.default_rng(seed).standard_normal((int(seconds * rate), channels)).astype(np.float32)
    soundfile.write(str(path), data if channels > 1 else data[:, 0], rate)
    return path


def datarc(root, meta, **extra):
    return {"root": str(root), "meta_data": str(meta), **extra}


def toy_manifest(root: Path, *, dev: bool = False, speakers: int = 4, per_speaker: int = 4) -> Manifest:
    """``speakers`` x ``per_speaker`` utterances labelled a/b/c; fold1 tests on the last speaker."""
    rows = []
    for s in range(speakers):
        for i in range(per_speaker):
            uid = f"s{s}_{i}"
            write_audio(root / f"spk{s}" / f"{uid}.wav", seed=s * 10 + i)
            rows.append({"id": uid, "path": f"spk{s}/{uid}.wav", "label": "abc"[i % 3], "speaker": f"s{s}"})
    test = tuple(r["id"] for r in rows if r["speaker"] == f"s{speakers - 1}")
    rest = [r["id"] for r in rows if r["id"] not in test]
    fold = ManifestFold(tuple(rest[2:]), test, tuple(rest[:2])) if dev else ManifestFold(tuple(rest), test)
    return Manifest("toy", ["a", "b", "c"], rows, {"fold1": fold}, protocol="one fold")


def test_iemocap_route_gives_todays_folds_and_splits(mini_corpus, mini_meta):
    """Recorded from the data path as it was before manifests (tests/data/iemocap_mini_folds.json)."""
    golden = json.loads(GOLDEN.read_text())
    for key, expected in golden.items():
        split, fold = key.split("/")
        data = load_fold_data(datarc(mini_corpus, mini_meta, split=split), fold, read_audio=False)
        record = data.protocol.to_dict()
        assert {k: record[k] for k in expected["protocol"]} == expected["protocol"], key
        assert record["corpus_name"] == "IEMOCAP" and record["class_names"] == expected["classes"]
        for part in ("train", "dev", "test"):
            dataset = getattr(data, part)
            assert [dataset[i][2] for i in range(len(dataset))] == expected[part], (key, part)
    assert available_folds(mini_meta) == ["fold1", "fold2", "fold3", "fold4", "fold5"]


def test_manifest_round_trip_and_errors_name_the_row(tmp_path):
    manifest = toy_manifest(tmp_path)
    path = manifest.write(tmp_path / "meta")
    again = read_manifest(tmp_path / "meta")
    assert again.folds == manifest.folds and again.utterances == manifest.utterances
    data = json.loads(path.read_text())
    data["utterances"][3]["label"] = "z"
    with pytest.raises(ValueError, match=r"manifest.json: utterances\[3\] \(spk0/s0_3.wav\): label 'z' is not among"):
        Manifest.from_dict(data, str(path))
    data = json.loads(path.read_text())
    data["folds"]["fold1"]["test"].append(data["folds"]["fold1"]["train"][0])
    with pytest.raises(ValueError, match="folds.fold1: 1 utterance.s. in both train and test, e.g. s0_0"):
        Manifest.from_dict(data, "m.json")
    data = json.loads(path.read_text())
    data["utterances"][1]["id"] = "s0_0"
    with pytest.raises(ValueError, match=r"utterances\[1\]: duplicate id 's0_0'"):
        Manifest.from_dict(data, "m.json")
    data = json.loads(path.read_text())
    data["utterances"][0].update(start=2.0, end=1.0)
    with pytest.raises(ValueError, match=r"segment end 1.0 is not after its start 2.0"):
        Manifest.from_dict(data, "m.json")


def test_fold_without_dev_uses_the_rule_and_one_with_dev_never_does(tmp_path, monkeypatch):
    toy_manifest(tmp_path, dev=False).write(tmp_path / "meta")
    data = load_fold_data(datarc(tmp_path, tmp_path / "meta"), "fold1", read_audio=False)
    assert data.protocol.split["rule"] == "superb" and len(data.train) == 9 and len(data.dev) == 3
    toy_manifest(tmp_path, dev=True).write(tmp_path / "meta_dev")

    def no_random_split(*args, **kwargs):
        raise AssertionError("the random split was used for a corpus with a dev list")

    monkeypatch.setattr("s3prl_ser.data.fold_data.superb_train_dev_split", no_random_split)
    monkeypatch.setattr("s3prl_ser.data.fold_data.speaker_holdout_split", no_random_split)
    for split in ("superb", "speaker"):
        data = load_fold_data(datarc(tmp_path, tmp_path / "meta_dev", split=split), "fold1")
        assert data.protocol.split["rule"] == "given" and data.split == "given"
        assert [data.dev[i][2] for i in range(len(data.dev))] == ["s0_0", "s0_1"]
        assert [data.train.name(i) for i in range(len(data.train))] == [
            f"s{s}_{i}" for s in range(3) for i in range(4)
        ][2:]
        assert data.protocol.sizes == {"train": 10, "dev": 2, "test": 4}


def test_speaker_split_holds_no_speaker_on_two_sides(tmp_path):
    toy_manifest(tmp_path, speakers=6, per_speaker=3).write(tmp_path / "meta")
    data = load_fold_data(datarc(tmp_path, tmp_path / "meta", split="speaker"), "fold1", read_audio=False)

    def speakers(dataset):
        return {dataset.items[i]["speaker"] for i in range(len(dataset))}

    train, dev, test = speakers(data.train), speakers(data.dev), speakers(data.test)
    assert dev and not train & dev and not train & test and not dev & test
    assert len(data.train) + len(data.dev) == 15 and len(data.dev) >= 0.2 * 15
    assert data.protocol.split == {"rule": "speaker", "dev_speakers": sorted(dev), "file_order": None}
    chosen = load_fold_data(datarc(tmp_path, tmp_path / "meta", split="speaker", dev_speakers=["s2"]), "fold1")
    assert speakers(chosen.dev) == {"s2"} and "s2" not in speakers(chosen.train)
    manifest = read_manifest(tmp_path / "meta")
    manifest.utterances[0]["speaker"] = None
    manifest.write(tmp_path / "meta")
    with pytest.raises(ValueError, match="split: speaker needs the speaker of every utterance; 1 of 15"):
        load_fold_data(datarc(tmp_path, tmp_path / "meta", split="speaker"), "fold1")


def test_label_rules_from_the_config(tmp_path, mini_corpus, mini_meta):
    toy_manifest(tmp_path).write(tmp_path / "meta")
    rules = {"merge": {"c": "a"}, "drop": ["b"]}
    data = load_fold_data(datarc(tmp_path, tmp_path / "meta", labels=rules), "fold1", read_audio=False)
    assert data.class_names == ["a"] and len(data.test) == 3  # s3_0 a, s3_2 c -> a, s3_3 a; s3_1 b dropped
    assert data.protocol.split["labels"] == {"merge": {"c": "a"}, "drop": ["b"]}
    # the same rules on s3prl's IEMOCAP meta data: 4 classes become 3
    iemocap = load_fold_data(
        datarc(mini_corpus, mini_meta, labels={"merge": {"hap": "neu"}}), "fold1", read_audio=False
    )
    assert iemocap.class_names == ["neu", "ang", "sad"] and len(iemocap.test) == 7
    with pytest.raises(ConfigError, match="datarc.labels must be null or"):
        load_fold_data(datarc(tmp_path, tmp_path / "meta", labels=["a"]), "fold1")


def test_emobox_fold_files_are_read_as_is(tmp_path):
    """EmoBox's own line format (a RAVDESS fold as published), audio under ``downloads/``."""
    corpus = tmp_path / "EmoBox" / "data" / "ravdess"
    lists = {"train": [], "test": []}
    for actor in (1, 2, 11):
        for emotion, name in (("01", "Neutral"), ("07", "Disgust")):
            stem = f"03-01-{emotion}-01-01-01-{actor:02d}"
            wav = f"downloads/ravdess/audio/Audio_Speech_Actors_01-24/Actor_{actor:02d}/{stem}.wav"
            write_audio(tmp_path / wav, rate=48000, seed=actor)
            line = {
                "key": f"ravdess-{stem}",
                "dataset": "ravdess",
                "wav": wav,
                "type": "raw",
                "sample_rate": 48000,
                "num_frame": 14400.0,
                "task": "category",
                "length": 0.3,
                "emo": name,
                "channel": 1,
            }
            lists["test" if actor == 11 else "train"].append(json.dumps(line))
    (corpus / "fold_1").mkdir(parents=True)
    for split, lines in lists.items():
        (corpus / "fold_1" / f"ravdess_{split}_fold_1.jsonl").write_text("\n".join(lines) + "\n")
    assert available_folds(corpus) == ["fold1"]
    data = load_fold_data(datarc(tmp_path, corpus), "fold1")
    assert data.class_names == ["Disgust", "Neutral"] and data.protocol.corpus_name == "ravdess"
    assert [data.test[i][2] for i in range(2)] == ["ravdess-03-01-01-01-01-01-11", "ravdess-03-01-07-01-01-01-11"]
    assert len(data.train) + len(data.dev) == 4 and data.protocol.split["rule"] == "superb"
    wav, label, name = data.test[1]
    assert wav.shape == (4800,) and label == 0  # 0.3 s resampled 48 -> 16 kHz; Disgust is class 0
    (corpus / "fold_1" / "ravdess_valid_fold_1.jsonl").write_text(lists["train"][0] + "\n")
    (corpus / "fold_1" / "ravdess_train_fold_1.jsonl").write_text("\n".join(lists["train"][1:]) + "\n")
    assert load_fold_data(datarc(tmp_path, corpus), "fold1").protocol.split["rule"] == "given"  # EmoBox's valid list
    (corpus / "fold_1" / "ravdess_test_fold_1.jsonl").write_text('{"key": "x", "wav": "y.wav"}\n')
    with pytest.raises(
        ValueError, match=r"ravdess_test_fold_1.jsonl:1: an EmoBox line needs key, wav and emo; lacks emo"
    ):
        load_fold_data(datarc(tmp_path, corpus), "fold1")


def test_a_fold_whose_splits_share_audio_is_refused(tmp_path):
    """For every source, by utterance key and by the file a path resolves to."""
    for i in range(8):
        write_audio(tmp_path / "w" / f"u{i}.wav", seed=i)
    # EmoBox lists whose train and test share two keys
    corpus = tmp_path / "EmoBox" / "toy"
    (corpus / "fold_1").mkdir(parents=True)
    lists = {"train": range(6), "valid": [7], "test": [4, 5, 6]}
    for split, numbers in lists.items():
        lines = [json.dumps({"key": f"u{i}", "wav": f"w/u{i}.wav", "emo": "ab"[i % 2]}) for i in numbers]
        (corpus / "fold_1" / f"toy_{split}_fold_1.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ValueError,
        match=r"fold1: train \(.*toy#fold1/train\) and test \(.*toy#fold1/test\) share 2 utterance\(s\), "
        r"e.g. w/u4.wav; w/u5.wav",
    ):
        load_fold_data(datarc(tmp_path, corpus), "fold1", read_audio=False)
    # s3prl meta data with one path in train and test (train or the dev carved from it)
    session = tmp_path / "s3prl" / "Session1"
    session.mkdir(parents=True)
    for split, numbers in (("train", range(6)), ("test", [5, 6])):
        items = [{"path": f"w/u{i}.wav", "label": "ab"[i % 2], "speaker": "x"} for i in numbers]
        (session / f"{split}_meta_data.json").write_text(json.dumps({"labels": {"a": 0, "b": 1}, "meta_data": items}))
    with pytest.raises(
        ValueError,
        match=r"Session1/train_meta_data.json.*\) and test \(.*Session1/test_meta_data.json\) share 1 "
        r"utterance\(s\), e.g. w/u5.wav",
    ):
        load_fold_data(datarc(tmp_path, tmp_path / "s3prl"), "fold1", read_audio=False)
    # a manifest naming one file under two ids: by the same path, then through a symbolic link
    (tmp_path / "link").symlink_to(tmp_path / "w")
    rows = [{"id": f"u{i}", "path": f"w/u{i}.wav", "label": "ab"[i % 2], "speaker": f"s{i}"} for i in range(6)]
    for test_path, expected in (("w/u0.wav", "e.g. w/u0.wav:"), ("link/u0.wav", "e.g. w/u0.wav = link/u0.wav:")):
        again = {"id": "again", "path": test_path, "label": "a", "speaker": "s9"}
        fold = ManifestFold(("u0", "u1", "u2", "u3"), ("again",), ("u4", "u5"))
        Manifest("toy", ["a", "b"], rows + [again], {"fold1": fold}).write(tmp_path / "meta")
        with pytest.raises(
            ValueError, match=r"manifest.json#fold1/train\) and test .* share 1 utterance\(s\), " + expected
        ):
            load_fold_data(datarc(tmp_path, tmp_path / "meta"), "fold1", read_audio=False)
    fold = ManifestFold(("u0", "u1", "u2", "u3"), ("u4",), ("u5",))  # the same corpus, disjoint: accepted
    Manifest("toy", ["a", "b"], rows, {"fold1": fold}).write(tmp_path / "meta")
    assert len(load_fold_data(datarc(tmp_path, tmp_path / "meta"), "fold1", read_audio=False).test) == 1


def test_speakers_in_train_and_test_are_named_in_a_warning(tmp_path, caplog):
    """A table's fold column that puts every speaker on both sides: accepted, with a warning."""
    lines = ["file,emotion,actor,fold"]
    for i in range(6):
        write_audio(tmp_path / f"u{i}.wav", seed=i)
        lines.append(f"u{i}.wav,{'ab'[i % 2]},p{i % 2},{i // 3 + 1}")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    columns = {"path": "file", "label": "emotion", "speaker": "actor"}
    table.prepare(tmp_path / "list.csv", tmp_path, tmp_path / "meta", columns=columns, fold_column="fold")
    with caplog.at_level("WARNING", logger="s3prl_ser.data.fold_data"):
        load_fold_data(datarc(tmp_path, tmp_path / "meta"), "fold2", read_audio=False)
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "fold2: 2 of the 2 test speakers (" in record.getMessage()
    assert "are also in train or dev (" in record.getMessage() and ": p0, p1; this fold's scores are not" in (
        record.getMessage()
    )
    caplog.clear()
    toy_manifest(tmp_path / "toy").write(tmp_path / "toy_meta")  # speaker-independent: no word
    with caplog.at_level("WARNING", logger="s3prl_ser.data.fold_data"):
        load_fold_data(datarc(tmp_path / "toy", tmp_path / "toy_meta"), "fold1", read_audio=False)
    assert not caplog.records


def test_table_paths_outside_the_root_are_refused_when_prepared(tmp_path):
    from s3prl_ser.cli.prepare_corpus import main as prepare_main

    write_audio(tmp_path / "elsewhere" / "u0.wav")
    write_audio(tmp_path / "root" / "u1.wav", seed=1)
    (tmp_path / "list.csv").write_text("file,emotion,actor\nu1.wav,joy,p1\n../elsewhere/u0.wav,anger,p0\n")
    argv = ["table", str(tmp_path / "root"), str(tmp_path / "meta"), "--table", str(tmp_path / "list.csv")]
    argv += ["--columns", "path=file,label=emotion,speaker=actor", "--num-folds", "2"]
    with pytest.raises(
        SystemExit,
        match=r"^error: .*list.csv:3: path '../elsewhere/u0.wav' is outside the corpus root .*--allow-outside",
    ):
        prepare_main(argv)
    assert not (tmp_path / "meta").exists()
    prepare_main(argv + ["--allow-outside-root"])
    assert [row["path"] for row in read_manifest(tmp_path / "meta").utterances] == ["u1.wav", "../elsewhere/u0.wav"]


def test_segments_channels_and_formats(tmp_path):
    long = write_audio(tmp_path / "talk.flac", seconds=2.0, rate=8000, channels=2)
    stereo = soundfile.read(str(long))[0]
    left = load_audio(long, start=0.5, end=1.5, channel=1)
    assert left.shape == (16000,)  # 1 s at 16 kHz
    assert load_audio(long).shape == (32000,)  # whole file, channels averaged
    assert not np.allclose(left.numpy(), load_audio(long, start=0.5, end=1.5, channel=2).numpy())
    assert stereo.shape == (16000, 2)
    write_audio(tmp_path / "clip.ogg", seconds=0.5, rate=44100)
    assert abs(load_audio(tmp_path / "clip.ogg").shape[0] - 8000) <= 1
    with pytest.raises(AudioError, match=r"talk.flac: segment 1.5-2.5 s lies outside the recording \(2.000 s\)"):
        load_audio(long, start=1.5, end=2.5)
    with pytest.raises(AudioError, match="talk.flac: channel 3 requested, the file has 2"):
        load_audio(long, channel=3)

    rows = [
        {
            "id": f"talk@{s}",
            "path": "talk.flac",
            "label": "ab"[s % 2],
            "speaker": "x",
            "start": s * 0.25,
            "end": s * 0.25 + 0.25,
        }
        for s in range(8)
    ]
    manifest = Manifest(
        "talks", ["a", "b"], rows, {"fold1": ManifestFold(tuple(r["id"] for r in rows[:6]), ("talk@6", "talk@7"))}
    )
    manifest.write(tmp_path / "meta")
    data = load_fold_data(datarc(tmp_path, tmp_path / "meta"), "fold1")
    assert [data.test[i][0].shape for i in range(2)] == [(4000,), (4000,)]  # each segment 0.25 s
    assert data.test.key(0) == "talk.flac@1.5-1.75" and data.test.name(0) == "talk@6"
    manifest.utterances[7]["end"] = 2.5
    manifest.write(tmp_path / "meta")
    with pytest.raises(
        AudioError, match=r"1 of the 8 audio files of fold1 cannot be used: talk.flac: segment 1.75-2.5 s"
    ):
        load_fold_data(datarc(tmp_path, tmp_path / "meta"), "fold1")


def test_plain_csv_with_a_column_mapping(tmp_path):
    lines = ["file,emotion,actor,set"]
    for i in range(6):
        write_audio(tmp_path / "audio" / f"u{i}.wav", seed=i)
        lines.append(
            f"audio/u{i}.wav,{'joy' if i % 2 else 'anger'},p{i % 3},{['train', 'train', 'validation', 'test', 'train', 'test'][i]}"
        )
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    columns = {"path": "file", "label": "emotion", "speaker": "actor"}
    manifest = table.prepare(
        tmp_path / "list.csv", tmp_path, tmp_path / "meta", columns=columns, corpus="mine", split_column="set"
    )
    fold = manifest.folds["fold1"]
    assert (fold.train, fold.dev, fold.test) == (("u0", "u1", "u4"), ("u2",), ("u3", "u5"))
    assert manifest.labels == ["anger", "joy"] and manifest.official_test == "test"
    by_speaker = table.prepare(tmp_path / "list.csv", tmp_path, tmp_path / "m2", columns=columns, num_folds=3)
    assert [set(f.test) for f in by_speaker.folds.values()] == [{"u0", "u3"}, {"u1", "u4"}, {"u2", "u5"}]
    (tmp_path / "bad.csv").write_text("file,emotion,actor\naudio/u0.wav,,p0\n")
    with pytest.raises(PreparationError, match=r"bad.csv:2: no label \(column 'emotion'\)"):
        table.prepare(tmp_path / "bad.csv", tmp_path, tmp_path / "m3", columns=columns)


def test_macro_f1_against_a_hand_computation():
    truth = ["neu", "neu", "neu", "hap", "hap", "ang", "sad", "sad", "sad", "sad"]
    pred = ["neu", "hap", "neu", "hap", "neu", "ang", "sad", "neu", "sad", "sad"]
    report = classification_report(truth, pred, ("neu", "hap", "ang", "sad"))
    # neu: TP 2, FP 2 (hap, sad predicted neu), FN 1 -> P 2/4, R 2/3, F1 = 2*(1/2*2/3)/(1/2+2/3) = 4/7
    # hap: TP 1, FP 1, FN 1 -> 1/2; ang: 1; sad: TP 3, FP 0, FN 1 -> P 1, R 3/4, F1 6/7
    assert report.f1 == pytest.approx({"neu": 4 / 7, "hap": 0.5, "ang": 1.0, "sad": 6 / 7})
    assert report.macro_f1 == pytest.approx((4 / 7 + 0.5 + 1.0 + 6 / 7) / 4)
    # a class predicted but never referenced counts (F1 0); one in neither does not
    other = classification_report(["a", "a"], ["a", "b"], ("a", "b", "c"))
    assert other.f1["b"] == 0.0 and np.isnan(other.f1["c"]) and other.macro_f1 == pytest.approx((2 / 3 + 0) / 2)
    assert report.to_dict()["macro_f1"] == pytest.approx(report.macro_f1)


def test_reports_name_the_corpus_and_official_tests_show_no_spread(tmp_path):
    def fold(truth, pred, corpus):
        return dict(classification_report(truth, pred, ["a", "b"]).to_dict(), corpus=corpus)

    cv = {"name": "EmoDB", "num_folds": 5, "official_test": None}
    summary = summarize({"fold1": fold(["a", "b"], ["a", "a"], cv), "fold2": fold(["a", "b"], ["a", "b"], cv)})
    assert summary["corpus"] == cv
    assert summary["macro_f1"]["mean"] == pytest.approx((2 / 3 * 50 + 100) / 2)  # fold1: F1 a 2/3, b 0
    md = write_report(summary, tmp_path / "cv", "EmoDB")["md"].read_text()
    assert (
        "EmoDB: 2 of 5 fold(s)" in md and "| **mean ± std** |" in md and "| fold1 | 2 | 50.00 | 50.00 | 33.33 |" in md
    )
    official = {"name": "MSP-Podcast", "num_folds": 1, "official_test": "Test1"}
    summary = summarize({"fold1": fold(["a", "b", "b"], ["a", "b", "a"], official)})
    md = write_report(summary, tmp_path / "official", "MSP")["md"].read_text()
    assert "MSP-Podcast: official test set Test1" in md and "| fold1 (official test Test1) | 3 |" in md
    assert "±" not in md and "std" not in md.replace("no std over folds", "")
    from s3prl_ser.experiments.table1 import write_tables

    paths = write_tables(tmp_path, {9: summary}, "note", {"fbank": summary})
    table = paths["md"].read_text()
    row = next(line for line in table.splitlines() if line.startswith("| 2 | 9 |"))
    assert "±" not in row and f"| {summary['wa']['mean']:.2f} | {summary['ua']['mean']:.2f} |" in row
    assert "WA/UA on MSP-Podcast's official test set Test1 (one split: no std over folds)." in table
