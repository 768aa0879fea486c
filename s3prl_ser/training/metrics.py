"""Classification metrics of the SER literature: WA, UA, per-class recall, confusion matrix.

* WA (weighted accuracy) = overall accuracy = correct / total; SUPERB's "ER acc".
* UA (unweighted accuracy) = mean over classes of per-class recall. A class with no
  reference utterances has an undefined recall (NaN) and is left out of the mean.
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
    """Metrics of one evaluation; ``labels[i]`` names row/column ``i`` of ``confusion``."""

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

    def to_dict(self) -> dict:
        return {
            "wa": self.wa,
            "ua": self.ua,
            "num_utterances": self.num_utterances,
            "recall": self.recall,
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
