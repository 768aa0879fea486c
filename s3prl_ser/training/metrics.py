"""Classification metrics of the SER literature: WA, UA, per-class recall, confusion matrix.

* WA (weighted accuracy) = overall accuracy = correct / total; SUPERB's "ER acc".
* UA (unweighted accuracy) = mean over classes of per-class recall. A class with no
  reference utterances has an undefined recall (NaN) and is left out of the mean, so UA is
  over the classes present in the test set, as scikit-learn's ``balanced_accuracy_score``.
* Macro-F1 (what EmoBox reports besides WA and UA) = mean over classes of F1 = 2PR / (P + R),
  over the classes present in the references or the predictions; a class's F1 is 0 when it
  has no correct prediction (as scikit-learn's ``f1_score(average="macro")``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["confusion_matrix", "ClassificationReport", "classification_report"]


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
