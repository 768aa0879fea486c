"""top_k (the HF pipeline's sorted list) and classes (a renormalised subset): by hand, in Python, on the CLI."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from helpers import tiny_fbank_model
from s3prl_ser.cli.inference import main as inference
from s3prl_ser.inference import EmotionRecognizer
from s3prl_ser.inference.postprocess import postprocess_row, restrict, top_classes
from s3prl_ser.inference.recognizer import Prediction


@pytest.fixture(scope="module")
def model_dir(mini_corpus, mini_meta, tmp_path_factory, one_thread):
    """fbank + tiny ECAPA-TDNN, fold2 (4 steps), exported."""
    root = tmp_path_factory.mktemp("topk_model")
    return tiny_fbank_model(mini_corpus, mini_meta, root, "fold2")


@pytest.fixture(scope="module")
def recognizer(model_dir):
    return EmotionRecognizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("topk_audio")
    rng = np.random.default_rng(7)
    for i, seconds in enumerate((1.0, 1.5, 0.8)):
        sf.write(root / f"clip{i}.wav", rng.uniform(-0.3, 0.3, int(seconds * 16000)).astype("float32"), 16000)
    return sorted(root.glob("*.wav"))


PROBABILITIES = {"neu": 0.1, "hap": 0.4, "ang": 0.3, "sad": 0.2}


def test_hand_computed_subset_and_top_k_with_ties():
    # 0.1 / (0.1 + 0.3) = 0.25 and 0.3 / 0.4 = 0.75; the label moves from hap (dropped) to ang
    assert restrict(PROBABILITIES, ["neu", "ang"]) == pytest.approx({"neu": 0.25, "ang": 0.75})
    assert Prediction("hap", PROBABILITIES).restricted(["neu", "ang"]).label == "ang"
    assert restrict(PROBABILITIES, ["sad", "hap", "neu"]) == pytest.approx({"sad": 2 / 7, "hap": 4 / 7, "neu": 1 / 7})
    assert top_classes(PROBABILITIES, 2) == [{"label": "hap", "score": 0.4}, {"label": "ang", "score": 0.3}]
    assert [e["label"] for e in top_classes(PROBABILITIES, 9)] == ["hap", "ang", "sad", "neu"]  # k > C: all
    tied = {"neu": 0.3, "hap": 0.2, "ang": 0.3, "sad": 0.2}
    assert [e["label"] for e in top_classes(tied, 4)] == ["neu", "ang", "hap", "sad"]  # ties: class order
    row = {"file": "a.wav", "label": "hap", "probabilities": PROBABILITIES}
    out = postprocess_row(row, ["neu", "ang"], 1)
    assert out["label"] == "ang" and out["top_k"] == [{"label": "ang", "score": pytest.approx(0.75)}]
    assert postprocess_row({"probabilities": {}, "label": None}, ["neu"], 2)["top_k"] == []  # an error row
    with pytest.raises(ValueError, match="unknown class.*angry.*model's classes are neu, hap, ang, sad"):
        restrict(PROBABILITIES, ["neu", "angry"])
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        top_classes(PROBABILITIES, 0)


def test_predict_with_classes_and_top_k(recognizer, clips):
    names = recognizer.class_names
    full = recognizer.predict_batch(clips)
    subset = [names[2], names[0]]
    restricted = recognizer.predict_batch(clips, classes=subset)
    for whole, part in zip(full, restricted):
        assert list(part.probabilities) == subset and sum(part.probabilities.values()) == pytest.approx(1, abs=1e-6)
        total = sum(whole.probabilities[c] for c in subset)
        assert part.probabilities == pytest.approx({c: whole.probabilities[c] / total for c in subset}, abs=1e-7)
        assert part.label == max(subset, key=lambda c: whole.probabilities[c])
    top = recognizer.predict(clips[0], top_k=2)
    ranked = sorted(full[0].probabilities.values(), reverse=True)
    assert isinstance(top, list) and [e["score"] for e in top] == pytest.approx(ranked[:2])
    assert top[0]["label"] == full[0].label
    assert recognizer.predict(clips[0], top_k=1, classes=subset) == [
        {"label": restricted[0].label, "score": pytest.approx(max(restricted[0].probabilities.values()))}
    ]
    assert isinstance(recognizer.predict(clips[0]), Prediction)  # no options: unchanged
    with pytest.raises(ValueError, match=f"unknown class.*calm.*{', '.join(names)}"):
        recognizer.predict(clips[0], classes=["calm"])


def test_long_audio_windows_and_summary_honour_classes(recognizer, tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.random.default_rng(3).uniform(-0.3, 0.3, 13 * 16000).astype("float32"), 16000)
    subset = recognizer.class_names[1:3]
    full = recognizer.predict_long(path)
    part = recognizer.predict_long(path, classes=subset, top_k=2)
    assert [r["segment"] for r in part] == ["window"] * 3 + ["summary"]
    for whole, row in zip(full, part):
        total = sum(whole["probabilities"][c] for c in subset)
        assert row["probabilities"] == pytest.approx({c: whole["probabilities"][c] / total for c in subset})
        assert [e["label"] for e in row["top_k"]] == sorted(subset, key=lambda c: -row["probabilities"][c])


def test_cli_top_k_columns_and_classes(model_dir, recognizer, clips, tmp_path, capsys):
    names = recognizer.class_names
    subset = [names[3], names[1], names[0]]
    out = tmp_path / "out.csv"
    inference([str(model_dir), *map(str, clips), "-O", str(out), "--top-k", "2", "--classes", ",".join(subset)])
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    header = list(rows[0])
    assert [c for c in header if c.startswith("p_")] == [f"p_{c}" for c in subset]  # the others are dropped
    assert header[header.index(f"p_{subset[-1]}") + 1 :] == [
        "top1_label",
        "top1_score",
        "top2_label",
        "top2_score",
        "error",
    ]
    assert sorted(r["file"] for r in rows) == sorted(map(str, clips))
    for row in rows:  # in the order they were done (by length), not the input order
        expected = recognizer.predict(row["file"], classes=subset, top_k=2)
        assert [row["top1_label"], row["top2_label"]] == [e["label"] for e in expected] and row["label"] == row[
            "top1_label"
        ]
        assert float(row["top1_score"]) == pytest.approx(expected[0]["score"], abs=1e-6)
        assert float(row["top1_score"]) >= float(row["top2_score"])
        assert sum(float(row[f"p_{c}"]) for c in subset) == pytest.approx(1, abs=1e-5)
    capsys.readouterr()
    inference([str(model_dir), str(clips[0]), "--top-k", "3", "--no-progress"])
    line = json.loads(capsys.readouterr().out)
    assert [e["label"] for e in line["top_k"]] == [e["label"] for e in recognizer.predict(clips[0], top_k=3)]
    with pytest.raises(SystemExit) as exit_info:
        inference([str(model_dir), str(clips[0]), "--classes", f"{names[0]},calm"])
    message = str(exit_info.value.code)  # printed as the one line on stderr, exit status 1
    assert message.startswith("error: unknown class(es) calm") and ", ".join(names) in message
