"""Stage 2 with continuous attributes (issue 22): the multi-task model, the masked loss, selection by
a named dev metric, the imbalance options' wiring, and end-to-end runs whose metrics, predictions and
cross-validation report carry CCC per attribute and a scatter plot each."""

from __future__ import annotations

import csv
import importlib
import json
import math
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

import helpers
from helpers import overrides
from s3prl_ser.cli.cross_validate import main as cross_validate_main
from s3prl_ser.config import ConfigError
from s3prl_ser.data.sampler import ClassBalancedBatchSampler
from s3prl_ser.fileio import safe_torch_load
from s3prl_ser.models.fusion import EmotionClassifier, split_outputs
from s3prl_ser.training.losses import FocalLoss, ccc_loss
from s3prl_ser.training.metrics import concordance_correlation

ATTRIBUTES = ["arousal", "valence", "dominance"]
VALENCE = {"neu": 3.0, "hap": 4.5, "ang": 1.5, "sad": 2.0}


@pytest.fixture(scope="module")
def rated_meta(mini_corpus, tmp_path_factory) -> Path:
    """The mini corpus's meta data with varied attributes (:func:`helpers.rated_meta`; dominance
    unknown for the first turn of each dialog: masked)."""
    return helpers.rated_meta(mini_corpus, tmp_path_factory.mktemp("rated_meta"))


def _expert(tmp_path, mini_corpus, meta, **sections):
    from s3prl_ser.experiments.launch import load_task_config
    from s3prl_ser.upstreams.registry import register

    register()
    expert_class = importlib.import_module("s3prl.downstream.emotion_ecapa.expert").DownstreamExpert
    config = load_task_config("emotion_ecapa")["downstream_expert"]
    config["datarc"].update(root=str(mini_corpus), meta_data=str(meta), num_workers=0, test_fold="fold1")
    config["modelrc"]["aggregator"] = "mean"
    for name, values in sections.items():
        config[name].update(values)
    return expert_class(8, config, str(tmp_path), upstream_rate=160)


def test_multitask_model_shares_the_embedding_and_a_categorical_model_is_unchanged():
    torch.manual_seed(0)
    plain = EmotionClassifier([3], [160], 4, aggregator="mean")
    torch.manual_seed(0)
    same = EmotionClassifier([3], [160], 4, aggregator="mean", num_attributes=0)
    assert plain.state_dict().keys() == same.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(value, same.state_dict()[key])  # same draws, same weights: categorical runs as before
    multi = EmotionClassifier([3], [160], 4, aggregator="mean", num_attributes=2)
    streams = [[torch.randn(7, 3), torch.randn(5, 3)]]
    logits, attributes = split_outputs(multi(streams), 4)
    assert logits.shape == (2, 4) and attributes.shape == (2, 2)
    embedding = multi.embed(streams)  # one embedding, each output a row of the one linear layer
    torch.testing.assert_close(attributes, embedding @ multi.classifier.weight[4:].T + multi.classifier.bias[4:])
    assert multi.classifier.bias[4:].tolist() == [0.5, 0.5]  # the middle of the normalised scale
    only = EmotionClassifier([3], [160], 0, aggregator="mean", num_attributes=3)
    assert split_outputs(only(streams), 0)[0].shape == (2, 0)
    with pytest.raises(ValueError, match="need classes or attributes"):
        EmotionClassifier([3], [160], 0, aggregator="mean")


def test_loss_is_cross_entropy_plus_weighted_ccc_with_unknown_values_masked(tmp_path, mini_corpus, rated_meta):
    expert = _expert(tmp_path, mini_corpus, rated_meta, targets={"attributes": ATTRIBUTES, "attribute_weight": 0.5})
    label, values, _ = expert.train_dataset[0][1][0], expert.train_dataset[0][1][1], None
    assert isinstance(label, int) and values.shape == (3,)
    torch.manual_seed(0)
    features = [torch.randn(12, 8), torch.randn(9, 8), torch.randn(15, 8)]
    targets = np.array([[0.2, 0.9, np.nan], [0.5, 0.1, 0.3], [0.8, 0.4, 0.7]], dtype=np.float32)
    labels = [(0, targets[0]), (2, targets[1]), (3, targets[2])]
    records = defaultdict(list)
    outputs = expert.model([features])
    outputs.retain_grad()
    expert.model = _Returning(expert.model, outputs)
    loss = expert("train", features, labels, ("a", "b", "c"), records)
    logits, predicted = split_outputs(outputs, 4)
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2, 3]))
    # dominance: known for b and c only; 1 - CCC over those two
    by_hand = 0.0
    for a in range(3):
        known = ~np.isnan(targets[:, a])
        by_hand += 1 - concordance_correlation(predicted[known, a].detach().double().numpy(), targets[known, a])
    assert loss.item() == pytest.approx((expected + 0.5 * by_hand).item(), rel=1e-5)
    torch.testing.assert_close(loss, expected + 0.5 * ccc_loss(predicted, torch.as_tensor(targets)))
    loss.backward()
    assert outputs.grad[0, 4 + 2] == 0  # a's unknown dominance takes no part
    assert torch.all(outputs.grad[1:, 4 + 2] != 0) and torch.all(torch.isfinite(outputs.grad))
    assert len(records["attribute_truth"]) == 3 and records["truth"][0] == expert.class_names[0]


class _Returning(torch.nn.Module):
    """Stands in for the expert's model to hand back outputs already computed (to inspect their gradient)."""

    def __init__(self, model, outputs):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, streams):
        return self.outputs


def test_attributes_only_has_no_class_head_and_uses_mse(tmp_path, mini_corpus, rated_meta):
    expert = _expert(
        tmp_path,
        mini_corpus,
        rated_meta,
        targets={"categories": False, "attributes": ["valence"], "attribute_loss": "mse"},
    )
    assert expert.class_names == [] and expert.objective.class_loss is None
    assert expert.model.classifier.out_features == 1 and expert.targets.selection_metric == "ccc_mean"
    features = [torch.randn(10, 8), torch.randn(11, 8)]
    labels = [(-1, np.array([0.25], np.float32)), (-1, np.array([np.nan], np.float32))]
    records = defaultdict(list)
    loss = expert("train", features, labels, ("a", "b"), records)
    predicted = expert.model([features])[0, 0]
    assert loss.item() == pytest.approx(((predicted - 0.25) ** 2).item(), rel=1e-5)
    assert "truth" not in records and len(records["attribute_predict"]) == 2


def test_dev_selection_uses_the_named_metric(tmp_path, mini_corpus, rated_meta):
    """Two dev evaluations where accuracy and CCC disagree: ccc_valence keeps the step with the better
    CCC, the default (wa) the step with the better accuracy."""

    def records(correct: bool, valence: list[float]):
        r = defaultdict(list)
        names = expert.class_names
        r["truth"] = [names[0], names[1], names[2]]
        r["predict"] = list(r["truth"]) if correct else [names[1], names[2], names[0]]
        r["loss"] = [1.0]
        r["filename"] = ["u1", "u2", "u3"]
        r["attribute_truth"] = [np.array([0.5, v, np.nan]) for v in (0.1, 0.5, 0.9)]
        r["attribute_predict"] = [np.array([0.5, v, 0.5]) for v in valence]
        return r

    logger = type("Logger", (), {"add_scalar": lambda *args, **kwargs: None})()
    kept = {}
    for selection in ("ccc_valence", None):
        (tmp_path / str(selection)).mkdir()
        expert = _expert(
            tmp_path / str(selection),
            mini_corpus,
            rated_meta,
            targets={"attributes": ATTRIBUTES, "selection": selection},
            checkpoint_averaging={"best_k": 1},
        )
        good_acc_bad_ccc = expert.log_records("dev", records(True, [0.9, 0.5, 0.1]), logger, 10)
        bad_acc_good_ccc = expert.log_records("dev", records(False, [0.1, 0.5, 0.9]), logger, 20)
        kept[selection] = (good_acc_bad_ccc, bad_acc_good_ccc, [(e.step, e.score) for e in expert.best._read()])
    assert kept["ccc_valence"][1] == ["dev-top-step20.ckpt"] and kept["ccc_valence"][2] == [(20, 1.0)]
    assert kept[None][0] == ["dev-top-step10.ckpt"] and kept[None][1] == [] and kept[None][2] == [(10, 1.0)]
    metrics = json.loads((tmp_path / "None" / "dev_fold1_metrics.json").read_text())
    assert metrics["attributes"]["valence"]["ccc"] == pytest.approx(1.0)
    assert metrics["attributes"]["dominance"]["n"] == 0 and math.isnan(metrics["attributes"]["dominance"]["ccc"])
    assert metrics["attribute_scale"] == {a: [1.0, 5.0] for a in ATTRIBUTES}
    assert metrics["targets"]["selection_metric"] == "wa" and metrics["wa"] == 0.0
    rows = list(csv.DictReader((tmp_path / "None" / "dev_fold1_attributes.csv").open()))
    assert rows[0]["valence_true"] == "1.4" and rows[0]["valence_pred"] == "1.4"  # 1 + 0.1 * (5 - 1)
    assert rows[0]["dominance_true"] == "" and rows[2]["valence_pred"] == "4.6"


def test_imbalance_options_change_the_objective_and_the_sampler(tmp_path, mini_corpus, rated_meta):
    plain = _expert(tmp_path / "plain", mini_corpus, rated_meta)
    assert type(plain.objective.class_loss) is torch.nn.CrossEntropyLoss and plain.objective.class_loss.weight is None
    weighted = _expert(tmp_path / "w", mini_corpus, rated_meta, loss={"class_weights": True, "focal_gamma": 2.0})
    counts = np.bincount(weighted.train_dataset.labels(), minlength=4)
    focal = weighted.objective.class_loss
    assert isinstance(focal, FocalLoss) and focal.gamma == 2.0
    assert focal.weight.tolist() == pytest.approx([counts.sum() / (4 * n) if n else 0.0 for n in counts])
    assert not [key for key in weighted.state_dict() if key.startswith("objective")]  # checkpoints: the model only
    balanced = _expert(tmp_path / "b", mini_corpus, rated_meta, loss={"balanced_sampler": True})
    assert isinstance(balanced.get_dataloader("train").batch_sampler, ClassBalancedBatchSampler)
    assert not isinstance(plain.get_dataloader("train").batch_sampler, ClassBalancedBatchSampler)
    with pytest.raises(ConfigError, match="downstream_expert.loss options act on the class head"):
        _expert(
            tmp_path / "x",
            mini_corpus,
            rated_meta,
            targets={"categories": False, "attributes": ["arousal"]},
            loss={"class_weights": True},
        )


def test_multitask_cross_validation_reports_ccc_and_scatter_plots(mini_corpus, rated_meta, tmp_path):
    targets = "config.downstream_expert.targets.attributes=[arousal, valence, dominance]"
    argv = ["-p", str(tmp_path), "--folds", "fold1,fold3", "-u", "fbank", "-d", "emotion_ecapa", "--device", "cpu"]
    cross_validate_main([*argv, "-o", overrides(mini_corpus, rated_meta, steps=4, every=2, extra=targets)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["folds"]["fold1"]["num_utterances"] == 7 and sum(map(sum, results["confusion"])) == 11
    attributes = results["attributes"]
    assert attributes["names"] == ATTRIBUTES and attributes["scale"]["arousal"] == [1.0, 5.0]
    for fold in ("fold1", "fold3"):
        metrics = json.loads((tmp_path / fold / f"test_{fold}_metrics.json").read_text())
        assert attributes["folds"][fold]["arousal"] == metrics["attributes"]["arousal"]
        assert metrics["attributes"]["dominance"]["n"] < metrics["num_utterances"]  # the masked first turns
        final = json.loads((tmp_path / fold / "final.json").read_text())
        assert final["targets"]["attributes"] == ATTRIBUTES and final["selection_metric"] == "wa"
        assert final["attribute_scale"]["valence"] == [1.0, 5.0]
        rows = list(csv.DictReader((tmp_path / fold / f"test_{fold}_attributes.csv").open()))
        assert len(rows) == metrics["num_utterances"]
        assert all(1 <= float(r["valence_true"]) <= 5 for r in rows)  # on the corpus's scale
        assert sorted(float(r["valence_true"]) for r in rows) == sorted(
            VALENCE[line.split()[1]] for line in (tmp_path / fold / f"test_{fold}_truth.txt").read_text().splitlines()
        )
    folds = [attributes["folds"][f]["valence"]["ccc"] for f in ("fold1", "fold3")]
    assert attributes["mean"]["valence"]["ccc"]["mean"] == pytest.approx(np.mean(folds))
    assert attributes["mean"]["valence"]["ccc"]["std"] == pytest.approx(np.std(folds, ddof=1))
    assert attributes["ccc_mean"]["mean"] == pytest.approx(
        np.mean([attributes["folds"][f]["ccc_mean"] for f in ("fold1", "fold3")])
    )
    report = (tmp_path / "results.md").read_text()
    assert "| fold | CCC arousal | CCC valence | CCC dominance | CCC mean |" in report
    for name in ATTRIBUTES:
        assert (tmp_path / f"scatter_{name}.png").stat().st_size > 1000 and f"(scatter_{name}.png)" in report
    assert (tmp_path / "confusion.png").is_file()


def test_attributes_only_run_selects_by_ccc_and_reports_without_categories(mini_corpus, rated_meta, tmp_path):
    extra = (
        "config.downstream_expert.targets.categories=false,,"
        "config.downstream_expert.targets.attributes=[arousal, valence]"
    )
    argv = ["-p", str(tmp_path), "--folds", "fold1", "-u", "fbank", "-d", "emotion_ecapa", "--device", "cpu"]
    cross_validate_main([*argv, "-o", overrides(mini_corpus, rated_meta, steps=4, every=2, extra=extra)])
    fold = tmp_path / "fold1"
    final = json.loads((fold / "final.json").read_text())
    assert final["selection_metric"] == "ccc_mean" and set(final["selected"][0]) == {"step", "dev_ccc_mean", "file"}
    dev_lines = [line for line in (fold / "log.log").read_text().splitlines() if line.startswith("dev at step")]
    logged = {int(line.split()[3][:-1]): float(line.split("ccc_mean ")[1].split()[0]) for line in dev_lines}
    assert [e["dev_ccc_mean"] for e in final["selected"]] == pytest.approx(
        [logged[e["step"]] for e in final["selected"]], abs=1e-4
    )
    assert sorted(p.name for p in fold.glob("test_*")) == ["test_fold1_attributes.csv", "test_fold1_metrics.json"]
    metrics = json.loads((fold / "test_fold1_metrics.json").read_text())
    assert "wa" not in metrics and set(metrics["attributes"]) == {"arousal", "valence"}
    assert metrics["num_utterances"] == 7
    checkpoint = safe_torch_load(fold / "dev-avg.ckpt")
    assert checkpoint["ClassNames"] == [] and checkpoint["AttributeScale"] == {
        "arousal": [1.0, 5.0],
        "valence": [1.0, 5.0],
    }
    assert checkpoint["Targets"]["categories"] is False
    results = json.loads((tmp_path / "results.json").read_text())
    assert "wa" not in results and not (tmp_path / "confusion.png").exists()
    assert (tmp_path / "scatter_valence.png").is_file() and "Concordance correlation" in (
        tmp_path / "results.md"
    ).read_text()
    shutil.rmtree(fold)  # keep the session's temporary space small


@pytest.mark.parametrize(
    ("name", "categories", "attributes", "selection", "class_weights"),
    [
        ("attributes", False, ATTRIBUTES, "ccc_mean", False),
        ("multitask", True, ATTRIBUTES, "wa", False),
        ("msp_podcast_attributes", False, ATTRIBUTES, "ccc_mean", False),
        ("msp_podcast_categories", True, [], "macro_f1", True),
    ],
)
def test_task_files_merge_over_the_defaults(name, categories, attributes, selection, class_weights):
    from s3prl_ser.experiments.launch import load_task_config
    from s3prl_ser.training.targets import expert_targets
    from s3prl_ser.upstreams.registry import register

    register()
    path = Path(__file__).resolve().parents[1] / "downstream" / "emotion_ecapa" / f"{name}.yaml"
    targets, loss = expert_targets(load_task_config("emotion_ecapa", str(path))["downstream_expert"])
    assert (targets.categories, list(targets.attributes), targets.selection_metric) == (
        categories,
        attributes,
        selection,
    )
    assert loss.class_weights is class_weights and targets.attribute_loss == "ccc"
    assert f"-c downstream/emotion_ecapa/{name}.yaml" in path.read_text()  # the command it documents


def _fold(ccc: float, official: str | None = None) -> dict:
    attributes = {"arousal": {"ccc": ccc, "pearson": ccc + 0.1, "rmse": 1 - ccc, "n": 4}}
    corpus = {"name": "C", "num_folds": 1 if official else 2, "official_test": official}
    return {
        "attributes": attributes,
        "ccc_mean": ccc,
        "num_utterances": 4,
        "attribute_scale": {"arousal": [1, 7]},
        "corpus": corpus,
    }


def test_attribute_report_by_hand(tmp_path):
    from s3prl_ser.training.cv_report import summarize, write_report

    points = {"arousal": np.array([[1.0, 1.5], [3.0, 2.5], [np.nan, 4.0], [7.0, 6.0]])}
    summary = summarize({"fold1": _fold(0.5), "fold2": _fold(0.7)}, points)
    attributes = summary["attributes"]
    assert attributes["mean"]["arousal"]["ccc"] == pytest.approx({"mean": 0.6, "std": 0.2 / math.sqrt(2)})
    assert attributes["mean"]["arousal"]["rmse"]["mean"] == pytest.approx(0.4)
    assert attributes["ccc_mean"]["mean"] == pytest.approx(0.6)
    assert attributes["pooled_ccc"]["arousal"] == pytest.approx(
        concordance_correlation([1.5, 2.5, 6.0], [1.0, 3.0, 7.0])
    )
    paths = write_report(summary, tmp_path / "cv", "cv", points)
    text = paths["md"].read_text()
    assert "| **mean ± std** | **0.600 ± 0.141** | **0.600 ± 0.141** |" in text and "confusion" not in text
    assert set(paths) == {"json", "md", "scatter_arousal"} and paths["scatter_arousal"].stat().st_size > 1000
    official = write_report(summarize({"fold1": _fold(0.8, "Test1")}, points), tmp_path / "o", "o", points)
    text = official["md"].read_text()
    assert "| fold1 (official test Test1) | 0.800 | 0.800 |" in text and "Per attribute on Test1" in text
    assert "| arousal | 1-7 | 0.800 | 0.900 | 0.200 |" in text and "±" not in text


def test_inference_rows_carry_attributes_on_the_corpus_scale(tmp_path, mini_corpus, rated_meta):
    expert = _expert(tmp_path, mini_corpus, rated_meta, targets={"attributes": ["arousal", "valence"]})
    features = [torch.randn(10, 8), torch.randn(6, 8)]
    rows = expert.inference(features, ["a.wav", "b.wav"])
    logits, normalised = split_outputs(expert.model([features]).detach(), 4)
    assert rows[0]["label"] == expert.class_names[int(logits[0].argmax())]
    assert [rows[1]["attributes"][a] for a in ("arousal", "valence")] == pytest.approx((1 + 4 * normalised[1]).tolist())
    only = _expert(tmp_path, mini_corpus, rated_meta, targets={"categories": False, "attributes": ["valence"]})
    assert set(only.inference(features, ["a.wav", "b.wav"])[0]) == {"file", "attributes"}


def test_a_run_recorded_before_targets_existed_is_the_same_categorical_run():
    from s3prl_ser.training.run_identity import run_identity, significant_differences

    old = run_identity({"seed": 1}, {"downstream_expert": {"datarc": {"root": "/a"}}})
    new = run_identity({"seed": 1}, {"downstream_expert": {"datarc": {"root": "/a"}, **_DEFAULT_SECTIONS}})
    assert significant_differences(old, new) == []
    new["config"]["downstream_expert"]["targets"]["attributes"] = ["arousal"]
    assert significant_differences(old, new) == ["config.downstream_expert.targets.attributes: [] -> ['arousal']"]


_DEFAULT_SECTIONS = {
    "targets": {
        "categories": True,
        "attributes": [],
        "attribute_loss": "ccc",
        "attribute_weight": 1.0,
        "selection": None,
    },
    "loss": {"class_weights": False, "focal_gamma": 0.0, "balanced_sampler": False},
}


def test_macro_f1_selection_prefers_the_rare_class(tmp_path, mini_corpus, rated_meta):
    """Step 10 always says a (WA 0.75, macro-F1 0.43), step 20 finds the one b (WA 0.5, macro-F1 0.5)."""
    logger = type("Logger", (), {"add_scalar": lambda *args, **kwargs: None})()
    kept = {}
    for selection in ("macro_f1", "wa"):
        (tmp_path / selection).mkdir()
        expert = _expert(
            tmp_path / selection,
            mini_corpus,
            rated_meta,
            targets={"selection": selection},
            checkpoint_averaging={"best_k": 1},
        )
        a, b = expert.class_names[:2]
        for step, predicted in ((10, [a, a, a, a]), (20, [a, b, b, b])):
            records = defaultdict(list, truth=[a, a, a, b], predict=predicted, loss=[1.0], filename=list("wxyz"))
            expert.log_records("dev", records, logger, step)
        kept[selection] = [(e.step, round(e.score, 4)) for e in expert.best._read()]
    assert kept == {"macro_f1": [(20, 0.5)], "wa": [(10, 0.75)]}
