import json

import numpy as np
import pytest

from s3prl_ser.training.cv_report import summarize, summarize_seeds, write_report, write_seed_report
from s3prl_ser.training.metrics import classification_report

LABELS = ["neu", "hap", "ang", "sad"]


def _fold(truth, pred):
    return classification_report(truth, pred, LABELS).to_dict()


def test_summary_against_hand_computation(tmp_path):
    folds = {
        "fold1": _fold(["neu", "hap", "ang", "sad"], ["neu", "hap", "ang", "neu"]),  # WA .75, UA .75
        "fold2": _fold(["neu", "neu", "ang", "sad"], ["neu", "hap", "hap", "sad"]),  # WA .5, UA (.5+0+1)/3
    }
    summary = summarize(folds)
    assert summary["wa"]["mean"] == pytest.approx(62.5)
    assert summary["wa"]["std"] == pytest.approx(np.std([75, 50], ddof=1))
    assert summary["ua"]["mean"] == pytest.approx((75 + 50) / 2)
    assert summary["recall"]["hap"] == pytest.approx(100.0)  # fold2 has no hap reference: ignored
    assert summary["recall"]["sad"] == pytest.approx(50.0)
    assert np.array_equal(summary["confusion"], [[2, 1, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1]])
    assert summary["pooled"]["wa"] == pytest.approx(5 / 8 * 100)
    assert summary["pooled"]["ua"] == pytest.approx((2 / 3 + 1 + 1 / 2 + 1 / 2) / 4 * 100)

    paths = write_report(summary, tmp_path, "demo")
    assert json.loads(paths["json"].read_text())["wa"]["mean"] == pytest.approx(62.5)
    md = paths["md"].read_text()
    assert "| fold1 | 4 | 75.00 | 75.00 |" in md and "62.50 ± 17.68" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_label_mismatch_refused():
    other = classification_report(["a"], ["a"], ["a", "b"]).to_dict()
    with pytest.raises(ValueError, match="uses labels"):
        summarize({"fold1": _fold(["neu"], ["neu"]), "fold2": other})
    with pytest.raises(ValueError, match="no fold results"):
        summarize({})


def test_class_absent_from_every_test_set_is_not_counted_as_zero_recall(tmp_path):
    folds = {"fold1": _fold(["neu", "hap"], ["neu", "hap"]), "fold2": _fold(["ang", "neu"], ["ang", "neu"])}
    summary = summarize(folds)
    assert summary["ua"]["mean"] == pytest.approx(100.0)
    assert summary["pooled"]["ua"] == pytest.approx(100.0)  # over neu, hap, ang; sad has no support
    assert np.isnan(summary["recall"]["sad"])
    assert "nan" in write_report(summary, tmp_path, "absent")["md"].read_text().lower()


def test_seeds_combine_the_5_fold_means(tmp_path):
    """The main job's headline: mean and sample std over seeds of each seed's fold mean."""
    runs = {
        0: summarize({"fold1": _fold(["neu", "hap"], ["neu", "hap"]), "fold2": _fold(["ang", "sad"], ["ang", "neu"])}),
        1: summarize({"fold1": _fold(["neu", "hap"], ["neu", "neu"]), "fold2": _fold(["ang", "sad"], ["ang", "sad"])}),
        2: summarize({"fold1": _fold(["neu", "hap"], ["hap", "neu"]), "fold2": _fold(["ang", "sad"], ["sad", "ang"])}),
    }
    combined = summarize_seeds(runs)
    assert [combined["seeds"][s]["wa"] for s in (0, 1, 2)] == pytest.approx([75.0, 75.0, 0.0])
    assert combined["wa"]["mean"] == pytest.approx(50.0)
    assert combined["wa"]["std"] == pytest.approx(np.std([75, 75, 0], ddof=1))
    assert combined["folds"]["fold1"]["wa"] == pytest.approx((100 + 50 + 0) / 3)
    assert np.array_equal(np.asarray(combined["confusion"]).sum(), 12)  # 3 seeds x 4 utterances
    paths = write_seed_report(combined, tmp_path, "main job")
    md = paths["md"].read_text()
    assert "| **mean ± std over 3 seeds** | **50.00 ± 43.30**" in md and "| 2 | 0.00 | 0.00 |" in md
    assert json.loads(paths["json"].read_text())["ua"]["mean"] == pytest.approx(combined["ua"]["mean"])
    assert paths["png"].stat().st_size > 0
    with pytest.raises(ValueError, match="seed 1 ran other folds"):
        summarize_seeds({0: runs[0], 1: summarize({"fold1": _fold(["neu"], ["neu"])})})


def test_one_fold_has_no_std(tmp_path):
    """The sample std of one value is undefined: null in JSON, n/a in every report, never 0.00."""
    summary = summarize({"fold1": _fold(["neu", "hap", "ang", "sad"], ["neu", "hap", "ang", "neu"])})
    assert summary["wa"] == {"mean": pytest.approx(75.0), "std": None} and summary["macro_f1"]["std"] is None
    paths = write_report(summary, tmp_path / "one", "one fold")
    md = paths["md"].read_text()
    assert "| **mean ± std** | | **75.00 ± n/a** | **75.00 ± n/a** |" in md and "± 0.00" not in md
    assert "one fold run, so its std is undefined (n/a)" in md
    assert json.loads(paths["json"].read_text())["ua"]["std"] is None
    combined = summarize_seeds({0: summary})
    md = write_seed_report(combined, tmp_path / "seeds", "one seed")["md"].read_text()
    assert "| **mean ± std over 1 seeds** | **75.00 ± n/a** |" in md
