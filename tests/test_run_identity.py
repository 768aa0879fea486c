"""Run identities: what is compared before an experiment directory is resumed or reused."""

from argparse import Namespace

from s3prl_ser.run_identity import RUN_ARGS, differences, previous_run_files, run_identity


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
