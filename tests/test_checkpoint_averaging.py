import argparse

import pytest
import torch

from s3prl_ser.cli.average_checkpoints import main
from s3prl_ser.toy.tiny_upstream import write_tiny_upstream
from s3prl_ser.training.checkpoint_averaging import (
    CheckpointMismatchError,
    average_checkpoint_files,
    average_state_dicts,
)


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.norm = torch.nn.BatchNorm1d(2)


def toy_state(value: float, batches: int) -> dict[str, torch.Tensor]:
    """A toy state dict whose float tensors all hold ``value``."""
    model = Toy()
    with torch.no_grad():
        for tensor in [*model.parameters(), model.norm.running_mean, model.norm.running_var]:
            tensor.fill_(value)
    model.norm.num_batches_tracked.fill_(batches)
    return model.state_dict()


def load_weights_only(path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, weights_only=True)


def test_average_equals_hand_computed_mean():
    averaged = average_state_dicts([toy_state(1, 5), toy_state(2, 5), toy_state(6, 5)])
    assert list(averaged) == list(toy_state(0, 0))  # key order kept
    for key in ("linear.weight", "linear.bias", "norm.weight", "norm.running_mean"):
        assert torch.equal(averaged[key], torch.full_like(averaged[key], 3.0)), key
    assert torch.equal(averaged["norm.running_var"], torch.full((2,), 3.0))
    assert averaged["norm.num_batches_tracked"].item() == 5  # identical: kept
    assert averaged["norm.num_batches_tracked"].dtype == torch.int64

    differing = average_state_dicts([toy_state(1, 1), toy_state(1, 2), toy_state(1, 4)])
    assert differing["norm.num_batches_tracked"].item() == 2  # floor(7 / 3)


def test_half_precision_does_not_overflow():
    big = {"w": torch.full((4,), 60000.0, dtype=torch.float16)}
    averaged = average_state_dicts([big, {"w": big["w"].clone()}])
    assert averaged["w"].dtype == torch.float16
    assert torch.isfinite(averaged["w"]).all()
    assert torch.equal(averaged["w"], big["w"])
    ones, threes = (torch.full((2,), v, dtype=torch.bfloat16) for v in (1.0, 3.0))
    bf16 = average_state_dicts([{"w": ones}, {"w": threes}])
    assert torch.equal(bf16["w"], torch.full((2,), 2.0, dtype=torch.bfloat16))


def test_identical_and_single_dicts_are_identity():
    torch.manual_seed(0)
    state = Toy().state_dict()
    for states in ([state], [state, state, state]):
        averaged = average_state_dicts(states)
        assert list(averaged) == list(state)
        for key, value in state.items():
            assert torch.equal(averaged[key], value) and averaged[key].dtype == value.dtype
            assert averaged[key].is_contiguous() and averaged[key].device.type == "cpu"
    with pytest.raises(ValueError, match="no state dicts"):
        average_state_dicts([])


def test_mismatches_name_checkpoint_and_key():
    state = toy_state(1, 1)
    missing = {k: v for k, v in state.items() if k != "linear.bias"}
    message = r"b\.pt has different keys.*missing \['linear.bias'\]"
    with pytest.raises(CheckpointMismatchError, match=message):
        average_state_dicts([state, missing], names=["a.pt", "b.pt"])
    extra = dict(state, extra=torch.zeros(1))
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint 1 .*extra \['extra'\]"):
        average_state_dicts([state, extra])
    reshaped = dict(state, **{"linear.weight": torch.zeros(3, 2)})
    message = r"checkpoint 1: linear.weight has shape \(3, 2\), checkpoint 0 has \(2, 3\)"
    with pytest.raises(CheckpointMismatchError, match=message):
        average_state_dicts([state, reshaped])
    retyped = dict(state, **{"linear.weight": state["linear.weight"].double()})
    message = "checkpoint 1: linear.weight has dtype torch.float64"
    with pytest.raises(CheckpointMismatchError, match=message):
        average_state_dicts([state, retyped])


def runner_ckpt(value: float, step: int, **overrides) -> dict:
    config = {"runner": {"total_steps": 100}, "downstream_expert": {"pooling": "mean"}}
    checkpoint = {
        "Optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
        "Scheduler": {"last_epoch": step},
        "Step": step,
        "Epoch": step // 10,
        "Args": argparse.Namespace(expdir="exp", seed=0, upstream="fbank", init_ckpt=f"states-{step}.ckpt"),
        "Config": config,
        "Featurizer": {"weights": torch.full((3,), value)},
        "Downstream": toy_state(value, step),
    }
    checkpoint.update(overrides)
    return checkpoint


def write(tmp_path, name, checkpoint):
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path


def test_runner_checkpoints(tmp_path):
    values_steps = [(1, 30), (2, 50), (6, 20)]
    paths = [write(tmp_path, f"s{step}.ckpt", runner_ckpt(v, step)) for v, step in values_steps]
    out = tmp_path / "new" / "avg.ckpt"
    averaged = average_checkpoint_files(paths, out)
    assert averaged["Step"] == 50
    assert averaged["Epoch"] == 5  # of the latest step, whatever the order
    assert averaged["Args"].init_ckpt == "states-20.ckpt"  # from the last path
    assert "Optimizer" not in averaged and "Scheduler" not in averaged
    assert averaged["Averaged"] == {"paths": [str(p) for p in paths], "steps": [30, 50, 20]}
    assert torch.equal(averaged["Featurizer"]["weights"], torch.full((3,), 3.0))
    assert averaged["Downstream"]["norm.num_batches_tracked"].item() == 33  # floor(100 / 3)

    loaded = load_weights_only(out)
    expected = {"Step", "Epoch", "Args", "Config", "Featurizer", "Downstream", "Averaged"}
    assert set(loaded) == expected
    assert torch.equal(loaded["Downstream"]["linear.weight"], torch.full((2, 3), 3.0))
    assert isinstance(loaded["Args"], argparse.Namespace)


def test_runner_checkpoints_refused(tmp_path):
    a = write(tmp_path, "a.ckpt", runner_ckpt(1, 10))
    other_config = {"runner": {"total_steps": 100}, "downstream_expert": {"pooling": "ecapa"}}
    b = write(tmp_path, "b.ckpt", runner_ckpt(2, 20, Config=other_config))
    message = r"b\.ckpt and .*a\.ckpt come from different runs: config\.downstream_expert\.pooling: 'mean' -> 'ecapa'"
    with pytest.raises(CheckpointMismatchError, match=message):
        average_checkpoint_files([a, b])
    resumed_longer = {"runner": {"total_steps": 200}, "downstream_expert": {"pooling": "mean"}}
    longer = write(tmp_path, "longer.ckpt", runner_ckpt(3, 150, Config=resumed_longer))
    assert average_checkpoint_files([a, longer])["Step"] == 150  # a resume may lengthen the schedule

    other_run = runner_ckpt(2, 20, Args=argparse.Namespace(expdir="exp", seed=0, upstream="mfcc"))
    f = write(tmp_path, "f.ckpt", other_run)
    with pytest.raises(CheckpointMismatchError, match=r"f\.ckpt .*different runs: args\.upstream: 'fbank' -> 'mfcc'"):
        average_checkpoint_files([a, f])
    g = write(tmp_path, "g.ckpt", runner_ckpt(2, 20, ClassNames=["neu", "hap"]))
    with pytest.raises(CheckpointMismatchError, match=r"g\.ckpt .*ClassNames"):
        average_checkpoint_files([write(tmp_path, "h.ckpt", runner_ckpt(1, 10, ClassNames=["hap", "neu"])), g])

    with_upstream = runner_ckpt(2, 20, Upstream={"w": torch.zeros(1)})
    c = write(tmp_path, "c.ckpt", with_upstream)
    message = r"c\.ckpt holds sections \['Upstream', 'Featurizer', 'Downstream'\]"
    with pytest.raises(CheckpointMismatchError, match=message):
        average_checkpoint_files([a, c])

    reshaped = runner_ckpt(2, 20, Featurizer={"weights": torch.zeros(4)})
    d = write(tmp_path, "d.ckpt", reshaped)
    with pytest.raises(CheckpointMismatchError, match=r"d\.ckpt \[Featurizer\]: weights has shape"):
        average_checkpoint_files([a, d])

    e = write(tmp_path, "e.ckpt", {"model": {"w": torch.zeros(1)}})
    message = r"e\.ckpt is neither an s3prl runner checkpoint"
    with pytest.raises(CheckpointMismatchError, match=message):
        average_checkpoint_files([a, e])
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        average_checkpoint_files([a, tmp_path / "missing.ckpt"])


def test_converted_upstreams_load_in_stock_s3prl(tmp_path):
    from s3prl import hub

    paths = [write_tiny_upstream("hubert", tmp_path / f"h{seed}.pt", seed=seed) for seed in (1, 2)]
    out = tmp_path / "avg.pt"
    averaged = average_checkpoint_files(paths, out)
    assert averaged["Averaged"] == {"paths": [str(p) for p in paths], "steps": [None, None]}

    key = "encoder.layers.0.fc1.weight"
    inputs = [torch.load(p, weights_only=True)["model_weight"][key] for p in paths]
    upstream = hub.hubert_local(ckpt=str(out))
    loaded = upstream.model.state_dict()[key]
    assert not torch.equal(inputs[0], inputs[1])
    torch.testing.assert_close(loaded, (inputs[0] + inputs[1]) / 2)

    deeper = write_tiny_upstream("hubert", tmp_path / "deep.pt", layers=3)
    message = r"deep\.pt .*different configs: model_cfg differs at encoder_layers"
    with pytest.raises(CheckpointMismatchError, match=message):
        average_checkpoint_files([paths[0], deeper])
    runner = write(tmp_path, "r.ckpt", runner_ckpt(1, 10))
    message = r"r\.ckpt is a runner checkpoint but .*h1\.pt is a converted upstream"
    with pytest.raises(CheckpointMismatchError, match=message):
        average_checkpoint_files([paths[0], runner])


def test_cli(tmp_path, capsys):
    paths = [str(write(tmp_path, f"s{step}.ckpt", runner_ckpt(step, step))) for step in (10, 20)]
    out = tmp_path / "avg.ckpt"
    main([*paths, "-o", str(out)])
    printed = capsys.readouterr().out
    assert "averaged 2 checkpoint(s)" in printed and "10, 20" in printed
    assert "Featurizer, Downstream" in printed and str(out) in printed
    assert torch.equal(load_weights_only(out)["Featurizer"]["weights"], torch.full((3,), 15.0))

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=r"^error: cannot load checkpoint .*bad\.ckpt"):
        main([paths[0], str(bad), "-o", str(tmp_path / "x.ckpt")])
    with pytest.raises(SystemExit, match=r"^error: no such checkpoint file: .*nope\.ckpt"):
        main([paths[0], str(tmp_path / "nope.ckpt"), "-o", str(tmp_path / "x.ckpt")])
    assert not (tmp_path / "x.ckpt").exists()
