"""Installed package versions, recorded by runs, feature caches and exported models."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata

__all__ = ["installed_version", "installed_versions"]


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
