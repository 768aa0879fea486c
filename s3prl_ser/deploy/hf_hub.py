"""Upload a model directory to the Hugging Face Hub as a model repo (``huggingface_hub``'s API).

The directory already has the Hub layout (``config.json``, ``model.safetensors``, ``README.md``
with YAML metadata; :mod:`s3prl_ser.deploy.model_dir`), so the upload is the folder as is,
after its digests are checked: a modified directory is not published.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from s3prl_ser.deploy.model_dir import read_model_dir

__all__ = ["hub_files", "push_model_dir"]


def hub_files(model_dir: str | os.PathLike) -> list[str]:
    """The files an upload publishes: everything in the directory but hidden files, sorted."""
    root = Path(model_dir)
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def push_model_dir(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload s3prl-ser model",
    api: Any = None,
) -> str:
    """Create (if needed) the model repo ``repo_id`` and upload ``model_dir`` to it; return its URL.

    Args:
        model_dir: a directory written by ``python -m s3prl_ser.export`` (verified first).
        repo_id: ``USER/NAME`` or ``ORG/NAME``.
        private: create the repo private.
        token: a Hub token (default: ``huggingface_hub``'s login / ``HF_TOKEN``).
        commit_message: the upload's commit message.
        api: an ``huggingface_hub.HfApi`` (default: a new one with ``token``).

    Raises:
        ModelDirError: the directory fails its digest check.
    """
    read_model_dir(model_dir)  # refuse to publish a modified directory
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    repo = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        folder_path=str(model_dir),
        repo_id=repo_id,
        repo_type="model",
        commit_message=commit_message,
        allow_patterns=hub_files(model_dir),
    )
    return str(getattr(repo, "url", repo))
