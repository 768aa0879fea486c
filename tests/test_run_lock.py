"""One run at a time in a directory (s3prl_ser.training.run_lock): a second process is refused
with the holder named, the lock goes with the holder's ``with`` block or its process (a
SIGKILL included), and the commands take it: a training holding its experiment directory
refuses a second training and a cross-validation there, which leave its files untouched, and
the killed training then resumes."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import kill_at
from helpers import finetune_args, overrides, train_args
from s3prl_ser.cli.cross_validate import main as cross_validate
from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.cli.finetune import main as upstream_ft
from s3prl_ser.cli.run_downstream import main as run_downstream
from s3prl_ser.training import run_lock
from s3prl_ser.training.run_lock import DirectoryInUseError, DirectoryLock

# A process that holds locks on command, without the package (and torch) to import: "enter"
# and "exit" on stdin enter and leave one more (nested) DirectoryLock of argv[1].
HOLDER = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("run_lock", {run_lock.__file__!r})
module = sys.modules["run_lock"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
held = []
for line in sys.stdin:
    if line.strip() == "enter":
        held.append(module.DirectoryLock(sys.argv[1]))
        held[-1].__enter__()
    else:
        held.pop().__exit__(None, None, None)
    print("done", flush=True)
"""


class Holder:
    """Another process that enters and leaves locks of ``directory`` on command."""

    def __init__(self, directory: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def do(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "done\n", f"the holder failed to {command}"

    def kill(self) -> None:
        self.process.kill()
        assert self.process.wait() == -signal.SIGKILL

    def __enter__(self) -> "Holder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()


def refused(directory: Path) -> bool:
    try:
        with DirectoryLock(directory):
            return False
    except DirectoryInUseError:
        return True


def test_a_second_process_is_refused_with_the_holder_named(tmp_path):
    with Holder(tmp_path) as holder:
        holder.do("enter")
        with pytest.raises(DirectoryInUseError) as refusal, DirectoryLock(tmp_path):
            pass
        message = str(refusal.value)
        assert message.startswith(f"{tmp_path} is in use by another run (pid {holder.process.pid} on ")
        assert "-c" in message and str(tmp_path) in refusal.value.holder["command"]  # the holder's command line
        with pytest.raises(SystemExit, match=rf"^error: {tmp_path} is in use by another run"):
            with exit_on_error(), DirectoryLock(tmp_path):
                pass


def test_the_lock_is_re_entrant_in_a_process_and_free_when_the_outermost_block_exits(tmp_path):
    with Holder(tmp_path) as holder:
        holder.do("enter")
        holder.do("enter")  # nested in the same process: no refusal
        holder.do("exit")
        assert refused(tmp_path)  # the outer block still holds it
        holder.do("exit")
        assert not (tmp_path / ".lock").exists()  # removed on release
        assert not refused(tmp_path)  # free while the holder process lives on


def test_a_sigkilled_holder_leaves_no_stale_lock(tmp_path):
    with Holder(tmp_path) as holder:
        holder.do("enter")
        assert refused(tmp_path)
        holder.kill()
        assert str(holder.process.pid) in (tmp_path / ".lock").read_text()  # its record stays behind
        with DirectoryLock(tmp_path) as lock:
            assert f'"pid": {os.getpid()},' in lock.path.read_text()


def test_cross_validation_and_stage_1_are_refused_in_a_held_fold(tmp_path, mini_corpus, mini_meta):
    """A fold trained by another process: cross_validate refuses the whole run up front,
    upstream_ft refuses that fold (each fold, not FT_DIR: folds may run side by side)."""
    (tmp_path / "cv" / "fold2").mkdir(parents=True)
    (tmp_path / "ft" / "fold1").mkdir(parents=True)
    with Holder(tmp_path / "cv" / "fold2") as cv_fold, Holder(tmp_path / "ft" / "fold1") as ft_fold:
        cv_fold.do("enter")
        ft_fold.do("enter")
        argv = ["-p", str(tmp_path / "cv"), "--folds", "fold1,fold2", "-u", "fbank", "-d", "emotion_ecapa"]
        with pytest.raises(SystemExit, match=rf"^error: {tmp_path / 'cv' / 'fold2'} is in use by another run"):
            cross_validate([*argv, "--device", "cpu", "-o", overrides(mini_corpus, mini_meta)])
        assert not list((tmp_path / "cv" / "fold1").iterdir())  # nothing trained, its lock let go
        opts = f"config.datarc.root={mini_corpus},,config.datarc.meta_data={mini_meta}"
        with pytest.raises(SystemExit, match=rf"^error: {tmp_path / 'ft' / 'fold1'} is in use by another run"):
            upstream_ft(finetune_args("hubert_local", tmp_path / "unused.ckpt", "fold1", tmp_path / "ft", opts))


def files(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()}


@pytest.mark.usefixtures("one_thread")
def test_a_training_holds_its_directory_against_a_second_run_until_killed(tmp_path, mini_corpus, mini_meta, capsys):
    opts = overrides(mini_corpus, mini_meta, steps=6, every=2, k=2)
    argv = train_args(tmp_path, opts, extra=("-a",))
    first = kill_at.fork_run("stop", "3", "run_downstream", argv)  # a real training, stopped after update 3
    status = kill_at.wait(first, stopped=True)
    try:
        assert os.WIFSTOPPED(status), f"the first run ended (wait status {status}) instead of stopping"
        before = files(tmp_path)
        assert "states-2.ckpt" in before and "log.log" in before

        in_use = rf"^error: {tmp_path} is in use by another run \(pid {first} on "
        with pytest.raises(SystemExit, match=in_use):
            run_downstream(argv)  # a second training, resuming the first's states
        cross_validation = ["-p", str(tmp_path), "--folds", "fold1", "-u", "fbank", "-d", "emotion_ecapa"]
        with pytest.raises(SystemExit, match=in_use):
            cross_validate([*cross_validation, "--device", "cpu", "-o", opts])
        assert files(tmp_path) == before  # not a byte written, no fold directory made
    finally:
        os.kill(first, signal.SIGKILL)
        status = kill_at.wait(first)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    capsys.readouterr()

    run_downstream(argv)  # the documented resume, once the first run is gone
    assert f"Resume from {tmp_path / 'states-2.ckpt'}" in capsys.readouterr().err  # the command's log
    assert (tmp_path / "final.json").is_file() and (tmp_path / "test_fold1_metrics.json").is_file()
