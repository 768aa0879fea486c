"""Classification metrics of the SER literature: WA, UA, per-class recall, confusion matrix.

* WA (weighted accuracy) = overall accuracy = correct / total; SUPERB's "ER acc".
* UA (unweighted accuracy) = mean over classes of per-class recall. A class with no
  reference utterances has an undefined recall (NaN) and is left out of the mean, so UA is
  over the classes present in the test set, as scikit-learn's ``balanced_accuracy_score``.
* Macro-F1 (what EmoBox reports besides WA and UA) = mean over classes of F1 = 2PR / (P + R),
  over the classes present in the references or the predictions; a class's F1 is 0 when it
  has no correct prediction (as scikit-learn's ``f1_score(average="macro")``).

Regression metrics of continuous attributes (arousal, valence, dominance), over the
utterances whose attribute is known:

* CCC (concordance correlation coefficient, the MSP-Podcast challenge's score) =
  2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2), with population (biased,
  divide-by-n) moments as in Lin (1989) and the challenge's scorer; 1 only for x = y.
* Pearson r = cov(x, y) / (std(x) std(y)): insensitive to shifts and scales, unlike CCC.
* RMSE = sqrt(mean((x - y)^2)), on the scale the values are given on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "confusion_matrix",
    "ClassificationReport",
    "classification_report",
    "concordance_correlation",
    "RegressionReport",
    "regression_report",
]


def confusion_matrix(truth: Sequence[int], predicted: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts ``(num_classes, num_classes)``: row = reference class, column = predicted class."""
    truth = np.asarray(truth, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    if truth.shape != predicted.shape:
        raise ValueError(f"{truth.size} references but {predicted.size} predictions")
    for name, values in (("reference", truth), ("prediction", predicted)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} class ids must lie in [0, {num_classes}), got {values.tolist()}")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


@dataclass(frozen=True)
class ClassificationReport:
    """Metrics of one evaluation; ``labels[i]`` names row/column ``i`` of ``confusion``.

    Example:
        >>> r = classification_report(["a", "a", "b"], ["a", "b", "b"], ["a", "b"])
        >>> round(r.wa, 3), r.ua, r.f1, round(r.macro_f1, 3)
        (0.667, 0.75, {'a': 0.6666666666666666, 'b': 0.6666666666666666}, 0.667)
    """

    labels: tuple[str, ...]
    confusion: np.ndarray

    @property
    def num_utterances(self) -> int:
        return int(self.confusion.sum())

    @property
    def wa(self) -> float:
        """Weighted accuracy (overall accuracy), in [0, 1]."""
        return float(np.trace(self.confusion) / self.confusion.sum())

    @property
    def recall(self) -> dict[str, float]:
        """Per-class recall; NaN for a class absent from the references."""
        support = self.confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.diag(self.confusion) / support
        return {label: float(value) for label, value in zip(self.labels, values)}

    @property
    def ua(self) -> float:
        """Unweighted accuracy: mean recall over the classes present in the references."""
        return float(np.nanmean(list(self.recall.values())))

    @property
    def f1(self) -> dict[str, float]:
        """Per-class F1; NaN for a class neither referenced nor predicted, 0 without a hit."""
        hits = np.diag(self.confusion).astype(float)
        support, predicted = self.confusion.sum(axis=1), self.confusion.sum(axis=0)
        # F1 = 2TP / (2TP + FP + FN) = 2 * hits / (support + predicted): no division by zero
        # unless the class appears nowhere.
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(support + predicted > 0, 2 * hits / (support + predicted), np.nan)
        return {label: float(value) for label, value in zip(self.labels, values)}

    @property
    def macro_f1(self) -> float:
        """Mean F1 over the classes present in the references or the predictions."""
        return float(np.nanmean(list(self.f1.values())))

    def to_dict(self) -> dict:
        return {
            "wa": self.wa,
            "ua": self.ua,
            "macro_f1": self.macro_f1,
            "num_utterances": self.num_utterances,
            "recall": self.recall,
            "f1": self.f1,
            "labels": list(self.labels),
            "confusion": self.confusion.tolist(),
        }


def classification_report(
    truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
) -> ClassificationReport:
    """Report from label strings; ``labels`` fixes the class order (e.g. neu, hap, ang, sad)."""
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted((set(truth) | set(predicted)) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {list(labels)}")
    if len(truth) == 0:
        raise ValueError("cannot score an empty evaluation set")
    matrix = confusion_matrix([index[t] for t in truth], [index[p] for p in predicted], len(labels))
    return ClassificationReport(tuple(labels), matrix)


def _pair(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two 1-d arrays of one length, got shapes {x.shape} and {y.shape}")
    return x, y


def concordance_correlation(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Lin's CCC of two ``(N,)`` arrays, population moments; NaN with fewer than 2 values or
    when both are one and the same constant (0 / 0).

    Example:
        >>> concordance_correlation([1, 2, 3], [1, 2, 3]), concordance_correlation([1, 2, 3], [3, 4, 5])
        (1.0, 0.25)
    """
    x, y = _pair(x, y)
    if x.size < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denominator = (dx * dx).mean() + (dy * dy).mean() + (x.mean() - y.mean()) ** 2
    return float(2 * (dx * dy).mean() / denominator) if denominator > 0 else float("nan")


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2:  # undefined; and x.mean() of no value would warn
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    scale = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / scale) if x.size >= 2 and scale > 0 else float("nan")


@dataclass(frozen=True)
class RegressionReport:
    """Metrics of one evaluation of continuous attributes: ``truth`` and ``predicted`` are
    ``(N, A)`` with column ``a`` named ``names[a]``; NaN in ``truth`` = unknown (left out of
    that attribute's metrics).

    Example:
        >>> truth = [[1.0, 2.0], [2.0, np.nan], [3.0, 4.0]]  # valence unknown for the second
        >>> r = regression_report(truth, [[1.0, 2.0], [2.0, 9.0], [3.0, 5.0]], ["arousal", "valence"])
        >>> r.n, r.ccc["arousal"], round(r.ccc["valence"], 4), round(r.ccc_mean, 4)  # 3 / 3.5 = 6/7
        ({'arousal': 3, 'valence': 2}, 1.0, 0.8571, 0.9286)
    """

    names: tuple[str, ...]
    truth: np.ndarray
    predicted: np.ndarray

    def _columns(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        known = ~np.isnan(self.truth)
        return [(name, self.truth[known[:, a], a], self.predicted[known[:, a], a]) for a, name in enumerate(self.names)]

    @property
    def n(self) -> dict[str, int]:
        """Utterances whose attribute is known."""
        return {name: int(t.size) for name, t, _ in self._columns()}

    @property
    def ccc(self) -> dict[str, float]:
        """Per-attribute CCC (:func:`concordance_correlation`, arguments: prediction, truth)."""
        return {name: concordance_correlation(p, t) for name, t, p in self._columns()}

    @property
    def pearson(self) -> dict[str, float]:
        """Per-attribute Pearson r; NaN with fewer than 2 values or a constant side."""
        return {name: _pearson(p, t) for name, t, p in self._columns()}

    @property
    def rmse(self) -> dict[str, float]:
        """Per-attribute root mean squared error; NaN with no known value."""
        return {
            name: float(np.sqrt(np.mean((p - t) ** 2))) if t.size else float("nan") for name, t, p in self._columns()
        }

    @property
    def ccc_mean(self) -> float:
        """Mean CCC over the attributes whose CCC is defined (NaN if none is)."""
        values = [value for value in self.ccc.values() if not np.isnan(value)]
        return float(np.mean(values)) if values else float("nan")

    def to_dict(self) -> dict:
        ccc, pearson, rmse, n = self.ccc, self.pearson, self.rmse, self.n
        return {
            "attributes": {
                name: {"ccc": ccc[name], "pearson": pearson[name], "rmse": rmse[name], "n": n[name]}
                for name in self.names
            },
            "ccc_mean": self.ccc_mean,
        }


def regression_report(
    truth: Sequence[Sequence[float]] | np.ndarray,
    predicted: Sequence[Sequence[float]] | np.ndarray,
    names: Sequence[str],
) -> RegressionReport:
    """Report of ``(N, A)`` true and predicted values (NaN in ``truth`` = unknown), on the
    scale the RMSE should be given on (the corpus's own)."""
    truth, predicted = np.asarray(truth, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if truth.ndim != 2 or truth.shape != predicted.shape or truth.shape[1] != len(names):
        raise ValueError(
            f"need (utterances, {len(names)} attributes) truth and predictions, got {truth.shape} and {predicted.shape}"
        )
    if len(truth) == 0:
        raise ValueError("cannot score an empty evaluation set")
    if not np.isfinite(predicted).all():
        raise ValueError("predictions must be finite numbers (NaN marks an unknown value only in the truth)")
    if np.isinf(truth).any():
        raise ValueError("true attribute values must be finite numbers or NaN (unknown)")
    return RegressionReport(tuple(names), truth, predicted)
