"""s3prl_ser.fileio: atomic, durable writes (a failed write keeps the previous file and leaves
no temporary; concurrent writers never share a temporary file; data and rename are fsync-ed)
and checked loads."""

import argparse
import json
import os
import threading

import pytest
import torch

from s3prl_ser import fileio


def test_atomic_save_keeps_previous_file_on_failure(tmp_path):
    path = tmp_path / "ckpt.pt"
    fileio.atomic_torch_save({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fileio.atomic_torch_save({"a": Unpicklable()}, path)
    assert torch.equal(torch.load(path)["a"], torch.ones(2))
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary left behind


def test_write_killed_midway_keeps_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "final.json"
    fileio.atomic_write_json(path, {"run": 1})

    def half_then_fail(handle):
        handle.write(b'{"run": ')  # half of the new content is on disk when the writer dies
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write(path, half_then_fail)
    assert fileio.read_json(path) == {"run": 1}
    assert os.listdir(tmp_path) == ["final.json"]


def test_concurrent_writers_use_their_own_temporary_files(tmp_path):
    """Two threads write the same target, both midway at once: with a shared temporary name one
    would truncate or rename away the other's file (its replace then fails or lands mixed)."""
    path = tmp_path / "table.txt"
    both_writing = threading.Barrier(2)
    temporaries, errors = [], []

    def writer(text: str) -> None:
        def write(handle):
            handle.write(text[:50].encode())
            temporaries.append(handle.name)
            both_writing.wait(timeout=10)
            handle.write(text[50:].encode())

        try:
            fileio.atomic_write(path, write)
        except BaseException as error:  # noqa: BLE001 (reported to the test thread below)
            errors.append(error)

    texts = ["a" * 100, "b" * 100]
    threads = [threading.Thread(target=writer, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(temporaries)) == 2
    assert path.read_text() in texts  # one writer's content, whole
    assert os.listdir(tmp_path) == ["table.txt"]


def test_writes_fsync_the_data_and_the_directory(tmp_path, monkeypatch):
    synced = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    fileio.atomic_write_text(tmp_path / "a.txt", "x")
    assert len(synced) == 2
    assert os.path.basename(synced[0]).startswith(".a.txt.") and synced[0].endswith(".tmp")  # the data
    assert synced[1] == str(tmp_path)  # then the directory holding the rename


def test_written_files_are_readable_by_others(tmp_path):
    fileio.atomic_write_bytes(tmp_path / "model.bin", b"x")
    assert (tmp_path / "model.bin").stat().st_mode & 0o777 == 0o644


def test_read_json_names_the_file(tmp_path):
    (tmp_path / "final.json").write_text('{"checkpoint": ')
    with pytest.raises(ValueError, match=r"final\.json: not a readable JSON file"):
        fileio.read_json(tmp_path / "final.json")
    fileio.atomic_write_json(tmp_path / "final.json", {"checkpoint": "dev-avg.ckpt"}, indent=1)
    assert json.loads((tmp_path / "final.json").read_text()) == {"checkpoint": "dev-avg.ckpt"}


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_safe_load_accepts_namespace_and_refuses_code(tmp_path):
    torch.save({"Args": argparse.Namespace(seed=1), "Step": 3}, tmp_path / "ok.ckpt")
    loaded = fileio.safe_torch_load(tmp_path / "ok.ckpt", weights_only=False)
    assert loaded["Args"].seed == 1 and loaded["Step"] == 3
    torch.save({"x": _Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(RuntimeError, match="cannot load checkpoint .*evil.ckpt"):
        fileio.safe_torch_load(tmp_path / "evil.ckpt")


def test_model_directory_files_are_synced_before_the_swap(tmp_path, monkeypatch):
    from s3prl_ser.inference.model_dir import write_model_dir

    synced = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_model_dir(tmp_path / "model", {"class_names": ["a"]}, {"w": torch.ones(2)}, "# card\n")
    staged = [name for name in synced if name not in (tmp_path.name, "model")]
    assert {"model.safetensors", "config.json", "README.md"} <= set(staged)
    assert synced[-1] == tmp_path.name  # the parent, after the rename
