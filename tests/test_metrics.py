import math

import numpy as np
import pytest

from s3prl_ser.training.metrics import classification_report, confusion_matrix

LABELS = ("neu", "hap", "ang", "sad")


def test_hand_computed_case():
    truth = ["neu", "neu", "neu", "hap", "hap", "ang", "sad", "sad", "sad", "sad"]
    pred = ["neu", "hap", "neu", "hap", "neu", "ang", "sad", "neu", "sad", "sad"]
    report = classification_report(truth, pred, LABELS)
    # correct: neu 2/3, hap 1/2, ang 1/1, sad 3/4 -> 7/10
    assert report.wa == pytest.approx(0.7)
    assert report.recall == pytest.approx({"neu": 2 / 3, "hap": 0.5, "ang": 1.0, "sad": 0.75})
    assert report.ua == pytest.approx((2 / 3 + 0.5 + 1.0 + 0.75) / 4)
    assert report.confusion.tolist() == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 3]]


def test_class_never_predicted_counts_as_zero_recall():
    truth = ["neu", "hap", "ang", "sad"]
    pred = ["neu", "neu", "ang", "sad"]  # hap never predicted
    report = classification_report(truth, pred, LABELS)
    assert report.recall["hap"] == 0.0
    assert report.wa == pytest.approx(0.75)
    assert report.ua == pytest.approx(0.75)


def test_class_absent_from_references_is_left_out_of_ua():
    truth = ["neu", "neu", "ang", "sad"]  # no hap reference
    pred = ["neu", "hap", "ang", "ang"]
    report = classification_report(truth, pred, LABELS)
    assert math.isnan(report.recall["hap"])
    assert report.ua == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert report.to_dict()["num_utterances"] == 4


def test_single_class_predictor_on_balanced_set_is_chance():
    truth = [label for label in LABELS for _ in range(5)]
    report = classification_report(truth, ["neu"] * len(truth), LABELS)
    assert report.wa == pytest.approx(0.25) and report.ua == pytest.approx(0.25)


def test_errors():
    with pytest.raises(ValueError, match=r"\['joy'\] are not among"):
        classification_report(["joy"], ["neu"], LABELS)
    with pytest.raises(ValueError, match="empty"):
        classification_report([], [], LABELS)
    with pytest.raises(ValueError, match="2 references but 1 predictions"):
        confusion_matrix([0, 1], [0], 4)
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        confusion_matrix([0, 4], [0, 0], 4)


def test_confusion_matrix_counts():
    assert np.array_equal(confusion_matrix([0, 0, 2], [0, 2, 2], 3), [[1, 0, 1], [0, 0, 0], [0, 0, 1]])


def test_ua_is_sklearns_balanced_accuracy_over_the_classes_in_the_references():
    """What the README states: a class absent from the test set's references is left out of UA."""
    metrics = pytest.importorskip("sklearn.metrics")
    truth = ["neu", "neu", "ang", "sad", "sad", "sad"]  # no hap reference; hap is predicted once
    pred = ["neu", "hap", "ang", "ang", "sad", "sad"]
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        expected = metrics.balanced_accuracy_score(truth, pred)
    assert (
        classification_report(truth, pred, LABELS).ua == pytest.approx(expected) == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    )
