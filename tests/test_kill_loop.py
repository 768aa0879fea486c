"""Kill runs at random moments of saving, in a loop: every run resumes, and ends as if never
killed (README, "Exact resume").

The candidate moments are the writes of an uninterrupted run, in order: states files, k-best
checkpoints and record, dev and test predictions and metrics, the reported model, the final
record. Moments drawn with a fixed seed (printed) each kill a fresh run halfway through that
write (``tests/kill_at.py``: real SIGKILLs of forked processes); the documented command, the
same command again, then resumes it and must end with the uninterrupted run's kept
checkpoints, k-best record and test metrics, and no temporary file left behind.
"""

import json
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import kill_at
from helpers import finetune_args, overrides, train_args
from s3prl_ser.cli.cross_validate import main as cross_validate
from s3prl_ser.cli.run_downstream import main as run_downstream
from s3prl_ser.fileio import safe_torch_load
from upstream_ft.__main__ import main as upstream_ft

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SEED = 1
KILLS = 8  # stage 2; stage 1 once


def recorded_writes(run: Callable[..., object], *args: object) -> list[tuple[str, int]]:
    """Run ``run(*args)`` in this process; return its writes as ``(file name, k-th write)``."""
    writes: list[tuple[str, int]] = []
    undo = kill_at.intercept_writes(lambda name, k: writes.append((name, k)) or False)
    try:
        run(*args)
    finally:
        undo()
    return writes


def killed_while_writing(write: tuple[str, int], command: str, argv: list[str]) -> None:
    pid = kill_at.fork_run("write", f"{write[0]}:{write[1]}", command, argv)
    status = kill_at.wait(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{write}: not killed ({status})"


def draw(writes: list[tuple[str, int]], count: int) -> list[tuple[str, int]]:
    """``count`` writes drawn with :data:`SEED`: half of them checkpoints, so that whatever the
    seed, both checkpoints and records (k-best, final, metrics) are hit."""
    rng = random.Random(SEED)
    checkpoints = [write for write in writes if write[0].endswith(".ckpt")]
    others = [write for write in writes if write not in checkpoints]
    drawn = rng.sample(checkpoints, count // 2) + rng.sample(others, count - count // 2)
    print(f"kill moments (seed {SEED}, of {len(writes)} writes): {drawn}")
    return drawn


def kept(directory: Path) -> tuple[list[str], str]:
    return sorted(p.name for p in directory.glob("dev-top-step*.ckpt")), (directory / "dev-top.json").read_text()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*.tmp"))


def test_stage_2_resumes_after_a_kill_at_any_write(mini_corpus, mini_meta, tmp_path):
    opts = overrides(mini_corpus, mini_meta, steps=8, every=2, k=2)

    def argv(name: str) -> list[str]:
        return train_args(tmp_path / name, opts, extra=("-a",))

    writes = recorded_writes(run_downstream, argv("straight"))
    straight = tmp_path / "straight"
    assert ("states-8.ckpt", 1) in writes and writes[-1] == ("final.json", 1)
    metrics = json.loads((straight / "test_fold1_metrics.json").read_text())
    reported = safe_torch_load(straight / "dev-avg.ckpt")["Downstream"]
    for i, write in enumerate(draw(writes, KILLS)):
        run = tmp_path / f"kill{i}"
        killed_while_writing(write, "run_downstream", argv(run.name))
        run_downstream(argv(run.name))  # the documented command, again
        assert (run / "final.json").is_file(), write
        assert json.loads((run / "test_fold1_metrics.json").read_text()) == metrics, write
        assert kept(run) == kept(straight), write
        resumed = safe_torch_load(run / "dev-avg.ckpt")["Downstream"]
        assert all(torch.equal(resumed[key], value) for key, value in reported.items()), write
        assert not leftovers(run), write


def test_cross_validation_resumes_a_fold_killed_while_writing_its_final_record(mini_corpus, mini_meta, tmp_path):
    """final.json marks a finished fold: a kill halfway through it must leave none (it once
    left half a file, which cross_validate could not read, so the fold could not be resumed)."""
    opts = overrides(mini_corpus, mini_meta, steps=2, every=2, k=1)
    run_args = ["-u", "fbank", "-d", "emotion_ecapa", "--device", "cpu"]
    fold_opts = f"config.downstream_expert.datarc.test_fold=fold1,,{opts}"
    # fold1's training as cross_validate runs it
    fold1 = ["-m", "train", "-a", "-p", str(tmp_path / "fold1"), *run_args, "-o", fold_opts]
    killed_while_writing(("final.json", 1), "run_downstream", fold1)
    assert not (tmp_path / "fold1" / "final.json").exists()
    cross_validate(["-p", str(tmp_path), "--folds", "fold1", *run_args, "-o", opts])
    assert json.loads((tmp_path / "fold1" / "final.json").read_text())["checkpoint"] == "dev-avg.ckpt"
    assert (tmp_path / "results.json").is_file()


def test_stage_1_resumes_after_a_kill_at_a_write(tiny_upstreams, mini_corpus, mini_meta, tmp_path):
    """One drawn write, and the first write of FT_DIR/best/fold1/upstream.ckpt (the export of
    the single best beside the average): its temporary file was once left there for good."""
    opts = ",,".join(
        [
            f"config.datarc.root={mini_corpus}",
            f"config.datarc.meta_data={mini_meta}",
            "config.runner.total_steps=4",
            "config.runner.eval_step=2",
            "config.runner.save_step=2",
            "config.runner.log_step=2",
            "config.scheduler.warmup_steps=1",
            "config.upstream.freeze_transformer_steps=1",
            "config.datarc.num_workers=0",
            "config.datarc.train_batch_size=4",
            "config.checkpoint_averaging.best_k=2",
            "config.checkpoint_averaging.export_best=true",
        ]
    )

    def argv(name: str) -> list[str]:
        return finetune_args("hubert_local", tiny_upstreams["hubert"], "fold1", tmp_path / name, opts)

    writes = recorded_writes(upstream_ft, argv("straight"))
    straight = tmp_path / "straight"
    assert writes[-4:] == [("upstream.ckpt", 1), ("upstream.json", 1), ("upstream.ckpt", 2), ("upstream.json", 2)]
    for i, write in enumerate([*draw(writes, 1), ("upstream.ckpt", 1)]):
        killed = tmp_path / f"kill{i}"
        killed_while_writing(write, "upstream_ft", argv(killed.name))
        upstream_ft(argv(killed.name))  # the documented command, again
        for export in ("fold1", "best/fold1"):
            records = [json.loads((d / export / "upstream.json").read_text()) for d in (straight, killed)]
            assert records[1]["test"] == records[0]["test"], (write, export)
        assert kept(killed / "fold1") == kept(straight / "fold1"), write
        assert not leftovers(killed), write
