"""Shared fixtures: the hand-written mini corpus and tiny upstream checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

import s3prl_ser  # noqa: F401  (applies the s3prl compatibility fixes before s3prl imports)

MINI_CORPUS = Path(__file__).parent / "data" / "iemocap_mini"


@pytest.fixture(scope="session")
def mini_corpus() -> Path:
    """A hand-written corpus in IEMOCAP's raw layout (see tests/data/README.md for its counts)."""
    return MINI_CORPUS


@pytest.fixture(scope="session")
def tiny_upstreams(tmp_path_factory) -> dict[str, Path]:
    from s3prl_ser.tiny_upstream import write_tiny_upstream

    root = tmp_path_factory.mktemp("tiny_upstreams")
    return {arch: write_tiny_upstream(arch, root / f"tiny_{arch}.pt") for arch in ("hubert", "wav2vec2")}
