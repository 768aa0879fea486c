"""Exact resume in both stages: a run SIGKILLed mid-epoch, right after an epoch boundary's
states, or halfway through writing a states file, and resumed with the documented command
(the same command again), ends bit-identical to the uninterrupted run: the same kept
checkpoints, the same reported model, the same test metrics."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import finetune_args, torchrun, train_args
from helpers import overrides as downstream_overrides
from s3prl_ser.cli.run_downstream import main as run_downstream
from s3prl_ser.fileio import safe_torch_load
from upstream_ft.__main__ import main as upstream_ft

REPO = Path(__file__).resolve().parents[1]
KILL_AT = REPO / "tests" / "kill_at.py"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# fold1 trains on 13 utterances: 3 global batches of 4 an epoch (the 13th is dropped).
# SpecAugment draws from Python's and torch's RNGs, so only a restored RNG resumes exactly.
SPECAUG = (
    "config.specaug={apply_time_warp: true, time_warp_window: 2, apply_freq_mask: true, "
    "freq_mask_width_range: [0, 8], num_freq_mask: 1, apply_time_mask: true, "
    "time_mask_width_range: [0, 5], num_time_mask: 1}"
)
# Stage 2 (1 micro-batch an update, states every 2 updates): update 5 dies after the states
# of update 4 (micro-batch 4: inside epoch 1); update 7 after those of update 6 (micro-batch
# 6: the end of epoch 1); states-10 dies while saving, after those of update 8 (inside epoch 2);
# states-2 dies while saving the first states after training began, when the first dev
# evaluation has already written the k-best record: the run resumes from states-0.
# Stage 1 (2 micro-batches an update, so updates straddle epochs; states every 2 updates):
# update 3 after states-2 (micro-batch 4: inside epoch 1), update 7 after states-6
# (micro-batch 12: the end of epoch 3), states-4 dies while saving, after states-2; states-2
# as in stage 2.
KILLS = {
    "downstream": [("update", 5, 4), ("update", 7, 6), ("save", 10, 8), ("save", 2, 0)],
    "finetune": [("update", 3, 2), ("update", 7, 6), ("save", 4, 2), ("save", 2, 0)],
}


def kill(moment: str, n: int, command: str, argv: list[str]) -> None:
    # One thread, as the in-process runs (one_thread): float sums split across threads add up
    # in another order, which is a different run.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.run(
        [sys.executable, str(KILL_AT), moment, str(n), command, *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == -9, process.stderr[-3000:]


def states_steps(directory: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in directory.glob("states-*.ckpt"))


def assert_same_tensors(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        assert torch.equal(a[key], b[key]), f"{where}: {key}"


@pytest.fixture(scope="module")
def downstream(mini_corpus, mini_meta, tmp_path_factory):
    root = tmp_path_factory.mktemp("exact_downstream")
    opts = downstream_overrides(mini_corpus, mini_meta, steps=12, every=2, k=3, extra=SPECAUG)

    def argv(name: str) -> list[str]:
        return train_args(root / name, opts, extra=("-a",))

    run_downstream(argv("straight"))
    return root, argv


@pytest.mark.parametrize("moment, n, resumes_at", KILLS["downstream"])
def test_downstream_resumes_bit_identically(downstream, moment, n, resumes_at, capsys):
    root, argv = downstream
    run = root / f"{moment}{n}"
    kill(moment, n, "run_downstream", argv(run.name))
    assert states_steps(run) == [resumes_at] and not (run / "final.json").exists()
    assert bool(list(run.glob(".states-*.tmp"))) == (moment == "save")

    run_downstream(argv(run.name))  # the documented command, again
    assert f"Resume from {run / f'states-{resumes_at}.ckpt'}" in capsys.readouterr().err  # the command's log
    assert not list(run.glob(".*.tmp"))  # the interrupted save's leftover is gone
    straight = root / "straight"
    kept = sorted(p.name for p in straight.glob("dev-top-step*.ckpt"))
    assert kept == sorted(p.name for p in run.glob("dev-top-step*.ckpt")) and len(kept) == 3
    assert (straight / "dev-top.json").read_text() == (run / "dev-top.json").read_text()
    for name in [*kept, "dev-avg.ckpt", "states-12.ckpt"]:
        a, b = safe_torch_load(straight / name), safe_torch_load(run / name)
        assert (a["Step"], a["Micro"]) == (b["Step"], b["Micro"]), name
        for section in ("Downstream", "Featurizer"):
            assert_same_tensors(a[section], b[section], f"{name} [{section}]")
    metrics = [json.loads((d / "test_fold1_metrics.json").read_text()) for d in (straight, run)]
    assert metrics[0] == metrics[1]


def finetune_overrides(corpus: Path, meta: Path) -> str:
    return ",,".join(
        [
            f"config.datarc.root={corpus}",
            f"config.datarc.meta_data={meta}",
            "config.runner.total_steps=8",
            "config.runner.eval_step=2",
            "config.runner.save_step=2",
            "config.runner.log_step=2",
            "config.runner.gradient_accumulate_steps=2",
            "config.scheduler.warmup_steps=2",
            "config.upstream.freeze_transformer_steps=1",
            "config.optimizer.upstream_lr=1.0e-3",
            "config.datarc.num_workers=0",
            "config.datarc.train_batch_size=4",
            "config.checkpoint_averaging.best_k=2",
        ]
    )


@pytest.fixture(scope="module")
def finetune(tiny_upstreams, mini_corpus, mini_meta, tmp_path_factory):
    root = tmp_path_factory.mktemp("exact_finetune")

    def argv(name: str) -> list[str]:
        return finetune_args(
            "hubert_local", tiny_upstreams["hubert"], "fold1", root / name, finetune_overrides(mini_corpus, mini_meta)
        )

    upstream_ft(argv("straight"))
    return root, argv


@pytest.mark.parametrize("moment, n, resumes_at", KILLS["finetune"])
def test_finetuning_resumes_bit_identically(finetune, moment, n, resumes_at):
    root, argv = finetune
    kill(moment, n, "upstream_ft", argv(f"{moment}{n}"))
    fold = root / f"{moment}{n}" / "fold1"
    assert states_steps(fold) == [resumes_at] and not (fold / "upstream.json").exists()

    upstream_ft(argv(f"{moment}{n}"))  # the documented command, again
    log = (fold / "log.log").read_text()
    assert f"resumed from {fold / f'states-{resumes_at}.ckpt'} at step {resumes_at}" in log
    assert not list(fold.glob(".*.tmp"))
    straight = root / "straight" / "fold1"
    kept = sorted(p.name for p in straight.glob("dev-top-step*.ckpt"))
    assert kept == sorted(p.name for p in fold.glob("dev-top-step*.ckpt")) and len(kept) == 2
    assert (straight / "dev-top.json").read_text() == (fold / "dev-top.json").read_text()
    for name in [*kept, "upstream.ckpt"]:
        a, b = safe_torch_load(straight / name), safe_torch_load(fold / name)
        for section in ("model_weight", "ft_head"):
            assert_same_tensors(a[section], b[section], f"{name} [{section}]")
    tested = [json.loads((d / "upstream.json").read_text())["test"] for d in (straight, fold)]
    assert tested[0] == tested[1]


def test_two_process_run_resumes_bit_identically(mini_corpus, mini_meta, tmp_path):
    """Under torchrun (2 gloo processes) each process resumes with its own RNG states: with
    SpecAugment drawing different masks on each, the resumed run is the uninterrupted one."""
    opts = downstream_overrides(mini_corpus, mini_meta, steps=8, every=2, k=2, extra=SPECAUG)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def two_processes(script: Path, *args: str, name: str) -> subprocess.CompletedProcess:
        return torchrun(
            str(script),
            *args,
            *train_args(tmp_path / name, opts, extra=("-a",)),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    straight = two_processes(REPO / "run_downstream.py", name="straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = two_processes(KILL_AT, "update", "5", "run_downstream", name="resumed")
    assert killed.returncode != 0 and states_steps(tmp_path / "resumed") == [4]
    assert len(safe_torch_load(tmp_path / "resumed" / "states-4.ckpt")["RNG"]) == 2  # one per process
    resumed = two_processes(REPO / "run_downstream.py", name="resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("dev-avg.ckpt", "states-8.ckpt"):
        a, b = (safe_torch_load(tmp_path / run / name) for run in ("straight", "resumed"))
        for section in ("Downstream", "Featurizer"):
            assert_same_tensors(a[section], b[section], f"{name} [{section}]")
    metrics = [json.loads((tmp_path / run / "test_fold1_metrics.json").read_text()) for run in ("straight", "resumed")]
    assert metrics[0] == metrics[1]
