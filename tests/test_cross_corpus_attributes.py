"""Cross-corpus scoring of continuous attributes: CCC, Pearson r and RMSE on the scored corpus's own
scale (a 1-5 model mapped onto a 1-7 corpus) against a hand computation from the recognizer's own
outputs, utterances without a category counted for the attributes only, attributes on one side
listed as not scored, models of attributes only, and the matrix's CCC cells."""

import json
import os

import numpy as np
import pytest
import soundfile

from helpers import ATTRIBUTES, overrides, rated_meta, tiny_attribute_model
from s3prl_ser.config import ConfigError
from s3prl_ser.data.emotion_dataset import read_fold_lists
from s3prl_ser.data.manifest import Manifest, ManifestFold
from s3prl_ser.experiments.cross_corpus import Corpus, load_scoring_model, score
from s3prl_ser.inference import EmotionRecognizer

NO_CATEGORY = 2  # the rated 1-7 corpus's first two utterances have attributes but no category


def seven(value):
    """A 1-5 value by hand on the 1-7 scale (the ends to the ends)."""
    return None if value is None else 1 + (value - 1) * 6 / 4


@pytest.fixture(scope="module")
def models(mini_corpus, tmp_path_factory, one_thread):
    """Multi-task and attributes-only fbank + tiny ECAPA-TDNN, 4 steps on the rated mini corpus's fold1 (1-5)."""
    meta = rated_meta(mini_corpus, tmp_path_factory.mktemp("rated_meta"))
    root = tmp_path_factory.mktemp("attribute_models")
    both = tiny_attribute_model(mini_corpus, meta, root, "fold1")
    only = tiny_attribute_model(mini_corpus, meta, root / "only", "fold1", categories=False)
    return {"meta": meta, "both": both, "only": only}


def corpus_of(models, mini_corpus, out, scale, values):
    """A manifest over fold1's test audio (never trained on) with ``values(item)`` as attributes on
    ``scale``; the first :data:`NO_CATEGORY` rows without a category (label null)."""
    items = read_fold_lists(models["meta"], "fold1", mini_corpus).test.items
    rows = [
        {
            "id": f"u{i}",
            "path": item["path"],
            "label": None if i < NO_CATEGORY else item["label"],
            "speaker": f"s{i % 2}",
            "attributes": values(item),
        }
        for i, item in enumerate(items)
    ]
    ids = [row["id"] for row in rows]
    folds = {"fold1": ManifestFold(tuple(ids[:4]), tuple(ids[4:]))}
    Manifest("Rated7", ["neu", "hap", "ang", "sad"], rows, folds, attribute_scale=scale).write(out)
    return Corpus(str(mini_corpus), str(out)), rows


@pytest.fixture(scope="module")
def rated7(models, mini_corpus, tmp_path_factory):
    """The 1-7 corpus: the rated mini corpus's values mapped by hand onto 1-7."""
    scale = {name: (1.0, 7.0) for name in ATTRIBUTES}
    return corpus_of(
        models,
        mini_corpus,
        tmp_path_factory.mktemp("rated7"),
        scale,
        lambda item: {name: seven(item["attributes"][name]) for name in ATTRIBUTES},
    )


def by_hand(model_dir, root, rows):
    """Per attribute: CCC, Pearson r, RMSE and n over the rows that know it, the recognizer's 1-5
    predictions mapped onto 1-7 here."""
    recognizer = EmotionRecognizer.from_pretrained(model_dir)
    predictions = recognizer.predict_batch([os.path.join(root, row["path"]) for row in rows], batch_size=None)
    expected = {}
    for name in ATTRIBUTES:
        pairs = [
            (row["attributes"][name], seven(p.attributes[name]))
            for row, p in zip(rows, predictions)
            if row["attributes"][name] is not None
        ]
        t, p = np.array(pairs).T
        covariance = np.mean((t - t.mean()) * (p - p.mean()))
        ccc = 2 * covariance / (t.var() + p.var() + (t.mean() - p.mean()) ** 2)
        expected[name] = {
            "ccc": ccc,
            "pearson": covariance / (t.std() * p.std()),
            "rmse": np.sqrt(np.mean((t - p) ** 2)),
            "n": len(pairs),
        }
    return expected


@pytest.mark.parametrize("kind", ["both", "only"])
def test_ccc_on_another_scale_equals_a_hand_computation(models, rated7, kind, tmp_path):
    corpus, rows = rated7
    result = score(load_scoring_model(models[kind]), corpus, tmp_path)
    attributes = result["attributes"]
    assert attributes["scored"] == list(ATTRIBUTES) and attributes["not_scored"] == {}
    assert attributes["rescaled"] == list(ATTRIBUTES) and attributes["rescaling"]
    assert attributes["model_scale"]["arousal"] == [1.0, 5.0] and attributes["scale"]["arousal"] == [1.0, 7.0]
    expected = by_hand(models[kind], corpus.root, rows)
    for name in ATTRIBUTES:
        got = attributes["metrics"][name]
        assert got["n"] == expected[name]["n"]
        assert [got[m] for m in ("ccc", "pearson", "rmse")] == pytest.approx(
            [expected[name][m] for m in ("ccc", "pearson", "rmse")], abs=1e-5
        )
    assert result["ccc_mean"] == pytest.approx(np.mean([expected[n]["ccc"] for n in ATTRIBUTES]), abs=1e-5)
    # Utterances without a category count for the attributes (all 7), not for the categories.
    assert attributes["utterances"] == len(rows) == 7 and attributes["without_category"] == NO_CATEGORY
    assert expected["arousal"]["n"] == 7 and expected["dominance"]["n"] < 7  # a dialog's first turn: unknown
    assert result["utterances"]["scored"] == 7
    for name in ATTRIBUTES:
        assert (tmp_path / f"scatter_{name}.png").stat().st_size > 1000
    text = (tmp_path / "score.md").read_text()
    assert "Rescaled: arousal 1-5 -> 1-7, valence 1-5 -> 1-7, dominance 1-5 -> 1-7" in text
    assert json.loads((tmp_path / "score.json").read_text())["ccc_mean"] == pytest.approx(result["ccc_mean"])
    if kind == "both":
        assert result["utterances"]["dropped"] == {"(no category)": NO_CATEGORY}
        assert sum(result["utterances"]["per_class"].values()) == 7 - NO_CATEGORY
        assert np.sum(result["metrics"]["confusion"]) == 7 - NO_CATEGORY and result["categories_skipped"] is None
        assert "for the categories only" in text and (tmp_path / "confusion.png").is_file()
    else:
        assert result["wa"] is None and result["metrics"] is None and result["label_map"] is None
        assert "Categories: the model predicts attributes only" in text and not (tmp_path / "confusion.png").exists()


def test_attributes_on_one_side_only_are_listed_as_not_scored(models, mini_corpus, tmp_path):
    def pleasure(item):
        return {"pleasure": item["attributes"]["valence"] / 5, "arousal": item["attributes"]["arousal"]}

    scale = {"pleasure": (0.0, 1.0), "arousal": (1.0, 5.0)}
    corpus, _ = corpus_of(models, mini_corpus, tmp_path / "meta", scale, pleasure)
    result = score(load_scoring_model(models["both"]), corpus, tmp_path / "some")
    attributes = result["attributes"]
    assert attributes["scored"] == ["arousal"] and attributes["rescaled"] == [] and attributes["rescaling"] is None
    assert attributes["not_scored"] == {
        "valence": "the corpus carries no values of it",
        "dominance": "the corpus carries no values of it",
        "pleasure": "the model does not predict it",
    }
    assert list(attributes["metrics"]) == ["arousal"] and result["ccc_mean"] == attributes["metrics"]["arousal"]["ccc"]
    assert "Not scored: valence (the corpus carries no values of it)" in (tmp_path / "some" / "score.md").read_text()
    # Disjoint: nothing scored as attributes; the categories still are.
    scale = {"pleasure": (0.0, 1.0)}
    corpus, _ = corpus_of(models, mini_corpus, tmp_path / "disjoint_meta", scale, lambda i: {"pleasure": 0.5})
    result = score(load_scoring_model(models["both"]), corpus, tmp_path / "disjoint")
    assert result["attributes"]["scored"] == [] and result["ccc_mean"] is None
    assert sorted(result["attributes"]["not_scored"]) == ["arousal", "dominance", "pleasure", "valence"]
    assert result["ua"] is not None and result["utterances"]["scored"] == 7 - NO_CATEGORY
    assert not list((tmp_path / "disjoint").glob("scatter_*.png"))
    with pytest.raises(ConfigError, match=r"predicts attributes only .* carries none of them \(it carries: pleasure\)"):
        score(load_scoring_model(models["only"]), corpus, tmp_path / "nothing")


def test_matrix_cells_carry_the_mean_ccc(models, mini_corpus, tmp_path, one_thread):
    """Two corpora with attributes on different scales (the rated mini corpus, 1-5; noise clips, 1-7):
    in-corpus cells from the cross-validation's attribute summary, cross-corpus ones from the scores."""
    from s3prl_ser.cli.cross_corpus import main

    root, rng, rows = tmp_path / "noise", np.random.default_rng(5), []
    for i in range(12):
        level = 0.02 + 0.02 * i
        root.mkdir(exist_ok=True)
        soundfile.write(root / f"n{i}.wav", level * rng.standard_normal(4000).astype("float32"), 16000)
        attributes = {"arousal": 1 + i / 2, "valence": 1 + (i % 4) * 2, "dominance": 2.0 + i % 3}
        rows.append(
            {"id": f"n{i}", "path": f"n{i}.wav", "label": "neu", "speaker": f"s{i % 3}", "attributes": attributes}
        )
    folds = {"fold1": ManifestFold(tuple(f"n{i}" for i in range(12) if i % 3), tuple(f"n{i}" for i in range(0, 12, 3)))}
    scale = {name: (1.0, 7.0) for name in ATTRIBUTES}
    Manifest("Noise", ["neu"], rows, folds, attribute_scale=scale).write(tmp_path / "noise_meta")
    targets = "config.downstream_expert.targets.attributes=[arousal, valence, dominance],,"
    targets += "config.downstream_expert.targets.categories=false"
    argv = [
        "-p", str(tmp_path / "matrix"),
        "--corpus", f"rated={mini_corpus},{models['meta']}",
        "--corpus", f"noise={root},{tmp_path / 'noise_meta'}",
        "--folds", "fold1", "--model", "fold1",
        "-u", "fbank", "-d", "emotion_ecapa", "--device", "cpu",
        "-o", overrides(None, None, steps=4, every=2, extra=targets),
    ]  # fmt: skip
    main(argv)
    matrix = json.loads((tmp_path / "matrix" / "matrix.json").read_text())
    assert matrix["metric"] == "ccc_mean"  # attributes only: no UA to draw
    cells = matrix["cells"]
    for name in ("rated", "noise"):
        cv = json.loads((tmp_path / "matrix" / name / "results.json").read_text())
        assert cells[name][name]["ccc_mean"] == pytest.approx(cv["attributes"]["ccc_mean"]["mean"])
        assert cells[name][name]["ua"] is None and cells[name][name]["attributes"] == list(ATTRIBUTES)
    for a, b in (("rated", "noise"), ("noise", "rated")):
        cell = json.loads((tmp_path / "matrix" / "cells" / f"{a}_on_{b}" / "score.json").read_text())
        assert cells[a][b]["ccc_mean"] == cell["ccc_mean"] and cell["attributes"]["rescaled"] == list(ATTRIBUTES)
    text = (tmp_path / "matrix" / "matrix.md").read_text()
    assert "## CCC, mean over attributes" in text and "## UA (%)" not in text
    assert (
        f"| rated | *{cells['rated']['rated']['ccc_mean']:.3f}* | {cells['rated']['noise']['ccc_mean']:.3f} |" in text
    )
    assert (tmp_path / "matrix" / "matrix.png").stat().st_size > 1000
