import json

import pytest

from s3prl_ser.config import ConfigError
from s3prl_ser.experiments.launch import load_task_config
from s3prl_ser.experiments.table1 import EXPERIMENTS, model_overrides, parse_experiments, write_tables
from s3prl_ser.fileio import safe_torch_load
from s3prl_ser.upstreams.registry import DOWNSTREAM_DIR, register

PAPER = DOWNSTREAM_DIR / "emotion_ecapa" / "paper"


def test_parse_experiments():
    assert parse_experiments("1-4,7,9-11") == [1, 2, 3, 4, 7, 9, 10, 11]
    assert parse_experiments("11,3,3") == [3, 11]
    assert parse_experiments("none") == []
    with pytest.raises(ConfigError, match="1-11, got \\[12\\]"):
        parse_experiments("10-12")
    with pytest.raises(ConfigError, match="cannot read 'x'"):
        parse_experiments("x")


@pytest.mark.parametrize("number", range(1, 12))
def test_paper_config_matches_table_row(number):
    experiment = EXPERIMENTS[number]
    register()
    # The experiment as run_downstream.py runs it: the file merged over emotion_ecapa's defaults.
    config = load_task_config("emotion_ecapa", str(PAPER / f"exp{number}.yaml"))["downstream_expert"]
    assert (PAPER / f"exp{number}.yaml").read_text().startswith(f"# Paper Table 1, experiment {number}:")
    assert config["modelrc"]["aggregator"] == experiment.aggregator.lower()
    assert config["checkpoint_averaging"]["average"] is experiment.downstream_avg
    speech = [s for s in experiment.streams if s != "bert"]
    expected_fusion = {"+": "early", "&": "late"}.get(next((c for c in "+&" if c in experiment.feature), ""), None)
    assert config["modelrc"]["fusion"] == expected_fusion
    assert config["text"]["speech"] is bool(speech)


def test_model_overrides_carry_the_experiment_keys():
    overrides = model_overrides(PAPER / "exp10.yaml")
    assert ("config.downstream_expert.modelrc.aggregator", "ecapa") in overrides
    assert ("config.downstream_expert.text.speech", False) in overrides
    assert ("config.downstream_expert.text.transcripts", None) in overrides
    assert ("config.downstream_expert.modelrc.fusion", "early") in model_overrides(PAPER / "exp7.yaml")
    exp1 = model_overrides(PAPER / "exp1.yaml")
    assert ("config.downstream_expert.checkpoint_averaging.average", False) in exp1
    assert ("config.downstream_expert.checkpoint_averaging.best_k", 1) in exp1  # the file's own key survives
    assert ("config.downstream_expert.checkpoint_averaging.best_k", 5) in model_overrides(PAPER / "exp3.yaml")
    # Keys a paper file leaves to the defaults are carried too, so --base-config cannot change them.
    assert {("config.downstream_expert.modelrc.fusion", None), ("config.downstream_expert.text.speech", True)} <= set(
        model_overrides(PAPER / "exp5.yaml")
    )


def test_paper_upstreams_by_default_and_base_one_flag_away(monkeypatch, tmp_path):
    import s3prl_ser.cli.table1 as table1

    calls = []

    def record(spec):  # stands in for the runs; writes the table the command prints
        calls.append(spec)
        (spec.out_dir / "table1.md").write_text("| table |\n")

    monkeypatch.setattr(table1, "run_table1", record)
    argv = ["-p", str(tmp_path), "--root", str(tmp_path), "--meta", str(tmp_path)]
    table1.main(argv)
    table1.main([*argv, "--base"])
    table1.main([*argv, "--base", "--hubert", "hubert_local:x.pt"])
    chosen = [(spec.wav2vec2, spec.hubert) for spec in calls]
    assert chosen == [
        ("wav2vec2_large_lv60_cv_swbd_fsh", "hubert_large_ll60k"),
        ("wav2vec2", "hubert"),
        ("wav2vec2", "hubert_local:x.pt"),
    ]
    register()
    import s3prl.hub as hub

    assert all(callable(getattr(hub, name)) for name in chosen[0])  # s3prl knows them


def test_tables_list_every_experiment_with_paper_numbers(tmp_path):
    summary = {"wa": {"mean": 60.0, "std": 1.5}, "ua": {"mean": 61.25, "std": 2.0}}
    paths = write_tables(tmp_path, {9: summary}, "Folds: fold1.", {"fbank": summary, "hubert_local": summary})
    md = paths["md"].read_text()
    assert "| 2 | 9 | S | Fbank | no | no | ECAPA | Linear | yes | 60.00 ± 1.50 | 61.25 ± 2.00 | 56.52 | 57.60 |" in md
    assert (
        "| 1.B | 7 | S | huBERT + W2V2 | yes | yes | ECAPA | Linear | yes | not run | not run | 77.36 | 77.76 |" in md
    )
    data = json.loads(paths["json"].read_text())
    assert data["9"]["ours"]["wa"]["mean"] == 60.0 and data["1"]["ours"] is None
    superb = paths["superb"].read_text()
    assert "| fbank | 35.39 | 60.00 ± 1.50 | 61.25 |" in superb and "| hubert | 64.92 | not run | |" in superb
    assert "| hubert_local | - | 60.00 ± 1.50 | 61.25 |" in superb  # an upstream off the leaderboard


def test_table1_command_runs_both_stages(mini_corpus, mini_meta, tiny_upstreams, tmp_path):
    """Experiments 2 (FT without averaging), 7 (early fusion of two FT upstreams) and 11
    (fbank & fine-tuned BERT) end to end on one fold, then a rerun that reuses everything."""
    from s3prl_ser.cli.table1 import main as table1
    from s3prl_ser.toy.tiny_bert import write_tiny_bert

    bert = write_tiny_bert(tmp_path / "bert")
    argv = [
        "--experiments",
        "2,7,11",
        "--superb",
        "fbank",
        "-p",
        str(tmp_path / "t1"),
        "--root",
        str(mini_corpus),
        "--meta",
        str(mini_meta),
        "--folds",
        "fold1",
        "--wav2vec2",
        f"wav2vec2_local:{tiny_upstreams['wav2vec2']}",
        "--hubert",
        f"hubert_local:{tiny_upstreams['hubert']}",
        "--bert",
        str(bert),
        "--base-config",
        str(DOWNSTREAM_DIR / "emotion_ecapa" / "config_builtin.yaml"),
        "-o",
        "config.runner.total_steps=4,,config.runner.eval_step=2,,config.runner.save_step=2,,"
        "config.downstream_expert.datarc.train_batch_size=4",
        "--ft-override",
        "config.runner.total_steps=4,,config.runner.eval_step=2,,config.runner.save_step=2,,"
        "config.scheduler.warmup_steps=1,,config.datarc.num_workers=0,,config.datarc.train_batch_size=4",
    ]
    table1(argv)
    out = tmp_path / "t1"
    # One stage-1 run per base model: experiment 2's single best comes from the run experiment 7 averages.
    assert sorted(p.name for p in (out / "upstream_ft").iterdir()) == ["bert", "hubert", "wav2vec2"]
    hubert = out / "upstream_ft" / "hubert"
    best = json.loads((hubert / "best" / "fold1" / "upstream.json").read_text())
    kept = json.loads((hubert / "fold1" / "dev-top.json").read_text())
    assert best["averaged"] is False and [c["step"] for c in best["checkpoints"]] == [kept[0]["step"]]
    for base in ("hubert", "wav2vec2", "bert"):
        assert json.loads((out / "upstream_ft" / base / "fold1" / "upstream.json").read_text())["averaged"] is True
    final2 = json.loads((out / "exp2" / "fold1" / "final.json").read_text())
    assert final2["checkpoint"] == "dev-best.ckpt" and len(final2["selected"]) == 1  # best_k 1 kept over --base-config
    data = json.loads((out / "table1.json").read_text())
    assert {n for n, row in data.items() if row["ours"]} == {"2", "7", "11"}
    assert data["7"]["ours"]["folds"]["fold1"]["num_utterances"] == 7
    superb = json.loads((out / "superb" / "fbank" / "results.json").read_text())
    assert superb["folds"]["fold1"]["num_utterances"] == 7
    assert json.loads((out / "superb" / "fbank" / "fold1" / "final.json").read_text())["checkpoint"] == "dev-best.ckpt"
    superb_model = safe_torch_load(out / "superb" / "fbank" / "fold1" / "dev-best.ckpt")["Downstream"]
    assert superb_model["model.aggregators.0.projector.weight"].shape == (256, 240)  # s3prl's projector on fbank
    assert "| fbank | 35.39 |" in (out / "superb_er.md").read_text()
    mtime = (out / "exp7" / "fold1" / "dev-avg.ckpt").stat().st_mtime_ns
    table1(argv)  # everything finished: reused, not retrained
    assert (out / "exp7" / "fold1" / "dev-avg.ckpt").stat().st_mtime_ns == mtime


def test_attribute_table_cells_are_the_folds_test_ccc(tiny_upstreams, tmp_path):
    """``--targets attributes`` on the built-in corpus (its prosody's arousal/valence/dominance):
    stage 1 and stage 2 learn the attributes, and each CCC cell is the mean ± sample std of the
    folds' own test metrics files."""
    import shutil
    import statistics
    import warnings

    from s3prl_ser.cli.table1 import main as table1
    from s3prl_ser.data.corpora.iemocap import prepare
    from s3prl_ser.toy.builtin_corpus import generate_corpus

    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are required to synthesise the corpus")
    corpus = generate_corpus(tmp_path / "corpus", seed=0, utterances_per_speaker=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(corpus, tmp_path / "meta")
    short = "config.runner.total_steps=4,,config.runner.eval_step=2,,config.runner.save_step=2"
    out = tmp_path / "t1"
    table1(
        ["--experiments", "2,9", "--targets", "attributes", "-p", str(out), "--root", str(corpus)]
        + [
            "--meta",
            str(tmp_path / "meta"),
            "--folds",
            "fold1,fold2",
            "--hubert",
            f"hubert_local:{tiny_upstreams['hubert']}",
        ]
        + ["--base-config", str(DOWNSTREAM_DIR / "emotion_ecapa" / "config_builtin.yaml")]
        + ["-o", f"{short},,config.downstream_expert.datarc.train_batch_size=4"]
        + ["--ft-override", f"{short},,config.scheduler.warmup_steps=1,,config.datarc.num_workers=0"]
    )
    names = ["arousal", "valence", "dominance"]
    stage1 = json.loads((out / "upstream_ft" / "hubert" / "best" / "fold1" / "upstream.json").read_text())
    assert stage1["targets"]["attributes"] == names and stage1["targets"]["categories"] is False
    table = (out / "table1.md").read_text()
    assert "| WA (%) | UA (%) | CCC arousal | CCC valence | CCC dominance | CCC mean | paper WA | paper UA |" in table
    for number in (2, 9):
        metrics = [
            json.loads((out / f"exp{number}" / fold / f"test_{fold}_metrics.json").read_text())
            for fold in ("fold1", "fold2")
        ]
        assert metrics[0]["targets"]["selection_metric"] == "ccc_mean" and "wa" not in metrics[0]
        by_hand = [[m["attributes"][name]["ccc"] for m in metrics] for name in names]
        by_hand.append([m["ccc_mean"] for m in metrics])
        cells = " | ".join(f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" for v in by_hand)
        row = next(
            line for line in table.splitlines() if line.startswith(f"| {'1.A' if number == 2 else '2'} | {number} |")
        )
        assert row.endswith(
            f"| - | - | {cells} | {EXPERIMENTS[number].paper_wa:.2f} | {EXPERIMENTS[number].paper_ua:.2f} |"
        )
    assert "| 1.A | 1 | S | W2V2 | yes | no | Mean | Linear | no | not run | not run | not run |" in table
    assert "CCC: mean ± sample std over the folds run" in table and "no published counterpart" in table
    ours = json.loads((out / "table1.json").read_text())["9"]["ours"]["attributes"]
    assert ours["mean"]["arousal"]["ccc"]["mean"] == pytest.approx(statistics.mean(by_hand[0][:2]))
