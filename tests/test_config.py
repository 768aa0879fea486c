"""The config system both stages share: defaults, -c merged over them, -o overrides, fp16."""

import argparse

import pytest
import yaml

from helpers import run_request, train_args
from s3prl_ser.cli.run_downstream import main as run_downstream
from s3prl_ser.config import (
    S3PRL_FREE_FORM,
    ConfigError,
    apply_overrides,
    check_fp16,
    check_keys,
    load_config,
    merge_config,
    read_yaml,
    require,
)
from s3prl_ser.experiments.launch import load_task_config, requested_run
from s3prl_ser.finetuning.config import DEFAULT_CONFIG as FINETUNE_DEFAULTS
from s3prl_ser.finetuning.config import validate_config
from s3prl_ser.upstreams.registry import DOWNSTREAM_DIR, register


def _config():
    return {
        "runner": {"total_steps": 10, "eval_dataloaders": ["dev"], "lr": 0.1},
        "downstream_expert": {"datarc": {"root": None, "test_fold": "fold1"}},
    }


def test_overrides_parse_yaml_values():
    args, config = argparse.Namespace(seed=1), _config()
    apply_overrides(
        "config.runner.total_steps=200,,args.seed=7,,config.runner.lr=1e-3,,"
        "config.runner.eval_dataloaders=[dev, test],,config.downstream_expert.datarc.root=/data/IEMOCAP",
        args,
        config,
    )
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


# ---------------------------------------------------------------- -c files merged over the defaults

ECAPA_DEFAULTS = DOWNSTREAM_DIR / "emotion_ecapa" / "config.yaml"

# s3prl's downstream/emotion/config.yaml at GitHub HEAD, verbatim (comments and all).
STOCK_EMOTION = """\
runner:
  total_steps: 30000
  gradient_clipping: 1
  gradient_accumulate_steps: 8

  log_step: 500
  eval_step: 1000
  save_step: 1000
  max_keep: 1
  eval_dataloaders:
    - dev
    - test

optimizer:
  name: TorchOptim
  torch_optim_name: Adam
  lr: 1.0e-4

# comment the whole scheduler config block
# to disable learning rate scheduling
# scheduler:
#   name: linear_schedule_with_warmup
#   num_warmup_steps: 1400

downstream_expert:
  datarc:
    root: /groups/public/benchmark/IEMOCAP
    test_fold: fold1
    pre_load: True
    train_batch_size: 4
    eval_batch_size: 4
    num_workers: 12
    valid_ratio: 0.2

  modelrc:
    projector_dim: 256
    select: UtteranceLevel

    UtteranceLevel:
      pooling: MeanPooling

    DeepModel:
      model_type: CNNSelfAttention
      input_dim: 256
      hidden_dim: 80
      kernel_size: 5
      padding: 2
      pooling: 5
      dropout: 0.4
"""


@pytest.fixture(autouse=True, scope="module")
def _tasks_registered():
    register()  # downstream/<task>/config.yaml is found through s3prl.downstream.__path__


def _write(tmp_path, text, name="user.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _leaves(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def test_partial_c_file_takes_the_defaults(tmp_path):
    user = _write(
        tmp_path,
        "runner:\n  total_steps: 7\ndownstream_expert:\n  modelrc:\n    ecapa:\n      channels: [8, 8, 8, 8, 24]\n",
    )
    config = load_task_config("emotion_ecapa", str(user))
    defaults = read_yaml(ECAPA_DEFAULTS)
    assert config["runner"]["total_steps"] == 7
    assert config["downstream_expert"]["modelrc"]["ecapa"]["channels"] == [8, 8, 8, 8, 24]
    config["runner"]["total_steps"] = defaults["runner"]["total_steps"]
    config["downstream_expert"]["modelrc"]["ecapa"]["channels"] = defaults["downstream_expert"]["modelrc"]["ecapa"][
        "channels"
    ]
    assert config == defaults  # everything else is the default
    assert load_task_config("emotion_ecapa") == defaults  # no -c: the defaults themselves


def test_complete_config_merged_over_the_defaults_is_itself(tmp_path):
    full = read_yaml(ECAPA_DEFAULTS)
    full["runner"]["total_steps"], full["downstream_expert"]["datarc"]["split"] = 5, "speaker"
    assert load_task_config("emotion_ecapa", str(_write(tmp_path, yaml.safe_dump(full)))) == full


def test_unknown_key_in_c_file_is_an_error_naming_it(tmp_path):
    user = _write(tmp_path, "downstream_expert:\n  modelrc:\n    agregator: mean\n")
    with pytest.raises(
        ConfigError,
        match=r"user\.yaml: unknown config key config\.downstream_expert\.modelrc\.agregator; "
        r"did you mean 'aggregator'",
    ):
        load_task_config("emotion_ecapa", str(user))
    with pytest.raises(
        SystemExit, match=r"^error: .*user\.yaml: unknown config key config\.downstream_expert\.modelrc\.agregator"
    ):
        run_downstream(
            ["-m", "train", "-u", "fbank", "-d", "emotion_ecapa", "-c", str(user), "-p", str(tmp_path / "x")]
        )
    assert not (tmp_path / "x").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match=r"config\.runner is a section .*got 5"):
        load_task_config("emotion_ecapa", str(_write(tmp_path, "runner: 5\n", "scalar.yaml")))
    with pytest.raises(FileNotFoundError, match="config file not found: .*nope.yaml"):
        load_task_config("emotion_ecapa", str(tmp_path / "nope.yaml"))


def test_stock_s3prl_emotion_config_merges_as_itself(tmp_path):
    stock = yaml.safe_load(STOCK_EMOTION)
    config = load_task_config("emotion", str(_write(tmp_path, STOCK_EMOTION)))
    assert all(_get(config, path) == value for path, value in _leaves(stock))
    # What s3prl's file lacks comes from the task's defaults: meta_data (0.4.18's expert needs it), off switches.
    assert config["downstream_expert"]["datarc"]["meta_data"] is None
    assert (config["runner"]["fp16"], config["scheduler"], config["specaug"]) == (False, None, None)
    # Uncommenting the scheduler block, or choosing another of s3prl's model classes, stays valid.
    variant = (
        STOCK_EMOTION.replace("# scheduler:", "scheduler:")
        .replace("#   ", "  ")
        .replace("select: UtteranceLevel", "select: FCN\n    FCN: {hidden_dim: 32}")
    )
    config = load_task_config("emotion", str(_write(tmp_path, variant, "variant.yaml")))
    assert config["scheduler"] == {"name": "linear_schedule_with_warmup", "num_warmup_steps": 1400}
    assert config["downstream_expert"]["modelrc"]["FCN"] == {"hidden_dim": 32}


@pytest.mark.usefixtures("one_thread")
def test_stock_s3prl_emotion_config_trains(mini_corpus, mini_meta, tmp_path):
    run_downstream(
        train_args(
            tmp_path / "run",
            f"config.downstream_expert.datarc.root={mini_corpus},,config.downstream_expert.datarc.meta_data={mini_meta},,"
            "config.runner.total_steps=2,,config.runner.eval_step=2,,config.runner.save_step=2,,"
            "config.runner.log_step=2,,config.downstream_expert.datarc.num_workers=0",
            task="emotion",
            extra=("-c", str(_write(tmp_path, STOCK_EMOTION))),
        )
    )
    assert (tmp_path / "run" / "dev-best.ckpt").is_file() and (tmp_path / "run" / "test_fold1_predict.txt").is_file()


def test_free_form_and_null_sections_are_replaced_whole(tmp_path):
    user = _write(
        tmp_path,
        "optimizer:\n  name: AdamW\n  lr: 1.0e-4\nspecaug:\n  apply_time_mask: true\n"
        "  time_mask_width_range: [0, 40]\n",
    )
    config = load_task_config("emotion_ecapa", str(user))
    assert config["optimizer"] == {"name": "AdamW", "lr": 1e-4}  # no torch_optim_name inherited
    assert config["specaug"] == {"apply_time_mask": True, "time_mask_width_range": [0, 40]}
    # -o sets a null section whole; a key inside it cannot be reached.
    apply_overrides(
        "config.scheduler={name: linear_schedule_with_warmup, num_warmup_steps: 10}",
        argparse.Namespace(),
        config,
        free_form=S3PRL_FREE_FORM,
    )
    assert config["scheduler"] == {"name": "linear_schedule_with_warmup", "num_warmup_steps": 10}
    fresh = load_task_config("emotion_ecapa")
    with pytest.raises(ConfigError, match=r"config\.specaug is null; set it whole"):
        apply_overrides("config.specaug.apply_time_mask=true", argparse.Namespace(), fresh, free_form=S3PRL_FREE_FORM)
    # The project's own model section is strict: s3prl's experts' modelrc is free-form.
    with pytest.raises(ConfigError, match="unknown config key config.downstream_expert.modelrc.FCN"):
        load_task_config(
            "emotion_ecapa", str(_write(tmp_path, "downstream_expert:\n  modelrc:\n    FCN: {}\n", "fcn.yaml"))
        )


def test_override_with_a_mapping_merges_like_a_c_file():
    defaults = {"runner": {"total_steps": 10, "log_step": 5}, "optimizer": {"name": "TorchOptim", "lr": 0.1}}
    config = merge_config(defaults, {})
    apply_overrides(
        "config.runner={total_steps: 3},,config.optimizer={name: AdamW}",
        argparse.Namespace(),
        config,
        free_form=("optimizer",),
    )
    assert config == {"runner": {"total_steps": 3, "log_step": 5}, "optimizer": {"name": "AdamW"}}
    with pytest.raises(ConfigError, match=r"unknown config key config\.runner\.total_step; did you mean 'total_steps'"):
        apply_overrides("config.runner={total_step: 3}", argparse.Namespace(), config)
    with pytest.raises(ConfigError, match=r"config\.runner is a section"):
        apply_overrides("config.runner=3", argparse.Namespace(), config)
    assert defaults["runner"]["total_steps"] == 10  # merging never modifies the defaults


def test_stage_1_uses_the_same_merge(tmp_path):
    user = _write(tmp_path, "runner:\n  total_steps: 9\n")
    config = load_config(FINETUNE_DEFAULTS, user)
    assert (
        config["runner"]["total_steps"] == 9
        and config["runner"]["eval_step"] == read_yaml(FINETUNE_DEFAULTS)["runner"]["eval_step"]
    )
    with pytest.raises(
        ConfigError,
        match=r"user\.yaml: unknown config key config\.upstream\.feature_selections; "
        r"did you mean 'feature_selection'",
    ):
        load_config(FINETUNE_DEFAULTS, _write(tmp_path, "upstream:\n  feature_selections: x\n"))


@pytest.mark.parametrize(
    "path, defaults",
    [
        *[(f"downstream/emotion_ecapa/paper/exp{n}.yaml", ECAPA_DEFAULTS) for n in range(1, 12)],
        ("downstream/emotion_ecapa/config_builtin.yaml", ECAPA_DEFAULTS),
        ("s3prl_ser/finetuning/config_builtin.yaml", FINETUNE_DEFAULTS),
    ],
)
def test_shipped_partial_configs_hold_only_their_differences(path, defaults):
    repo = DOWNSTREAM_DIR.parent
    user, default = read_yaml(repo / path), read_yaml(defaults)
    free_form = S3PRL_FREE_FORM if defaults == ECAPA_DEFAULTS else ()
    same = [".".join(key) for key, value in _leaves(user) if key[0] not in free_form and value == _get(default, key)]
    assert not same, f"{path} repeats defaults: {same}"
    assert (repo / path).read_text().startswith("#")  # the header explaining the experiment stays
    load_config(defaults, repo / path, free_form=free_form)  # and it merges


# ---------------------------------------------------------------- fp16: AMP on CUDA, refused elsewhere


def _downstream_argv(tmp_path, device, mode="train"):
    return [
        "-m",
        mode,
        "-u",
        "fbank",
        "-d",
        "emotion_ecapa",
        "-p",
        str(tmp_path / "run"),
        "--device",
        device,
        "-o",
        "config.runner.fp16=True",
    ]


def test_fp16_is_a_key_of_both_stages():
    for defaults in (ECAPA_DEFAULTS, DOWNSTREAM_DIR / "emotion" / "config.yaml", FINETUNE_DEFAULTS):
        assert read_yaml(defaults)["runner"]["fp16"] is False


def test_stage_2_accepts_fp16_on_cuda_and_refuses_it_on_cpu(tmp_path):
    args, config = requested_run(run_request(_downstream_argv(tmp_path, "cuda:0")))  # only parsed: no GPU needed
    assert config["runner"]["fp16"] is True
    with pytest.raises(
        ConfigError, match=r"config\.runner\.fp16=True \(mixed precision\) needs a CUDA device, got --device cpu"
    ):
        requested_run(run_request(_downstream_argv(tmp_path, "cpu")))
    with pytest.raises(SystemExit, match=r"^error: config\.runner\.fp16=True .*needs a CUDA device"):
        run_downstream(_downstream_argv(tmp_path, "cpu"))
    assert not (tmp_path / "run").exists()
    requested_run(run_request(_downstream_argv(tmp_path, "cpu", mode="evaluate")))  # evaluation does not use AMP


def test_stage_1_accepts_fp16_on_cuda_and_refuses_it_on_cpu(tmp_path):
    from s3prl_ser.cli.finetune import main as finetune

    config = load_config(FINETUNE_DEFAULTS)
    apply_overrides(
        "config.runner.fp16=True,,config.datarc.root=/c,,config.datarc.meta_data=/m", argparse.Namespace(), config
    )
    validate_config(config, "cuda")
    with pytest.raises(
        ConfigError, match=r"config\.runner\.fp16=True \(mixed precision\) needs a CUDA device, got --device cpu"
    ):
        validate_config(config, "cpu")
    with pytest.raises(SystemExit, match=r"^error: config\.runner\.fp16=True .*needs a CUDA device"):
        finetune(
            [
                "-u",
                "hubert",
                "-p",
                str(tmp_path / "ft"),
                "--device",
                "cpu",
                "-o",
                "config.runner.fp16=True,,config.datarc.root=/c,,config.datarc.meta_data=/m",
            ]
        )
    assert not (tmp_path / "ft").exists()
    check_fp16(False, "cpu")
    check_fp16(True, "cuda:1")
    with pytest.raises(ConfigError, match="needs a CUDA device, got --device mps"):
        check_fp16(True, "mps")
