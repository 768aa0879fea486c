"""Installed package versions, recorded by runs, feature caches and exported models."""

from __future__ import annotations

import platform
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["installed_version", "installed_versions", "environment_record"]


def installed_version(package: str) -> str | None:
    """The installed version of distribution ``package``, or None when it is not installed.

    Example:
        >>> installed_version("torch") is not None, installed_version("no-such-package-xyz")
        (True, None)
    """
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def installed_versions(packages: Iterable[str]) -> dict[str, str | None]:
    """``{package: installed_version(package)}`` for each of ``packages``."""
    return {name: installed_version(name) for name in packages}


def _git_commit() -> str | None:
    """The checkout's commit when the package runs from a git work tree, else None."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment_record() -> dict[str, Any]:
    """Versions of the code and packages that produced a run (its ``versions_<tag>.yaml``)."""
    import torch  # here, so that reading versions needs no torch import

    packages = installed_versions(("s3prl-ser", "s3prl", "torch", "torchaudio", "numpy", "soundfile", "tensorboardX"))
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "packages": packages,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "command": sys.argv,
    }
