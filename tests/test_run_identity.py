"""Run identities: what is compared before an experiment directory is resumed or reused."""

from argparse import Namespace

from s3prl_ser.training.run_identity import (
    RUN_ARGS,
    describe,
    differences,
    previous_run_files,
    run_identity,
    significant_differences,
)


def test_differences_lists_changed_added_and_removed_keys():
    old = {"a": 1, "b": {"c": [1, 2], "d": "x"}, "gone": 0}
    new = {"a": 1, "b": {"c": [1, 3], "d": "x"}, "new": None}
    assert differences(old, new) == ["b.c: [1, 2] -> [1, 3]", "gone: 0 -> '<absent>'", "new: '<absent>' -> None"]
    assert differences(old, old) == []
    assert differences({"k": 1}, {"k": 1.5}, "config") == ["config.k: 1 -> 1.5"]


def test_identity_keeps_run_arguments_only():
    args = Namespace(**{key: f"v-{key}" for key in RUN_ARGS} | {"seed": 3}, device="cuda", expdir="/somewhere")
    identity = run_identity(args, {"runner": {"total_steps": 10}})
    assert set(identity["args"]) == set(RUN_ARGS) and identity["args"]["seed"] == 3
    assert "device" not in identity["args"] and "expdir" not in identity["args"]
    assert identity["config"] == {"runner": {"total_steps": 10}}


def test_previous_run_files(tmp_path):
    assert previous_run_files(tmp_path) == []
    for name in ("states-40.ckpt", "dev-top.json", "args_x.yaml", "log.log"):
        (tmp_path / name).write_text("")
    assert previous_run_files(tmp_path) == ["dev-top.json", "states-40.ckpt"]


def test_significant_differences_leave_out_feeding_and_on_resume_the_schedule():
    old = run_identity(
        {"seed": 1},
        {
            "runner": {"total_steps": 10},
            "downstream_expert": {"datarc": {"num_workers": 4, "eval_batch_size": 4, "pre_load": True, "root": "/a"}},
        },
    )
    new = run_identity(
        {"seed": 1},
        {
            "runner": {"total_steps": 20},
            "downstream_expert": {"datarc": {"num_workers": 0, "eval_batch_size": 2, "pre_load": False, "root": "/a"}},
        },
    )
    assert significant_differences(old, new, resuming=True) == []
    assert significant_differences(old, new) == ["config.runner.total_steps: 10 -> 20"]
    new["config"]["downstream_expert"]["datarc"]["root"] = "/b"
    new["args"]["seed"] = 2
    assert significant_differences(old, new, resuming=True) == [
        "args.seed: 1 -> 2",
        "config.downstream_expert.datarc.root: '/a' -> '/b'",
    ]


def test_describe_shortens_long_lists():
    assert describe(["a: 1 -> 2"]) == "a: 1 -> 2"
    assert describe(["a", "b", "c"], limit=2) == "a; b; ..."


def test_a_resume_may_not_change_the_gradient_accumulation():
    """A resumed run's position is counted in micro-batches: another accumulation would cut
    its updates elsewhere."""
    old = run_identity({"seed": 1}, {"runner": {"total_steps": 10, "gradient_accumulate_steps": 2}})
    new = run_identity({"seed": 1}, {"runner": {"total_steps": 20, "gradient_accumulate_steps": 4}})
    assert significant_differences(old, new, resuming=True) == ["config.runner.gradient_accumulate_steps: 2 -> 4"]
