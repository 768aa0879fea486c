"""Inference of models trained with attributes (issue 22): export records what the model predicts,
the recognizer gives attribute values on the corpus's scale beside the class probabilities (files,
windows, summaries, ensembles, CSV/JSONL columns), attributes-only models have no classes, and the
model card reports CCC."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from huggingface_hub import ModelCard

from helpers import ATTRIBUTES, rated_meta, tiny_attribute_model
from s3prl_ser.cli.inference import main as inference
from s3prl_ser.inference import EmotionRecognizer
from s3prl_ser.inference.export import export_run
from s3prl_ser.inference.model_dir import ModelDirError, config_digest, verify_model_dir
from s3prl_ser.inference.onnx import export_onnx
from s3prl_ser.inference.rows import csv_columns, write_rows


@pytest.fixture(scope="module")
def runs(mini_corpus, tmp_path_factory, one_thread):
    """Multi-task fbank + tiny ECAPA-TDNN on fold1 and fold3 (4 steps each, exported: fold1's model
    and their ensemble), and an attributes-only model on fold1."""
    meta = rated_meta(mini_corpus, tmp_path_factory.mktemp("rated_meta"))
    cv = tmp_path_factory.mktemp("attribute_cv")
    tiny_attribute_model(mini_corpus, meta, cv, "fold3", out="fold3_model")
    model = tiny_attribute_model(mini_corpus, meta, cv, "fold1")
    ensemble = export_run(cv, cv / "ensemble", ensemble=True)
    only = tiny_attribute_model(
        mini_corpus, meta, tmp_path_factory.mktemp("attributes_only"), "fold1", categories=False
    )
    return {"cv": cv, "model": model, "ensemble": ensemble, "only": only}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("attribute_audio")
    rng = np.random.default_rng(3)
    for i, (seconds, level) in enumerate(((1.0, 0.05), (1.4, 0.3), (0.7, 0.15))):
        sf.write(root / f"clip{i}.wav", rng.uniform(-level, level, int(seconds * 16000)).astype("float32"), 16000)
    return sorted(root.glob("*.wav"))


def _raw_outputs(recognizer: EmotionRecognizer, wav: torch.Tensor) -> list[torch.Tensor]:
    """Each member's classifier output (C logits + A normalised attributes) for one clip, computed
    outside the recognizer's batching and scaling."""
    outputs = []
    with torch.no_grad():
        for member in recognizer.members:
            upstream = recognizer.upstreams[member.upstream_index]
            outputs.append(member.classifier(member.features([wav], upstream([wav])))[0])
    return outputs


def test_export_records_targets_and_scale_under_the_digest(runs):
    config = verify_model_dir(runs["model"])
    assert config["targets"]["attributes"] == list(ATTRIBUTES) and config["targets"]["categories"] is True
    assert config["attribute_scale"] == {name: [1.0, 5.0] for name in ATTRIBUTES}
    assert config["members"][0]["classifier"]["num_attributes"] == 3
    only = verify_model_dir(runs["only"])
    assert only["class_names"] == [] and only["targets"]["categories"] is False
    path = runs["model"] / "config.json"
    edited = dict(config, attribute_scale={name: [1.0, 7.0] for name in ATTRIBUTES})  # reread on another scale
    path.write_text(json.dumps(edited, indent=1))
    try:
        with pytest.raises(ModelDirError, match="digest differs"):
            verify_model_dir(runs["model"])
    finally:
        path.write_text(json.dumps(config, indent=1))
    assert config_digest(json.loads(path.read_text())) == (runs["model"] / "config.sha256").read_text().strip()


def test_predicted_attributes_are_the_denormalised_outputs(runs, clips):
    recognizer = EmotionRecognizer.from_pretrained(runs["model"])
    assert recognizer.attribute_names == list(ATTRIBUTES) and recognizer.attribute_scale["arousal"] == (1.0, 5.0)
    predictions = recognizer.predict_batch([str(c) for c in clips], batch_size=None)
    for clip, prediction in zip(clips, predictions):
        (raw,) = _raw_outputs(recognizer, recognizer.waveform(str(clip)))
        logits, normalised = raw[:4].tolist(), raw[4:].tolist()
        for name, y in zip(ATTRIBUTES, normalised):
            assert prediction.attributes[name] == pytest.approx(1 + 4 * y, abs=1e-5)  # lo + y (hi - lo), 1-5
        probabilities = np.exp(logits) / np.exp(logits).sum()
        assert list(prediction.probabilities.values()) == pytest.approx(probabilities.tolist(), abs=1e-6)
        assert prediction.label == recognizer.class_names[int(np.argmax(probabilities))]
    assert len({round(p.attributes["arousal"], 6) for p in predictions}) == 3  # read off each clip
    # the tensor API: probabilities (B, C) as for a categorical model, predictions (B, C + A)
    wavs = [recognizer.waveform(str(c)) for c in clips]
    values = recognizer.predictions(wavs)
    assert values.shape == (3, 7) and torch.equal(recognizer.probabilities(wavs), values[:, :4])
    np.testing.assert_allclose(values[:, 4:].numpy(), [list(p.attributes.values()) for p in predictions], atol=1e-6)
    top = recognizer.predict(str(clips[0]), classes=["neu", "ang"])
    assert top.attributes == pytest.approx(predictions[0].attributes, abs=1e-6)  # a class subset keeps them


def test_recognizer_matches_the_training_runs_test_predictions(runs, mini_corpus):
    """The expert wrote each test utterance's predicted attributes on the corpus's scale
    (test_fold1_attributes.csv, from the same averaged checkpoint): the exported model agrees."""
    recognizer = EmotionRecognizer.from_pretrained(runs["model"])
    rows = list(csv.DictReader((runs["cv"] / "fold1" / "test_fold1_attributes.csv").open()))
    paths = {p.stem: p for p in (mini_corpus / "Session1").rglob("*.wav")}
    assert len(rows) == 7
    for row in rows:
        predicted = recognizer.predict(str(paths[row["file"]])).attributes
        for name in ATTRIBUTES:  # the expert pads a batch (fbank frames at the edges), the recognizer does not
            assert predicted[name] == pytest.approx(float(row[f"{name}_pred"]), abs=2e-3)


def test_ensemble_averages_attribute_values_over_members(runs, clips):
    ensemble = EmotionRecognizer.from_pretrained(runs["ensemble"])
    assert len(ensemble.members) == 2 and ensemble.attribute_names == list(ATTRIBUTES)
    prediction = ensemble.predict(str(clips[1]))
    raws = _raw_outputs(ensemble, ensemble.waveform(str(clips[1])))
    mean = [sum(1 + 4 * float(raw[4 + a]) for raw in raws) / 2 for a in range(3)]
    assert list(prediction.attributes.values()) == pytest.approx(mean, abs=1e-5)
    member_probabilities = [raw[:4].softmax(-1) for raw in raws]
    assert list(prediction.probabilities.values()) == pytest.approx(((sum(member_probabilities)) / 2).tolist())


def test_attributes_only_model_predicts_values_and_no_classes(runs, clips):
    recognizer = EmotionRecognizer.from_pretrained(runs["only"])
    assert recognizer.class_names == [] and recognizer.attribute_names == list(ATTRIBUTES)
    prediction = recognizer.predict(str(clips[0]))
    assert prediction.label is None and prediction.probabilities == {}
    (raw,) = _raw_outputs(recognizer, recognizer.waveform(str(clips[0])))
    assert raw.shape == (3,)
    assert list(prediction.attributes.values()) == pytest.approx((1 + 4 * raw).tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="attributes only"):
        recognizer.predict(str(clips[0]), top_k=1)
    with pytest.raises(ValueError, match="attributes only"):
        recognizer.predict_files([str(clips[0])], classes=["neu"])
    rows = recognizer.predict_files([str(c) for c in clips])
    assert [r["label"] for r in rows] == [None] * 3 and all(r["attributes"].keys() == set(ATTRIBUTES) for r in rows)
    assert csv_columns([], 0, ATTRIBUTES)[7:11] == ["label", *ATTRIBUTES]


def test_file_rows_and_csv_jsonl_columns_carry_the_attributes(runs, clips, tmp_path):
    recognizer = EmotionRecognizer.from_pretrained(runs["model"])
    missing = tmp_path / "missing.wav"
    rows = recognizer.predict_files([*map(str, clips), str(missing)])
    by_file = {r["file"]: r for r in rows}
    for clip in clips:
        assert by_file[str(clip)]["attributes"] == pytest.approx(recognizer.predict(str(clip)).attributes, abs=1e-6)
    assert "attributes" not in by_file[str(missing)]  # an error row: no values
    csv_path, jsonl_path = tmp_path / "rows.csv", tmp_path / "rows.jsonl"
    for path in (csv_path, jsonl_path):
        assert write_rows(rows, path, recognizer.class_names, attribute_names=recognizer.attribute_names) == 1
    read = list(csv.DictReader(csv_path.open()))
    header = next(csv.reader(csv_path.open()))
    assert header[8:15] == ["p_neu", "p_hap", "p_ang", "p_sad", *ATTRIBUTES]
    for row in read:
        if row["status"] == "ok":
            assert float(row["valence"]) == pytest.approx(by_file[row["file"]]["attributes"]["valence"], abs=1e-6)
        else:
            assert row["arousal"] == row["valence"] == row["dominance"] == ""
    lines = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert [line.get("attributes") for line in lines] == [r.get("attributes") for r in rows]
    with pytest.raises(ValueError, match="attribute.*label.*name a column"):
        csv_columns(["neu"], 0, ["label"])


def test_command_line_rows_carry_the_attributes(runs, clips, tmp_path, capsys):
    out = tmp_path / "rows.csv"
    inference([str(runs["model"]), *map(str, clips), "--output", str(out), "--no-progress"])
    recognizer = EmotionRecognizer.from_pretrained(runs["model"])
    rows = {row["file"]: row for row in csv.DictReader(out.open())}
    assert list(next(iter(rows.values())))[8:15] == ["p_neu", "p_hap", "p_ang", "p_sad", *ATTRIBUTES]
    for clip in clips:
        expected = recognizer.predict(str(clip)).attributes
        assert [float(rows[str(clip)][a]) for a in ATTRIBUTES] == pytest.approx(list(expected.values()), abs=1e-6)
    capsys.readouterr()
    inference([str(runs["only"]), str(clips[0]), "--no-progress"])  # JSON lines on stdout
    (line,) = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    assert row["label"] is None and row["probabilities"] == {} and list(row["attributes"]) == list(ATTRIBUTES)


def test_long_audio_windows_and_summary_carry_attributes(runs, tmp_path):
    recognizer = EmotionRecognizer.from_pretrained(runs["model"])
    rng = np.random.default_rng(5)
    quiet, loud = rng.uniform(-0.02, 0.02, 16000), rng.uniform(-0.4, 0.4, 20000)  # 1 s, then 1.25 s
    sf.write(tmp_path / "long.wav", np.concatenate([quiet, loud]).astype("float32"), 16000)
    rows = recognizer.predict_long(tmp_path / "long.wav", window=1.0, hop=0.5)
    windows, summary = rows[:-1], rows[-1]
    assert [(w["start"], w["end"]) for w in windows] == [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (1.5, 2.25)]
    for w in windows:
        segment = recognizer.waveform(str(tmp_path / "long.wav"))[round(w["start"] * 16000) : round(w["end"] * 16000)]
        assert w["attributes"] == pytest.approx(recognizer.predict(segment.numpy(), 16000).attributes, abs=1e-5)
    durations = np.array([w["duration"] for w in windows])
    for name in ATTRIBUTES:  # the windows' mean weighted by their durations, as for the probabilities
        expected = np.dot(durations, [w["attributes"][name] for w in windows]) / durations.sum()
        assert summary["attributes"][name] == pytest.approx(expected, abs=1e-5)
    assert summary["segment"] == "summary" and set(summary["probabilities"]) == {"neu", "hap", "ang", "sad"}


def test_model_card_reports_ccc_per_attribute_and_fold(runs):
    card = ModelCard.load(runs["ensemble"] / "README.md")
    found = {
        (r.dataset_split, r.metric_type, r.metric_config): r.metric_value
        for r in card.data.eval_results
        if r.metric_type == "ccc"
    }
    expected = {}
    for fold in ("fold1", "fold3"):
        metrics = json.loads((runs["cv"] / fold / f"test_{fold}_metrics.json").read_text())
        expected |= {(fold, "ccc", a): metrics["attributes"][a]["ccc"] for a in ATTRIBUTES}
        expected[fold, "ccc", "mean"] = metrics["ccc_mean"]
    for config in (*ATTRIBUTES, "mean"):
        expected["mean over 2 folds", "ccc", config] = (
            expected["fold1", "ccc", config] + expected["fold3", "ccc", config]
        ) / 2
    assert found.keys() == expected.keys()
    assert all(found[key] == pytest.approx(value, abs=1e-12) for key, value in expected.items())
    assert "ccc" in card.data.metrics and "accuracy" in card.data.metrics
    assert "| fold | CCC arousal | CCC valence | CCC dominance | CCC mean |" in card.text
    arousal = expected["fold3", "ccc", "arousal"]
    assert f"| fold3 | {arousal:.3f} |" in card.text and "| mean over 2 folds |" in card.text
    assert "arousal 1-5, valence 1-5, dominance 1-5" in card.text
    assert "class probabilities and attribute values are averaged" in card.text
    assert 'recognizer.predict("speech.wav").attributes' in card.text
    only = ModelCard.load(runs["only"] / "README.md")
    assert {r.metric_type for r in only.data.eval_results} == {"ccc"} and "WA (%)" not in only.text


def test_onnx_graph_gives_the_attribute_values_of_the_recognizer(runs, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = export_run(runs["cv"], tmp_path / "onnx_ensemble", ensemble=True, onnx=True)
    note = verify_model_dir(out)["onnx"]  # under the config's digest
    assert note["kind"] == "full" and note["outputs"] == ["probabilities", "embeddings", "attributes"]
    assert note["attribute_names"] == list(ATTRIBUTES) and note["attribute_scale"]["dominance"] == [1.0, 5.0]
    lengths = [16000, 23000, 9000, 560]
    rng = np.random.default_rng(11)
    wavs = [rng.uniform(-0.3, 0.3, n).astype("float32") for n in lengths]
    padded = np.stack([np.pad(w, (0, max(lengths) - len(w))) for w in wavs])
    feed = {"wavs": padded, "lengths": np.array(lengths, dtype=np.int64)}
    for model, recognizer in (
        (out / "model.onnx", EmotionRecognizer.from_pretrained(out)),
        (tmp_path / "only.onnx", EmotionRecognizer.from_pretrained(runs["only"])),
    ):
        if not model.exists():
            assert export_onnx(recognizer, model)["outputs"] == ["embeddings", "attributes"]  # no classes
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        found = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        predictions, embeddings = recognizer.outputs([torch.from_numpy(w) for w in wavs])
        classes = len(recognizer.class_names)
        assert found["attributes"].shape == (4, 3) and 1 < found["attributes"].min() < found["attributes"].max() < 5
        np.testing.assert_allclose(found["attributes"], predictions[:, classes:].numpy(), atol=2e-6, rtol=0)
        np.testing.assert_allclose(found["embeddings"], embeddings.numpy(), atol=1e-6, rtol=0)
        if classes:
            np.testing.assert_allclose(found["probabilities"], predictions[:, :classes].numpy(), atol=1e-6, rtol=0)


def test_long_audio_plot_draws_attributes_over_time(runs, tmp_path):
    from PIL import Image

    from s3prl_ser.inference.long_audio_plot import windows_figure

    rng = np.random.default_rng(8)
    wav = np.concatenate([rng.uniform(-0.02, 0.02, 24000), rng.uniform(-0.4, 0.4, 24000)]).astype("float32")
    sf.write(tmp_path / "long.wav", wav, 16000)  # 3 s: quiet, then loud
    png, rows_path = tmp_path / "long.png", tmp_path / "rows.jsonl"
    argv = ["--long-audio", "1", "--window", "1", "--hop", "0.5", "--no-progress", "--output", str(rows_path)]
    inference([str(runs["model"]), str(tmp_path / "long.wav"), *argv, "--plot", str(png)])
    with Image.open(png) as image:
        assert image.size == (1320, 864)  # 11 x 7.2 inches at 120 dpi: the class panel and the attribute panel
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    windows, summary = rows[:-1], rows[-1]
    classes_ax, attributes_ax = windows_figure(rows).axes
    lines = attributes_ax.get_lines()  # per attribute: its values, then its dashed summary level
    centres = [(w["start"] + w["end"]) / 2 for w in windows]
    for index, name in enumerate(ATTRIBUTES):
        x, y = lines[2 * index].get_data()
        assert list(x) == pytest.approx([0.0, *centres, 3.0])
        assert list(y[1:-1]) == pytest.approx([w["attributes"][name] for w in windows])
        assert list(lines[2 * index + 1].get_ydata()) == pytest.approx([summary["attributes"][name]] * 2)
    legend = [t.get_text() for t in attributes_ax.get_legend().get_texts()]
    assert legend[:3] == [f"{a}: {summary['attributes'][a]:.2f}" for a in ATTRIBUTES]
    assert attributes_ax.get_xlim() == (0.0, 3.0) and len(classes_ax.collections) == 4  # the class bands as before
    only = [row | {"label": None, "probabilities": {}} for row in rows]
    (ax,) = windows_figure(only).axes  # attributes only: their panel alone, their summary in the title
    assert "summary arousal" in ax.get_title() and len(ax.get_lines()) == 6
