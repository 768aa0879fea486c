"""Stage 1 (python -m upstream_ft) never lets the test split select or shape the exported model."""

import json
import shutil

import pytest
import torch

from helpers import finetune_args, finetune_overrides
from s3prl_ser.cli.finetune import main as upstream_ft
from s3prl_ser.fileio import safe_torch_load

pytestmark = pytest.mark.usefixtures("one_thread")


def test_test_set_never_selects(tiny_upstreams, mini_corpus, mini_meta, tmp_path):
    """Relabelling the test utterances changes nothing about which checkpoints are kept, nor
    the exported (averaged) upstream and head; only the recorded test scores see the new labels."""
    relabelled = tmp_path / "meta"
    shutil.copytree(mini_meta, relabelled)
    test_json = relabelled / "Session2" / "test_meta_data.json"
    data = json.loads(test_json.read_text())
    assert {item["label"] for item in data["meta_data"]} != {"sad"}
    for item in data["meta_data"]:
        item["label"] = "sad"
    test_json.write_text(json.dumps(data))

    folds = {}
    for name, meta_dir in (("original", mini_meta), ("relabelled", relabelled)):
        argv = finetune_args(
            "hubert_local",
            tiny_upstreams["hubert"],
            "fold2",
            tmp_path / name,
            finetune_overrides(mini_corpus, meta_dir),
        )
        upstream_ft(argv)
        folds[name] = tmp_path / name / "fold2"

    read = lambda name, file: (folds[name] / file).read_text()  # noqa: E731
    assert read("original", "dev-top.json") == read("relabelled", "dev-top.json")
    records = {name: json.loads(read(name, "upstream.json")) for name in folds}
    assert records["original"]["averaged"] and len(records["original"]["checkpoints"]) == 2
    assert records["original"]["checkpoints"] == records["relabelled"]["checkpoints"]

    exports = {name: safe_torch_load(folds[name] / "upstream.ckpt") for name in folds}
    base = safe_torch_load(tiny_upstreams["hubert"])["model_weight"]
    key = "encoder.layers.0.fc1.weight"
    assert not torch.equal(base[key], exports["original"]["model_weight"][key])  # it did train
    for section in ("model_weight", "ft_head"):
        original, other = exports["original"][section], exports["relabelled"][section]
        assert original and original.keys() == other.keys()
        for key in original:
            assert torch.equal(original[key], other[key]), (section, key)

    # The relabelled run did score its own test labels, once, at the end.
    confusion = {name: records[name]["test"]["confusion"] for name in folds}
    assert [sum(row) for row in confusion["relabelled"]] == [0, 0, 0, 5]
    assert [sum(row) for row in confusion["original"]] == [1, 2, 1, 1]
    for name in folds:
        log = read(name, "log.log").splitlines()
        assert [line for line in log if line.startswith("test")] == [log[-1]]
