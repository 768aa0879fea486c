"""CCC, Pearson r and RMSE of the attribute reports against hand computations."""

import math
import warnings

import numpy as np
import pytest

from s3prl_ser.training.metrics import concordance_correlation, regression_report

TRUTH = [1.0, 2.0, 3.0, 4.0]
PRED = [2.0, 2.0, 4.0, 5.0]
# Population (divide-by-n) moments: means 2.5 and 3.25, variances 5/4 and 27/16, covariance
# 11/8. CCC = 2 (11/8) / (5/4 + 27/16 + (3/4)^2) = 11/14; Pearson = (11/8) / sqrt(5/4 * 27/16);
# the errors are 1, 0, 1, 1 so RMSE = sqrt(3/4).
CCC = 11 / 14
PEARSON = (11 / 8) / math.sqrt(5 / 4 * 27 / 16)
RMSE = math.sqrt(3 / 4)


def test_concordance_correlation_hand_computed():
    assert concordance_correlation(PRED, TRUTH) == pytest.approx(CCC)
    assert concordance_correlation(TRUTH, PRED) == pytest.approx(CCC)  # symmetric
    assert concordance_correlation(TRUTH, TRUTH) == 1.0
    assert concordance_correlation(TRUTH, [-t for t in TRUTH]) == pytest.approx(-(5 / 2) / (5 / 2 + 5**2))  # -1/11
    # a perfectly correlated but shifted prediction: Pearson 1, CCC < 1
    assert concordance_correlation(TRUTH, [t + 1 for t in TRUTH]) == pytest.approx(2.5 / (2.5 + 1))
    assert math.isnan(concordance_correlation([1.0], [2.0]))
    assert math.isnan(concordance_correlation([2.0, 2.0], [2.0, 2.0]))
    with pytest.raises(ValueError, match="1-d arrays of one length"):
        concordance_correlation([1.0, 2.0], [1.0])


def test_regression_report_hand_computed():
    report = regression_report(np.array([TRUTH]).T, np.array([PRED]).T, ["arousal"])
    assert report.ccc["arousal"] == pytest.approx(CCC)
    assert report.pearson["arousal"] == pytest.approx(PEARSON)
    assert report.pearson["arousal"] == pytest.approx(np.corrcoef(PRED, TRUTH)[0, 1])
    assert report.rmse["arousal"] == pytest.approx(RMSE)
    assert report.n == {"arousal": 4}
    assert report.ccc_mean == pytest.approx(CCC)


def test_unknown_values_are_left_out_per_attribute():
    # valence known on the 4 rows of the hand case; arousal only on rows 0-2, whose
    # 4th prediction (99) would spoil every metric if counted.
    truth = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [np.nan, 4.0]])
    predicted = np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 4.0], [99.0, 5.0]])
    report = regression_report(truth, predicted, ["arousal", "valence"])
    assert report.n == {"arousal": 3, "valence": 4}
    assert report.ccc == pytest.approx({"arousal": 1.0, "valence": CCC})
    assert report.rmse == pytest.approx({"arousal": 0.0, "valence": RMSE})
    assert report.ccc_mean == pytest.approx((1 + CCC) / 2)
    assert report.to_dict() == {
        "attributes": {
            "arousal": {"ccc": pytest.approx(1.0), "pearson": pytest.approx(1.0), "rmse": 0.0, "n": 3},
            "valence": {
                "ccc": pytest.approx(CCC),
                "pearson": pytest.approx(PEARSON),
                "rmse": pytest.approx(RMSE),
                "n": 4,
            },
        },
        "ccc_mean": pytest.approx((1 + CCC) / 2),
    }


def test_attribute_with_too_few_values_is_nan_and_left_out_of_the_mean():
    truth = np.array([[1.0, np.nan], [2.0, 3.0], [3.0, np.nan]])
    report = regression_report(truth, np.nan_to_num(truth, nan=7.0), ["arousal", "dominance"])
    assert math.isnan(report.ccc["dominance"]) and math.isnan(report.pearson["dominance"])
    assert report.n["dominance"] == 1 and report.rmse["dominance"] == 0.0
    assert report.ccc_mean == 1.0


def test_regression_report_errors():
    with pytest.raises(ValueError, match="2 attributes"):
        regression_report([[1.0], [2.0]], [[1.0], [2.0]], ["arousal", "valence"])
    with pytest.raises(ValueError, match="finite"):
        regression_report([[1.0], [2.0]], [[1.0], [np.nan]], ["arousal"])
    with pytest.raises(ValueError, match="empty"):
        regression_report(np.zeros((0, 1)), np.zeros((0, 1)), ["arousal"])


def test_an_attribute_without_known_values_is_nan_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" would be one
        report = regression_report([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan]], [[1, 2], [2, 3], [3, 1]], ["a", "v"])
    values = report.to_dict()["attributes"]["v"]
    assert values["n"] == 0 and all(np.isnan(values[key]) for key in ("ccc", "pearson", "rmse"))
    assert report.ccc_mean == 1.0  # the mean over the defined CCCs only
