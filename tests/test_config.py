import argparse

import pytest

from s3prl_ser.training.config import ConfigError, apply_overrides, check_keys, require


def _config():
    return {"runner": {"total_steps": 10, "eval_dataloaders": ["dev"], "lr": 0.1},
            "downstream_expert": {"datarc": {"root": None, "test_fold": "fold1"}}}


def test_overrides_parse_yaml_values():
    args, config = argparse.Namespace(seed=1), _config()
    apply_overrides("config.runner.total_steps=200,,args.seed=7,,config.runner.lr=1e-3,,"
                    "config.runner.eval_dataloaders=[dev, test],,config.downstream_expert.datarc.root=/data/IEMOCAP", args, config)
    assert config["runner"]["total_steps"] == 200
    assert config["runner"]["eval_dataloaders"] == ["dev", "test"]
    assert config["downstream_expert"]["datarc"]["root"] == "/data/IEMOCAP"
    assert args.seed == 7
    assert config["runner"]["lr"] == 1e-3 and isinstance(config["runner"]["lr"], float)


def test_override_typo_is_an_error_with_suggestion():
    with pytest.raises(ConfigError, match="no 'total_step' in runner; did you mean 'total_steps'"):
        apply_overrides("config.runner.total_step=5", argparse.Namespace(), _config())
    with pytest.raises(ConfigError, match="unknown argument.*did you mean 'seed'"):
        apply_overrides("args.sed=5", argparse.Namespace(seed=1), _config())
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides("config.runner", argparse.Namespace(), _config())
    with pytest.raises(ConfigError, match="must start with 'config.' or 'args.'"):
        apply_overrides("runner.total_steps=3", argparse.Namespace(), _config())


def test_override_values_are_not_evaluated_as_code():
    config = _config()
    apply_overrides("config.downstream_expert.datarc.root=__import__('os').getcwd()", argparse.Namespace(), config)
    assert config["downstream_expert"]["datarc"]["root"] == "__import__('os').getcwd()"


def test_check_keys_and_require():
    with pytest.raises(ConfigError, match="unknown config key datarc.rot; did you mean 'root'"):
        check_keys({"rot": 1}, {"root", "meta_data"}, "datarc")
    check_keys({"root": 1}, {"root"}, "datarc")
    with pytest.raises(ConfigError, match="datarc.root is not set: pass -o"):
        require({"root": None}, "root", "datarc", "pass -o")
