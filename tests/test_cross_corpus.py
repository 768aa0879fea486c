"""Cross-corpus scoring: label maps, counts and metrics by hand, the leakage refusal, the matrix killed and resumed."""

import json
import os
import shutil
import signal

import numpy as np
import pytest
import soundfile

import kill_at
from helpers import overrides, tiny_fbank_model
from s3prl_ser.config import ConfigError
from s3prl_ser.data.corpora import cremad, emodb, esd, msp_podcast, ravdess
from s3prl_ser.data.emotion_dataset import read_fold_lists
from s3prl_ser.data.label_maps import LabelMapError, default_corpus_map, read_label_map_file, resolve_label_map
from s3prl_ser.data.manifest import Manifest, ManifestFold, read_manifest
from s3prl_ser.experiments.cross_corpus import (
    Corpus,
    LeakageError,
    MatrixCorpus,
    load_scoring_model,
    pool_corpora,
    score,
)
from s3prl_ser.inference import EmotionRecognizer

CREMA_LABELS = ["NEU", "HAP", "ANG", "SAD", "DIS"]  # CREMA-D's codes; DIS has no IEMOCAP counterpart
COMMON = {"neu": "neutral", "hap": "happy", "ang": "angry", "sad": "sad"}
CREMA = {"NEU": "neutral", "HAP": "happy", "ANG": "angry", "SAD": "sad"}


@pytest.fixture(scope="module")
def crema(tmp_path_factory):
    """A second corpus, CREMA-D's label codes: 4 speakers x 5 labels of 0.25 s noise (audio of its own), 2 folds."""
    root = tmp_path_factory.mktemp("crema_root")
    rng = np.random.default_rng(7)
    rows = []
    for speaker in range(1, 5):
        for index, label in enumerate(CREMA_LABELS):
            path = f"spk{speaker}/{speaker}_{label}_{index}.wav"
            (root / path).parent.mkdir(exist_ok=True)
            soundfile.write(root / path, 0.1 * rng.standard_normal(4000).astype("float32"), 16000)
            rows.append({"id": f"s{speaker}_{label}", "path": path, "label": label, "speaker": f"spk{speaker}"})
    ids = {s: [r["id"] for r in rows if r["speaker"] == f"spk{s}"] for s in range(1, 5)}
    folds = {
        "fold1": ManifestFold((*ids[1], *ids[2], *ids[3]), tuple(ids[4])),
        "fold2": ManifestFold((*ids[2], *ids[3], *ids[4]), tuple(ids[1])),
    }
    meta = tmp_path_factory.mktemp("crema_meta")
    Manifest("CREMA-D", CREMA_LABELS, rows, folds, protocol="2 speaker folds").write(meta)
    return Corpus(str(root), str(meta)), rows


@pytest.fixture(scope="module")
def iemocap_model(mini_corpus, mini_meta, tmp_path_factory, one_thread):
    """fbank + tiny ECAPA-TDNN trained 4 steps on the mini IEMOCAP's fold1: its run and its export."""
    root = tmp_path_factory.mktemp("iemocap_model")
    return root / "fold1", tiny_fbank_model(mini_corpus, mini_meta, root, "fold1")


def by_hand(recognizer, root, rows, model_map, corpus_map, classes):
    """WA, UA, macro-F1 (%) and the confusion matrix of ``rows`` computed here, from the recognizer's own predictions."""
    kept = [r for r in rows if corpus_map.get(r["label"]) in classes]
    predictions = recognizer.predict_batch([os.path.join(root, r["path"]) for r in kept], batch_size=None)
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for row, prediction in zip(kept, predictions):
        mapped = {c: 0.0 for c in classes}
        for name, p in prediction.probabilities.items():
            if model_map.get(name) is not None:
                mapped[model_map[name]] += p
        confusion[classes.index(corpus_map[row["label"]]), classes.index(max(mapped, key=mapped.get))] += 1
    recall = [confusion[i, i] / confusion[i].sum() for i in range(len(classes)) if confusion[i].sum()]
    f1 = [
        2 * confusion[i, i] / (confusion[i].sum() + confusion[:, i].sum())
        for i in range(len(classes))
        if confusion[i].sum() + confusion[:, i].sum()
    ]
    return 100 * np.trace(confusion) / confusion.sum(), 100 * np.mean(recall), 100 * np.mean(f1), confusion


def test_scores_a_model_on_another_corpus_through_the_default_map(iemocap_model, crema, tmp_path):
    _, model_dir = iemocap_model
    corpus, rows = crema
    result = score(load_scoring_model(model_dir), corpus, tmp_path)
    assert result["label_map"]["classes"] == ["neutral", "happy", "angry", "sad"]
    assert result["label_map"]["dropped_labels"] == ["DIS"] and result["label_map"]["renormalised"] == []
    assert result["utterances"]["listed"] == 20 and result["utterances"]["scored"] == 16
    assert result["utterances"]["dropped"] == {"DIS": 4}
    assert result["utterances"]["per_class"] == {"neutral": 4, "happy": 4, "angry": 4, "sad": 4}
    recognizer = EmotionRecognizer.from_pretrained(model_dir)
    wa, ua, f1, confusion = by_hand(recognizer, corpus.root, rows, COMMON, CREMA, ["neutral", "happy", "angry", "sad"])
    assert result["metrics"]["confusion"] == confusion.tolist()
    assert (result["wa"], result["ua"], result["macro_f1"]) == pytest.approx((wa, ua, f1))
    assert result["leakage_check"]["checked"] and result["model"]["corpus"] == "IEMOCAP"
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    assert "dropped (label without a counterpart): DIS 4" in (tmp_path / "score.md").read_text()


def test_a_map_file_renormalises_model_classes_without_a_counterpart(iemocap_model, crema, tmp_path):
    _, model_dir = iemocap_model
    corpus, rows = crema
    map_file = tmp_path / "map.yaml"
    # The model's sad has no counterpart: its probability is removed, the other three renormalised.
    map_file.write_text("corpora:\n  IEMOCAP: {neu: neutral, hap: happy, ang: angry, sad: null}\n")
    result = score(load_scoring_model(model_dir), corpus, tmp_path / "out", label_map=read_label_map_file(map_file))
    classes = ["neutral", "happy", "angry"]
    assert result["label_map"]["renormalised"] == ["sad"] and result["renormalisation"]
    assert result["utterances"]["dropped"] == {"DIS": 4, "SAD": 4} and result["utterances"]["scored"] == 12
    model_map = {"neu": "neutral", "hap": "happy", "ang": "angry"}
    wa, ua, f1, confusion = by_hand(
        EmotionRecognizer.from_pretrained(model_dir), corpus.root, rows, model_map, CREMA, classes
    )
    assert result["metrics"]["confusion"] == confusion.tolist()
    assert (result["wa"], result["ua"], result["macro_f1"]) == pytest.approx((wa, ua, f1))
    # A pair map puts the corpus's labels straight onto the model's classes.
    map_file.write_text("pairs:\n  - {model: IEMOCAP, corpus: crema-d, map: {NEU: neu, HAP: hap, DIS: ang}}\n")
    pair = resolve_label_map(
        "IEMOCAP", ["neu", "hap", "ang", "sad"], "CREMA-D", CREMA_LABELS, read_label_map_file(map_file)
    )
    assert pair.classes == ("neu", "hap", "ang", "sad") and pair.dropped_labels == ("ANG", "SAD")


@pytest.mark.parametrize(
    "text, message",
    [
        ("corpora:\n  CREMA-D: {ANGRY: angry}\n", r"corpora.CREMA-D names 'ANGRY', not a label of CREMA-D \(NEU, HAP"),
        ("pairs:\n  - {model: IEMOCAP, corpus: CREMA-D, map: {NEU: neutral}}\n", r"names 'neutral', not a model class"),
        ("corpora:\n  CREMA-D: {DIS: null}\n", "no label of the scored corpus .* maps to a class the model has"),
        ("labels: {a: b}\n", "a label map holds 'corpora' and/or 'pairs'"),
        ("corpora: [\n", "not valid YAML"),
    ],
)
def test_bad_label_maps_are_named_errors(tmp_path, text, message):
    path = tmp_path / "map.yaml"
    path.write_text(text)
    with pytest.raises(LabelMapError, match=message) as error:
        resolve_label_map("IEMOCAP", ["neu", "hap", "ang", "sad"], "CREMA-D", CREMA_LABELS, read_label_map_file(path))
    assert str(path) in str(error.value)


def test_scoring_on_audio_the_model_learnt_from_is_refused(iemocap_model, mini_corpus, mini_meta, tmp_path):
    run, model_dir = iemocap_model
    fold_model = load_scoring_model(run)
    # The model's own fold's test list: never trained on, so scored.
    result = score(fold_model, Corpus(str(mini_corpus), str(mini_meta)), tmp_path / "own", split="test", fold="fold1")
    assert result["utterances"]["scored"] == 7 and result["leakage_check"]["by"][0] == "resolved path"
    # The same files under another root (a link): by resolved path.
    (tmp_path / "linked").symlink_to(mini_corpus)
    with pytest.raises(LeakageError, match=r"learnt from 1[0-9] of the 24 utterances .*\(same file\)"):
        score(fold_model, Corpus(str(tmp_path / "linked"), str(mini_meta)), tmp_path / "all")
    # A byte-identical copy: by audio digest, also from the exported directory (digests only).
    shutil.copytree(mini_corpus, tmp_path / "copy")
    for model in (fold_model, load_scoring_model(model_dir)):
        with pytest.raises(LeakageError, match=r"\(same audio bytes\)"):
            score(model, Corpus(str(tmp_path / "copy"), str(mini_meta)), tmp_path / "copy_score")
    assert not (tmp_path / "all" / "score.json").exists()


def test_a_model_directory_without_a_training_audio_record_is_refused_unless_allowed(
    iemocap_model, crema, tmp_path, monkeypatch
):
    import s3prl_ser.inference.export as export

    monkeypatch.setattr(export, "training_audio_record", lambda checkpoints: None)  # as a corpus gone at export
    old = export.export_run(iemocap_model[0], tmp_path / "old_model")
    corpus, _ = crema
    with pytest.raises(LeakageError, match="records no training audio .* cannot be checked for leakage"):
        score(load_scoring_model(old), corpus, tmp_path / "refused")
    result = score(load_scoring_model(old), corpus, tmp_path / "allowed", allow_unrecorded=True)
    assert result["leakage_check"] == {"checked": False} and result["utterances"]["scored"] == 16


@pytest.mark.parametrize(
    "corpus, emotions",
    [("CREMA-D", cremad.EMOTIONS), ("RAVDESS", ravdess.EMOTIONS), ("EmoDB", emodb.EMOTIONS), ("ESD", esd.EMOTIONS)]
    + [("MSP-Podcast", msp_podcast.EMOTIONS)],
)
def test_default_maps_take_each_preparers_codes_and_raw_labels(corpus, emotions):
    prepared = sorted(set(emotions.values()))
    expected = {code: COMMON.get(code) for code in prepared}
    assert default_corpus_map(corpus, prepared) == expected  # what the preparer writes
    assert default_corpus_map(corpus, list(emotions)) == {raw: COMMON.get(code) for raw, code in emotions.items()}
    assert sorted(filter(None, expected.values())) == ["angry", "happy", "neutral", "sad"]


def test_score_command(iemocap_model, crema, tmp_path, capsys):
    from s3prl_ser.cli.score import main

    corpus, _ = crema
    main([str(iemocap_model[1]), "--root", corpus.root, "--meta-data", corpus.meta_data, "-o", str(tmp_path), "-q"])
    assert "| 16 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "score.json").read_text())["utterances"]["scored"] == 16
    cv_dir = str(iemocap_model[0].parent)
    with pytest.raises(
        SystemExit, match=r"error: .* is a cross-validation directory \(folds fold1\): choose one with --fold"
    ):
        main([cv_dir, "--root", corpus.root, "--meta-data", corpus.meta_data, "-o", str(tmp_path)])
    with pytest.raises(SystemExit, match="error: .*is a model directory: it has no folds"):
        main(
            [
                str(iemocap_model[1]),
                "--fold",
                "fold1",
                "--root",
                corpus.root,
                "--meta-data",
                corpus.meta_data,
                "-o",
                str(tmp_path),
            ]
        )


def test_a_pool_trains_on_every_members_training_lists_and_never_on_a_test_list(
    mini_corpus, mini_meta, crema, tmp_path
):
    from s3prl_ser.data.full_data_pool import read_full_data_pool

    corpus, rows = crema
    members = [MatrixCorpus("iemocap", Corpus(str(mini_corpus), str(mini_meta))), MatrixCorpus("crema", corpus)]
    pooled = pool_corpora(tmp_path, members, ["fold1", "fold2"])
    manifest = read_manifest(pooled.meta_data)
    assert manifest.labels == ["neutral", "happy", "angry", "sad"] and manifest.official_test is None
    assert len(manifest.utterances) == 24 + 16  # every IEMOCAP utterance, CREMA-D's without DIS
    fold1 = read_fold_lists(pooled.meta_data, "fold1", pooled.root)
    assert len(fold1.test.items) == 7 + 4  # IEMOCAP's Session 1, CREMA-D's speaker 4 (DIS left out)
    assert len(fold1.train.items) == 17 + 12
    row = manifest.rows(["crema/spk4/4_HAP_1.wav"])[0]
    assert row["label"] == "happy" and row["speaker"] == "crema/spk4"
    assert os.path.samefile(os.path.join(pooled.root, row["path"]), os.path.join(corpus.root, "spk4/4_HAP_1.wav"))
    # A member with an official test set: the pool's deployment pool leaves every test list out.
    official = Manifest("CREMA-D", CREMA_LABELS, rows, {"fold1": read_manifest(corpus.meta_data).folds["fold1"]})
    official.official_test = "test"
    official.write(tmp_path / "official_meta")
    members[1] = MatrixCorpus("crema", Corpus(corpus.root, str(tmp_path / "official_meta")))
    pooled = pool_corpora(tmp_path / "with_official", members, ["fold1"])
    assert read_manifest(pooled.meta_data).official_test == "crema: test"
    assert len(read_full_data_pool(pooled.meta_data, pooled.root).train.items) == 17 + 12
    with pytest.raises(ConfigError, match="crema has no fold2 to pool"):
        pool_corpora(tmp_path / "bad", members, ["fold1", "fold2"])


def test_matrix_killed_once_resumes_and_reuses_what_finished(mini_corpus, mini_meta, crema, tmp_path, one_thread):
    from s3prl_ser.cli.cross_corpus import main

    corpus, _ = crema
    argv = [
        "-p", str(tmp_path),
        "--corpus", f"iemocap={mini_corpus},{mini_meta}",
        "--corpus", f"crema={corpus.root},{corpus.meta_data}",
        "--pool", "both=iemocap,crema",
        "--folds", "fold1",
        "-u", "fbank", "-d", "emotion_ecapa", "--device", "cpu",
        "-o", overrides(None, None, steps=4, every=2),
    ]  # fmt: skip
    # 6 trainings of 4 updates: fold1 and the deployment run of iemocap, crema, and the pool of both.
    status = kill_at.wait(kill_at.fork_run("update", "10", "cross_corpus", argv))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert (tmp_path / "iemocap" / "deploy" / "final.json").is_file() and not (
        tmp_path / "crema" / "fold1" / "final.json"
    ).exists()
    assert not (tmp_path / "matrix.json").exists()
    finished = (tmp_path / "iemocap" / "deploy" / "final.json").stat().st_mtime_ns

    main(argv)
    matrix = json.loads((tmp_path / "matrix.json").read_text())
    assert (tmp_path / "iemocap" / "deploy" / "final.json").stat().st_mtime_ns == finished  # reused, not retrained
    cells = matrix["cells"]
    for name in ("iemocap", "crema"):
        cv = json.loads((tmp_path / name / "results.json").read_text())
        assert cells[name][name]["in_corpus"] and cells[name][name]["ua"] == pytest.approx(cv["ua"]["mean"])
    for a, b in (("iemocap", "crema"), ("crema", "iemocap")):
        cell = json.loads((tmp_path / "cells" / f"{a}_on_{b}" / "score.json").read_text())
        assert cells[a][b]["ua"] == cell["ua"] and cell["model"]["kind"] == "run"
        assert cell["model"]["source"].endswith(f"{a}/deploy")
    assert cells["iemocap"]["crema"]["dropped"] == {"DIS": 4} and cells["iemocap"]["crema"]["scored"] == 16
    # The crema model's DIS has no IEMOCAP counterpart: renormalised away; all 24 IEMOCAP utterances scored.
    assert cells["crema"]["iemocap"]["classes"] == ["neutral", "happy", "angry", "sad"]
    assert cells["crema"]["iemocap"]["scored"] == 24
    pool = json.loads((tmp_path / "both" / "results.json").read_text())
    assert pool["labels"] == ["neutral", "happy", "angry", "sad"] and pool["folds"]["fold1"]["num_utterances"] == 11
    assert matrix["pools"]["both"]["cross_validation"]["ua"] == pytest.approx(pool["ua"]["mean"])
    assert cells["both"]["iemocap"]["in_pool"] and cells["both"]["crema"]["ua"] is None
    assert not (tmp_path / "cells" / "both_on_iemocap").exists()  # it learnt from all of both
    assert "| both (pool: iemocap + crema) | in pool | in pool |" in (tmp_path / "matrix.md").read_text()
    assert (tmp_path / "matrix.png").stat().st_size > 1000
    assert "| iemocap | *" in (tmp_path / "matrix.md").read_text()

    scored = (tmp_path / "cells" / "crema_on_iemocap" / "score.json").stat().st_mtime_ns
    main(argv)  # everything finished: nothing trained or scored again
    assert (tmp_path / "cells" / "crema_on_iemocap" / "score.json").stat().st_mtime_ns == scored
