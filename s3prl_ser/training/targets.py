"""What a run learns (:class:`TargetSpec`: categories, attributes, or both) and how its
cross-entropy treats imbalanced classes (:class:`LossSpec`).

The config sections ``targets`` and ``loss`` of ``downstream/emotion_ecapa/config.yaml`` (and stage 1's)
are read into these frozen values once; checkpoints, ``final.json``, the metrics files, exports and the
model card record :meth:`TargetSpec.to_dict`, so a run's outputs say what its model predicts.

* **categories**: a class head trained with cross-entropy (the paper's task).
* **attributes**: continuous labels (arousal, valence, dominance by default), normalised to [0, 1] on the
  corpus's declared scale, one linear output each, trained with ``attribute_loss``: ``ccc`` (the sum over
  attributes of 1 - CCC over the batch, the MSP-Podcast challenge baseline) or ``mse``.
* **both** (multi-task): one shared embedding; loss = cross-entropy + ``attribute_weight`` * attribute loss.

The dev metric that picks and averages checkpoints (:attr:`TargetSpec.selection_metric`) is
``selection`` when set, else ``wa`` with categories (the paper's dev accuracy) and ``ccc_mean`` without.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from s3prl_ser.config import ConfigError, check_keys

__all__ = ["ATTRIBUTE_LOSSES", "CATEGORY_METRICS", "TargetSpec", "LossSpec", "expert_targets"]

ATTRIBUTE_LOSSES = ("ccc", "mse")
CATEGORY_METRICS = ("wa", "ua", "macro_f1")  # dev metrics of the class head, higher is better
TARGET_KEYS = ("categories", "attributes", "attribute_loss", "attribute_weight", "selection")
LOSS_KEYS = ("class_weights", "focal_gamma", "balanced_sampler")


def _bool(section: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
    return value


def _number(section: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"{where}.{key} must be a number >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class TargetSpec:
    """The targets of a run (config section ``targets``).

    Args:
        categories: train the class head (cross-entropy).
        attributes: names of the continuous labels to regress, in output order.
        attribute_loss: ``ccc`` or ``mse``.
        attribute_weight: with both targets, the attribute loss's weight beside cross-entropy.
        selection: the dev metric that selects checkpoints (``wa``, ``ua``, ``macro_f1``, ``ccc_mean``,
            ``ccc_<attribute>``); None: the default (:attr:`selection_metric`).

    Example:
        >>> spec = TargetSpec.from_config({"categories": False, "attributes": ["arousal", "valence"]}, "targets")
        >>> spec.num_attributes, spec.selection_metric
        (2, 'ccc_mean')
        >>> TargetSpec().selection_metric, TargetSpec().is_categorical_only
        ('wa', True)
        >>> TargetSpec.from_dict(spec.to_dict()) == spec
        True
        >>> TargetSpec.from_config({"selection": "ccc_arousal"}, "targets")
        Traceback (most recent call last):
        ...
        s3prl_ser.config.ConfigError: targets.selection 'ccc_arousal' needs attribute 'arousal' in targets.attributes (got none)
    """

    categories: bool = True
    attributes: tuple[str, ...] = ()
    attribute_loss: str = "ccc"
    attribute_weight: float = 1.0
    selection: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", tuple(self.attributes))
        self.validate("targets")

    def validate(self, where: str) -> None:
        """Raise :class:`ConfigError` (naming ``where``) for an inconsistent spec."""
        if not self.categories and not self.attributes:
            raise ConfigError(f"{where}: nothing to learn: set categories: true or list attributes")
        if any(not isinstance(a, str) or not a for a in self.attributes):
            raise ConfigError(f"{where}.attributes must be a list of names, got {list(self.attributes)!r}")
        if len(set(self.attributes)) != len(self.attributes):
            raise ConfigError(f"{where}.attributes lists a name twice: {list(self.attributes)!r}")
        if self.attribute_loss not in ATTRIBUTE_LOSSES:
            raise ConfigError(
                f"{where}.attribute_loss must be one of {', '.join(ATTRIBUTE_LOSSES)}, got {self.attribute_loss!r}"
            )
        if isinstance(self.attribute_weight, bool) or not self.attribute_weight >= 0:
            raise ConfigError(f"{where}.attribute_weight must be a number >= 0, got {self.attribute_weight!r}")
        if self.selection is not None:
            self._check_selection(self.selection, where)

    def _check_selection(self, metric: str, where: str) -> None:
        known = self.metric_names()
        if metric in known:
            return
        if metric in CATEGORY_METRICS:
            raise ConfigError(f"{where}.selection {metric!r} needs categories: true")
        if metric.startswith("ccc_") and metric != "ccc_mean":
            got = ", ".join(self.attributes) or "none"
            raise ConfigError(
                f"{where}.selection {metric!r} needs attribute {metric[4:]!r} in {where}.attributes (got {got})"
            )
        raise ConfigError(f"{where}.selection must be one of {', '.join(known)}, got {metric!r}")

    def metric_names(self) -> tuple[str, ...]:
        """The dev metrics this run computes and can select by."""
        names = CATEGORY_METRICS if self.categories else ()
        if self.attributes:
            names += ("ccc_mean", *(f"ccc_{a}" for a in self.attributes))
        return names

    @property
    def num_attributes(self) -> int:
        return len(self.attributes)

    @property
    def is_categorical_only(self) -> bool:
        """Today's task alone: outputs, records and reports exactly as before attributes existed."""
        return self.categories and not self.attributes

    @property
    def selection_metric(self) -> str:
        """``selection``, or the default: ``wa`` with categories (the paper), ``ccc_mean`` without."""
        if self.selection is not None:
            return self.selection
        return "wa" if self.categories else "ccc_mean"

    def fold_data_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~s3prl_ser.data.fold_data.load_fold_data` for these targets:
        none for categories alone, so a categorical run reads its data exactly as before.

        Example:
            >>> TargetSpec().fold_data_options(), TargetSpec(False, ("arousal",)).fold_data_options()
            ({}, {'categories': False, 'attributes': ('arousal',)})
        """
        return {} if self.is_categorical_only else {"categories": self.categories, "attributes": self.attributes}

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None, where: str = "targets") -> TargetSpec:
        """The spec of a ``targets`` config section (None or missing keys: the defaults).

        Raises:
            ConfigError: an unknown key or invalid value, named by ``where``.
        """
        section = dict(section or {})
        check_keys(section, TARGET_KEYS, where)
        attributes = section.get("attributes") or []
        if isinstance(attributes, str) or not isinstance(attributes, (list, tuple)):
            raise ConfigError(f"{where}.attributes must be a list of names, got {attributes!r}")
        selection = section.get("selection")
        if selection is not None and not isinstance(selection, str):
            raise ConfigError(f"{where}.selection must be a metric name or null, got {selection!r}")
        loss = section.get("attribute_loss", "ccc")
        spec = cls.__new__(cls)
        values = {
            "categories": _bool(section, "categories", True, where),
            "attributes": tuple(attributes),
            "attribute_loss": loss,
            "attribute_weight": _number(section, "attribute_weight", 1.0, where),
            "selection": selection,
        }
        for key, value in values.items():
            object.__setattr__(spec, key, value)
        spec.validate(where)
        return spec

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (attributes as a list, the resolved ``selection_metric`` beside ``selection``)."""
        return dict(asdict(self), attributes=list(self.attributes), selection_metric=self.selection_metric)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any] | None) -> TargetSpec:
        """Back from :meth:`to_dict` (None: a record from before targets existed, i.e. categories only)."""
        record = {k: v for k, v in (record or {}).items() if k != "selection_metric"}
        return cls.from_config(record, "targets")


@dataclass(frozen=True)
class LossSpec:
    """How the cross-entropy of the class head treats imbalanced classes (config section ``loss``).

    Args:
        class_weights: weight class c by N / (C * n_c) from the fold's training counts.
        focal_gamma: > 0: focal loss with this gamma (0: plain cross-entropy).
        balanced_sampler: draw class-balanced training batches (seeded, with replacement).

    Example:
        >>> LossSpec.from_config({"focal_gamma": 2}, "loss")
        LossSpec(class_weights=False, focal_gamma=2.0, balanced_sampler=False)
        >>> LossSpec().is_plain
        True
    """

    class_weights: bool = False
    focal_gamma: float = 0.0
    balanced_sampler: bool = False

    @property
    def is_plain(self) -> bool:
        """Plain, unweighted cross-entropy over the natural order (the paper's loss)."""
        return not self.class_weights and self.focal_gamma == 0 and not self.balanced_sampler

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None, where: str = "loss") -> LossSpec:
        """The spec of a ``loss`` config section (None or missing keys: the defaults).

        Raises:
            ConfigError: an unknown key or invalid value, named by ``where``.
        """
        section = dict(section or {})
        check_keys(section, LOSS_KEYS, where)
        return cls(
            class_weights=_bool(section, "class_weights", False, where),
            focal_gamma=_number(section, "focal_gamma", 0.0, where),
            balanced_sampler=_bool(section, "balanced_sampler", False, where),
        )

    def check_targets(self, targets: TargetSpec, where: str = "loss") -> None:
        """Refuse imbalance options on a run with no class head (they would silently do nothing)."""
        if not targets.categories and not self.is_plain:
            raise ConfigError(f"{where} options act on the class head; this run has targets.categories: false")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any] | None) -> LossSpec:
        return cls.from_config(record, "loss")


def expert_targets(downstream_expert: Mapping[str, Any] | None) -> tuple[TargetSpec, LossSpec]:
    """The targets and loss options of stage 2's ``downstream_expert`` config section (its
    ``targets`` and ``loss``), checked together; the defaults where the section lacks them.

    Example:
        >>> expert_targets({"targets": {"categories": False, "attributes": ["valence"]}})[0].selection_metric
        'ccc_mean'
    """
    section = downstream_expert or {}
    targets = TargetSpec.from_config(section.get("targets"), "downstream_expert.targets")
    loss = LossSpec.from_config(section.get("loss"), "downstream_expert.loss")
    loss.check_targets(targets, "downstream_expert.loss")
    return targets, loss
