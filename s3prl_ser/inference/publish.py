"""Upload a model directory to the Hugging Face Hub as a model repo (``huggingface_hub``'s API).

The directory already has the Hub layout (:mod:`s3prl_ser.inference.model_dir`). The upload is one
commit of the verified files only: ``config.json`` and ``config.sha256`` (checked against each
other), the weight files ``config.json`` records (each checked against its sha256) and the card
``README.md`` (a regular file, not a link). Nothing else in the directory is published, and a
modified directory is not published at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from s3prl_ser.inference.model_dir import CARD_FILE, CONFIG_FILE, DIGEST_FILE, ModelDirError, verify_model_dir

__all__ = ["hub_files", "push_model_dir"]


def hub_files(model_dir: str | os.PathLike) -> list[str]:
    """The files an upload publishes, sorted, after :func:`~s3prl_ser.inference.model_dir.verify_model_dir`.

    Raises:
        ModelDirError: the directory fails verification, or ``README.md`` is missing or a link.
    """
    root = Path(model_dir)
    config = verify_model_dir(root)
    card = root / CARD_FILE
    if card.is_symlink() or not card.is_file():
        raise ModelDirError(f"{card}: not a regular file; the model card is published as it is, so it must be one")
    return sorted([CONFIG_FILE, DIGEST_FILE, CARD_FILE, *config["files"]])


def push_model_dir(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload s3prl-ser model",
    api: Any = None,
) -> str:
    """Create (if needed) the model repo ``repo_id`` and upload ``model_dir``'s :func:`hub_files` to it
    in one commit; return the repo's URL.

    Args:
        model_dir: a directory written by ``python -m s3prl_ser.export`` (verified first).
        repo_id: ``USER/NAME`` or ``ORG/NAME``.
        private: create the repo private.
        token: a Hub token (default: ``huggingface_hub``'s login / ``HF_TOKEN``).
        commit_message: the upload's commit message.
        api: an ``huggingface_hub.HfApi`` (default: a new one with ``token``).

    Raises:
        ModelDirError: the directory fails verification (nothing is sent).
    """
    from huggingface_hub import CommitOperationAdd

    root = Path(model_dir)
    files = hub_files(root)  # refuse to publish a modified directory
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    repo = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    api.create_commit(
        repo_id=repo_id,
        repo_type="model",
        operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(root / name)) for name in files],
        commit_message=commit_message,
    )
    return str(getattr(repo, "url", repo))
