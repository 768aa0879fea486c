"""Stage 1 (python -m upstream_ft) fine-tuning on continuous attributes, alone and beside the categories."""

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import s3prl.hub
import torch

from helpers import finetune_args, finetune_overrides
from s3prl_ser.data.attributes import denormalise
from s3prl_ser.data.audio import load_audio
from s3prl_ser.data.protocol import FoldMismatchError, check_fine_tuned
from s3prl_ser.fileio import safe_torch_load
from s3prl_ser.finetuning.model import FineTuneModel
from s3prl_ser.training.metrics import regression_report
from upstream_ft.__main__ import main as upstream_ft

pytestmark = pytest.mark.usefixtures("one_thread")

SCALE = [1, 5]


def _rating(name: str, salt: str) -> float:
    """A fixed pseudo-random rating on 1-5 in quarter steps, from the utterance's name."""
    return 1 + (zlib.crc32(f"{salt}:{name}".encode()) % 17) / 4


@pytest.fixture(scope="module")
def rated_meta(mini_meta, tmp_path_factory):
    """The mini corpus's meta data with arousal on every utterance and valence on all but every
    third (unknown: masked out)."""
    out = tmp_path_factory.mktemp("rated_meta")
    shutil.copytree(mini_meta, out, dirs_exist_ok=True)
    for path in out.glob("Session*/*_meta_data.json"):
        data = json.loads(path.read_text())
        data["attribute_scale"] = {"arousal": SCALE, "valence": SCALE}
        for i, item in enumerate(data["meta_data"]):
            valence = None if i % 3 == 2 else _rating(item["path"], "valence")
            item["attributes"] = {"arousal": _rating(item["path"], "arousal"), "valence": valence}
        path.write_text(json.dumps(data))
    return out


def _run(tiny, corpus, meta, ft_dir, extra):
    opts = finetune_overrides(corpus, meta, steps=4, every=2, k=2, extra=extra)
    upstream_ft(finetune_args("hubert_local", tiny["hubert"], "fold1", ft_dir, opts))
    return ft_dir / "fold1"


def _dev_lines(fold_dir: Path) -> dict[int, str]:
    lines = [line for line in (fold_dir / "log.log").read_text().splitlines() if line.startswith("dev at step")]
    return {int(line.split()[3].rstrip(":")): line for line in lines}


def test_attributes_only_selects_by_ccc_mean_and_records_the_targets(tiny_upstreams, mini_corpus, rated_meta, tmp_path):
    fold_dir = _run(
        tiny_upstreams,
        mini_corpus,
        rated_meta,
        tmp_path / "ft",
        "config.targets.categories=false,,config.targets.attributes=[arousal, valence]",
    )
    record = json.loads((fold_dir / "upstream.json").read_text())
    assert record["targets"]["attributes"] == ["arousal", "valence"] and not record["targets"]["categories"]
    assert record["targets"]["selection_metric"] == "ccc_mean"
    assert record["attribute_scale"] == {"arousal": SCALE, "valence": SCALE} and record["class_names"] == []
    # kept by dev ccc_mean: each kept step's score is the mean CCC its dev line logged
    kept = json.loads((fold_dir / "dev-top.json").read_text())
    lines = _dev_lines(fold_dir)
    assert sorted(lines) == [2, 4] and len(kept) == 2
    for entry in kept:
        assert f"ccc_mean {entry['score']:.4f} (arousal " in lines[entry["step"]]
    assert [c["dev_ccc_mean"] for c in record["checkpoints"]] == [e["score"] for e in kept]

    # the export carries what its head predicts, and its test figures are those of the file
    exported = safe_torch_load(fold_dir / "upstream.ckpt")
    assert exported["ft_targets"] == record["targets"]
    assert exported["ft_attribute_scale"] == {"arousal": SCALE, "valence": SCALE}
    assert exported["ft_class_names"] == []
    check_fine_tuned(fold_dir / "upstream.ckpt", "fold1")  # the fold guard as for categories
    with pytest.raises(FoldMismatchError):
        check_fine_tuned(fold_dir / "upstream.ckpt", "fold2")
    upstream = getattr(s3prl.hub, record["loader"])(ckpt=str(fold_dir / "upstream.ckpt"))
    model = FineTuneModel(upstream, 2, record["config"]["upstream"]["feature_selection"], "cpu").eval()
    model.head.load_state_dict(exported["ft_head"])
    items = json.loads((rated_meta / "Session1" / "test_meta_data.json").read_text())["meta_data"]
    datarc = record["config"]["datarc"]
    with torch.no_grad():
        outputs = model([load_audio(Path(datarc["root"]) / item["path"], min_samples=400) for item in items])
    assert outputs.shape == (len(items), 2)
    truth = np.array([[item["attributes"][a] or np.nan for a in ("arousal", "valence")] for item in items])
    expected = regression_report(truth, denormalise(outputs.double().numpy(), [SCALE, SCALE]), ["arousal", "valence"])
    test = record["test"]
    assert test["attributes"]["valence"]["n"] == int(np.isfinite(truth[:, 1]).sum()) < len(items)
    for name in ("arousal", "valence"):
        for metric in ("ccc", "pearson", "rmse"):
            assert test["attributes"][name][metric] == pytest.approx(
                expected.to_dict()["attributes"][name][metric], abs=1e-4
            )
    assert test["ccc_mean"] == pytest.approx(expected.ccc_mean, abs=1e-4)
    assert "wa" not in test


def test_both_targets_with_a_weighted_focal_loss_select_by_macro_f1(tiny_upstreams, mini_corpus, rated_meta, tmp_path):
    fold_dir = _run(
        tiny_upstreams,
        mini_corpus,
        rated_meta,
        tmp_path / "ft",
        "config.targets.attributes=[arousal],,config.targets.selection=macro_f1,,config.loss.class_weights=true,,"
        "config.loss.focal_gamma=2.0,,config.loss.balanced_sampler=true",
    )
    record = json.loads((fold_dir / "upstream.json").read_text())
    classes = record["class_names"]
    assert record["targets"]["selection_metric"] == "macro_f1" and len(classes) == 4
    exported = safe_torch_load(fold_dir / "upstream.ckpt")
    assert exported["ft_head"]["classifier.classifier.weight"].shape[0] == len(classes) + 1  # C logits + arousal
    assert {"wa", "ua", "macro_f1", "ccc_mean", "attributes", "confusion"} <= set(record["test"])
    assert all("dev_macro_f1" in c for c in record["checkpoints"])
    lines = _dev_lines(fold_dir)
    assert all(" wa " in line and " ccc_mean " in line for line in lines.values())
