import json

import pytest
import yaml

from s3prl_ser.config import ConfigError
from s3prl_ser.registry import DOWNSTREAM_DIR
from s3prl_ser.table1 import EXPERIMENTS, model_overrides, parse_experiments, write_tables

PAPER = DOWNSTREAM_DIR / "emotion_ecapa" / "paper"


def test_parse_experiments():
    assert parse_experiments("1-4,7,9-11") == [1, 2, 3, 4, 7, 9, 10, 11]
    assert parse_experiments("11,3,3") == [3, 11]
    with pytest.raises(ConfigError, match="1-11, got \\[12\\]"):
        parse_experiments("10-12")
    with pytest.raises(ConfigError, match="cannot read 'x'"):
        parse_experiments("x")


@pytest.mark.parametrize("number", range(1, 12))
def test_paper_config_matches_table_row(number):
    experiment = EXPERIMENTS[number]
    config = yaml.safe_load((PAPER / f"exp{number}.yaml").read_text())["downstream_expert"]
    assert (PAPER / f"exp{number}.yaml").read_text().startswith(f"# Paper Table 1, experiment {number}:")
    assert config["modelrc"]["aggregator"] == experiment.aggregator.lower()
    assert config["checkpoint_averaging"]["average"] is experiment.downstream_avg
    speech = [s for s in experiment.streams if s != "bert"]
    expected_fusion = {"+": "early", "&": "late"}.get(next((c for c in "+&" if c in experiment.feature), ""), None)
    assert config["modelrc"]["fusion"] == expected_fusion
    assert config["text"]["speech"] is bool(speech)


def test_model_overrides_carry_the_experiment_keys():
    overrides = model_overrides(PAPER / "exp10.yaml")
    assert "config.downstream_expert.modelrc.aggregator=ecapa" in overrides
    assert "config.downstream_expert.text.speech=false" in overrides
    assert "config.downstream_expert.text.transcripts=null" in overrides
    assert "config.downstream_expert.modelrc.fusion=early" in model_overrides(PAPER / "exp7.yaml")
    assert "config.downstream_expert.checkpoint_averaging.average=false" in model_overrides(PAPER / "exp1.yaml")


def test_tables_list_every_experiment_with_paper_numbers(tmp_path):
    summary = {"wa": {"mean": 60.0, "std": 1.5}, "ua": {"mean": 61.25, "std": 2.0}}
    paths = write_tables(tmp_path, {9: summary}, "Folds: fold1.")
    md = paths["md"].read_text()
    assert "| 2 | 9 | S | Fbank | no | no | ECAPA | Linear | yes | 60.00 ± 1.50 | 61.25 ± 2.00 | 56.52 | 57.60 |" in md
    assert "| 1.B | 7 | S | huBERT + W2V2 | yes | yes | ECAPA | Linear | yes | not run | not run | 77.36 | 77.76 |" in md
    data = json.loads(paths["json"].read_text())
    assert data["9"]["ours"]["wa"]["mean"] == 60.0 and data["1"]["ours"] is None
    superb = paths["superb"].read_text()
    assert "| fbank | 35.39 | 60.00" in superb and "| hubert | 64.92 | not run |" in superb
