"""Targets and loss options of a run: the config sections read, checked and recorded."""

import pytest

from s3prl_ser.config import ConfigError
from s3prl_ser.training.targets import LossSpec, TargetSpec


def test_defaults_are_the_paper_task():
    spec = TargetSpec.from_config(None)
    assert spec == TargetSpec() and spec.is_categorical_only
    assert (spec.num_attributes, spec.selection_metric, spec.metric_names()) == (0, "wa", ("wa", "ua", "macro_f1"))
    assert LossSpec.from_config({}) == LossSpec() and LossSpec().is_plain


def test_selection_defaults_per_task_and_named_metrics():
    both = TargetSpec.from_config({"attributes": ["arousal", "valence", "dominance"]})
    assert both.selection_metric == "wa" and both.num_attributes == 3
    assert both.metric_names() == ("wa", "ua", "macro_f1", "ccc_mean", "ccc_arousal", "ccc_valence", "ccc_dominance")
    regression = TargetSpec.from_config({"categories": False, "attributes": ["valence"], "attribute_loss": "mse"})
    assert regression.selection_metric == "ccc_mean"
    assert TargetSpec.from_config({"attributes": ["valence"], "selection": "ccc_valence"}).selection_metric == (
        "ccc_valence"
    )
    assert TargetSpec.from_config({"selection": "macro_f1"}).selection_metric == "macro_f1"


def test_round_trip_through_the_record():
    spec = TargetSpec(attributes=("arousal",), attribute_weight=0.5, selection="ua")
    record = spec.to_dict()
    assert record == {
        "categories": True,
        "attributes": ["arousal"],
        "attribute_loss": "ccc",
        "attribute_weight": 0.5,
        "selection": "ua",
        "selection_metric": "ua",
    }
    assert TargetSpec.from_dict(record) == spec
    assert TargetSpec.from_dict(None) == TargetSpec()  # a record from before targets existed
    assert LossSpec.from_dict(LossSpec(True, 2.0, True).to_dict()) == LossSpec(True, 2.0, True)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"categories": False}, "nothing to learn"),
        ({"attribute": ["arousal"]}, "did you mean 'attributes'"),
        ({"attributes": "arousal"}, "must be a list of names"),
        ({"attributes": ["arousal", "arousal"]}, "lists a name twice"),
        ({"attributes": ["arousal"], "attribute_loss": "l1"}, "must be one of ccc, mse"),
        ({"attribute_weight": -1}, "attribute_weight must be a number >= 0"),
        ({"selection": "ccc_mean"}, "must be one of wa, ua, macro_f1"),
        ({"categories": False, "attributes": ["arousal"], "selection": "ua"}, "'ua' needs categories: true"),
        ({"attributes": ["arousal"], "selection": "ccc_valence"}, "needs attribute 'valence'"),
        ({"categories": "yes"}, "categories must be true or false"),
    ],
)
def test_bad_targets_are_named(section, message):
    with pytest.raises(ConfigError, match=message) as error:
        TargetSpec.from_config(section, "downstream_expert.targets")
    assert "downstream_expert.targets" in str(error.value)


def test_bad_loss_options_are_named():
    with pytest.raises(ConfigError, match=r"loss\.focal_gamma must be a number >= 0"):
        LossSpec.from_config({"focal_gamma": -0.5})
    with pytest.raises(ConfigError, match="unknown config key loss.focal"):
        LossSpec.from_config({"focal": 2})
    regression = TargetSpec(categories=False, attributes=("arousal",))
    LossSpec().check_targets(regression)
    with pytest.raises(ConfigError, match="no class head|categories: false"):
        LossSpec(class_weights=True).check_targets(regression)
