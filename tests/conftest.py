"""Shared fixtures: the hand-written mini corpus and tiny upstream checkpoints."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import s3prl_ser  # noqa: F401  (applies the s3prl compatibility fixes before s3prl imports)

MINI_CORPUS = Path(__file__).parent / "data" / "iemocap_mini"


@pytest.fixture(scope="session", autouse=True)
def feature_cache_dir(tmp_path_factory):
    """The feature cache of every run in the tests (and their subprocesses): a temporary
    directory, never the user's ~/.cache."""
    import os

    from s3prl_ser.feature_cache.speech import CACHE_ENV

    directory = tmp_path_factory.mktemp("feature_cache")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(directory)
    yield directory
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture(autouse=True)
def progress_bars_restored(monkeypatch):
    """A command's ``-q`` run in-process turns progress bars off for the process (TQDM_DISABLE
    and tqdm's default, :func:`s3prl_ser.cli.logs.setup_logging`): undone after each test, so
    no test sees another's setting."""
    from tqdm import tqdm

    monkeypatch.setattr(tqdm, "__init__", tqdm.__init__)
    monkeypatch.setenv("TQDM_DISABLE", "")
    monkeypatch.delenv("TQDM_DISABLE")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared CPU: OpenMP threads spinning against each other cost 100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mini_corpus() -> Path:
    """A hand-written corpus in IEMOCAP's raw layout (see tests/data/README.md for its counts)."""
    return MINI_CORPUS


@pytest.fixture(scope="session")
def mini_meta(mini_corpus, tmp_path_factory) -> Path:
    """Meta data of the mini corpus (prepared once; tests must not modify it)."""
    from s3prl_ser.data.corpora.iemocap import prepare

    out = tmp_path_factory.mktemp("mini_meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the corpus has one labelled utterance without audio, on purpose
        prepare(mini_corpus, out)
    return out


@pytest.fixture(scope="session")
def tiny_upstreams(tmp_path_factory) -> dict[str, Path]:
    from s3prl_ser.toy.tiny_upstream import write_tiny_upstream

    root = tmp_path_factory.mktemp("tiny_upstreams")
    return {arch: write_tiny_upstream(arch, root / f"tiny_{arch}.pt") for arch in ("hubert", "wav2vec2")}
