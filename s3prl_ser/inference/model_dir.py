"""The self-contained model directory: ``config.json`` + ``config.sha256`` + ``model.safetensors`` + ``README.md``.

Hugging Face Hub model-repo layout (:func:`s3prl_ser.inference.publish.push_model_dir` uploads it)::

    MODEL_DIR/config.json        what to build: upstreams, featurizers, classifiers, class names,
                                 sample rate; the sha256 of every weight file
    MODEL_DIR/config.sha256      the sha256 of config.json's canonical form (:func:`config_digest`)
    MODEL_DIR/model.safetensors  every tensor of the recognizer (upstream weights included)
    MODEL_DIR/README.md          model card, YAML metadata first
    MODEL_DIR/model.onnx         optional (``python -m s3prl_ser.export ... --onnx``)

:func:`write_model_dir` writes the directory atomically (a sibling temporary directory renamed
into place; one left behind by a killed export is removed by the next export to the same
place). :func:`verify_model_dir` refuses a directory whose ``config.json`` does not match
``config.sha256`` (an edited config: relabelled classes, another upstream) or whose files do
not match the digests ``config.json`` records (modified, truncated, or mixed from two
exports), naming the file. The digests guard against edits and mix-ups, not against someone
who rewrites both files on purpose; :func:`s3prl_ser.inference.upstream_spec.check_offline`
keeps even such a directory from reaching the network.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from s3prl_ser import fileio
from s3prl_ser.evaluated_strings import check_model_config
from s3prl_ser.fileio import sha256_file

__all__ = [
    "CONFIG_FILE",
    "DIGEST_FILE",
    "WEIGHTS_FILE",
    "CARD_FILE",
    "ONNX_FILE",
    "MODEL_FORMAT",
    "FORMAT_VERSION",
    "ModelDirError",
    "is_model_dir",
    "sha256_file",
    "config_digest",
    "check_writable",
    "write_model_dir",
    "read_model_config",
    "verify_model_dir",
    "read_model_dir",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
DIGEST_FILE = "config.sha256"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
ONNX_FILE = "model.onnx"
MODEL_FORMAT = "s3prl-ser-recognizer"
FORMAT_VERSION = 1


class ModelDirError(ValueError):
    """A model directory that cannot be loaded as it is; the message names the file and the problem."""


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory with a ``config.json`` of this format (contents unchecked).

    Example:
        >>> is_model_dir("no-such-directory")
        False
    """
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format") == MODEL_FORMAT
    except (ValueError, AttributeError):
        return False


def config_digest(config: Mapping[str, Any]) -> str:
    """Hex sha256 of ``config``'s canonical JSON: keys sorted, no spaces, ASCII only.

    Whitespace and key order of ``config.json`` do not change it; any value does.

    Example:
        >>> config_digest({"b": [1, "é"], "a": None}) == hashlib.sha256(b'{"a":null,"b":[1,"\\u00e9"]}').hexdigest()
        True
    """
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def check_writable(out: str | os.PathLike, overwrite: bool) -> None:
    """Whether :func:`write_model_dir` may write ``out`` (checked again there).

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is off, or it is not a model directory.
    """
    out = Path(out)
    if out.exists() and not (overwrite and is_model_dir(out)):
        raise FileExistsError(
            f"{out} exists"
            + ("; pass --overwrite to replace it" if is_model_dir(out) else " and is not a model directory")
        )


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 probes without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_stale_temporaries(out: Path) -> None:
    """Remove what killed exports to ``out`` left: ``.NAME.tmp-PID`` directories of dead processes,
    and ``.NAME.old-PID`` (the previous model, renamed aside while being replaced): deleted when
    ``out`` exists, else renamed back to ``out``, so that a kill mid-replacement loses nothing."""
    for leftover in sorted(out.parent.glob(f".{glob.escape(out.name)}.*-*")):
        kind, _, pid = leftover.name[len(out.name) + 2 :].rpartition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if kind == "old" and not out.exists() and is_model_dir(leftover):
            logger.warning("%s: restoring the model a killed export was replacing to %s", leftover, out)
            fileio.replace(leftover, out)
        else:
            logger.warning("%s: removing what a killed export (process %s) left", leftover, pid)
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()


def write_model_dir(
    out: str | os.PathLike,
    config: Mapping[str, Any],
    tensors: Mapping[str, Tensor],
    card: str,
    extra: Mapping[str, Callable[[Path], None]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model directory atomically.

    Args:
        out: the directory to create.
        config: JSON-able description (``format``, ``format_version`` and ``files`` are added);
            its digest goes into ``config.sha256``.
        tensors: the state dict to save in ``model.safetensors``.
        card: ``README.md`` text.
        extra: more weight files, ``{file name: writer(path)}`` (e.g. ``model.onnx``); hashed too.
        overwrite: replace an existing model directory (a directory of anything else is never replaced).

    Raises:
        FileExistsError: ``out`` exists (and is not a model directory to overwrite).
    """
    from safetensors.torch import save_file

    out = Path(out)
    if out.parent.is_dir():
        _remove_stale_temporaries(out)
    check_writable(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        save_file(plain, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        for name, writer in (extra or {}).items():
            writer(tmp / name)
        files = {
            name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
            for name in [WEIGHTS_FILE, *(extra or {})]
        }
        full = {"format": MODEL_FORMAT, "format_version": FORMAT_VERSION, **config, "files": files}
        (tmp / CONFIG_FILE).write_text(json.dumps(full, indent=1) + "\n", encoding="utf-8")
        (tmp / DIGEST_FILE).write_text(config_digest(full) + "\n", encoding="ascii")
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
        for file in tmp.iterdir():  # safetensors writes 0600 and mkdtemp-like dirs 0700: a model is shared
            file.chmod(0o644)
        tmp.chmod(0o755)
        fileio.sync_directory(tmp)  # all on disk before the rename makes it the model
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            fileio.replace(out, old)
            fileio.replace(tmp, out)
            shutil.rmtree(old)
        else:
            fileio.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_model_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a model directory, its format and version checked.

    Raises:
        ModelDirError: no or unreadable ``config.json``, another format, a newer version.
        UnsafeConfigError: an upstream's string that s3prl evaluates is outside its grammar
            (:func:`~s3prl_ser.evaluated_strings.check_model_config`).
    """
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise ModelDirError(f"{config_path}: not found; is {path} a directory written by `python -m s3prl_ser.export`?")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ModelDirError(f"{config_path}: not valid JSON ({error})") from error
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        raise ModelDirError(f"{config_path}: not an s3prl-ser model (format is {config.get('format')!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelDirError(
            f"{config_path}: format version {config.get('format_version')!r}; this s3prl-ser reads version {FORMAT_VERSION}"
        )
    check_model_config(config, config_path)  # digests or not: s3prl must never evaluate its strings
    return config


def verify_model_dir(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a model directory, verified against ``config.sha256``, and every file
    it records verified against its size and sha256.

    Raises:
        ModelDirError: see :func:`read_model_config`; ``config.sha256`` missing or not matching
            ``config.json``; a recorded file missing, of another size or digest, or not a
            plain file name of the directory.
    """
    path = Path(path)
    config = read_model_config(path)
    digest_file = path / DIGEST_FILE
    try:
        recorded = digest_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ModelDirError(
            f"{digest_file}: cannot read it ({error}), so {CONFIG_FILE} cannot be verified; "
            "re-export the model with `python -m s3prl_ser.export`"
        ) from error
    if config_digest(config) != recorded:
        raise ModelDirError(
            f"{path / CONFIG_FILE}: its digest differs from {DIGEST_FILE}'s: the config was edited "
            "(class names, upstreams, ...) or comes from another export"
        )
    files = config.get("files")
    if not isinstance(files, dict) or WEIGHTS_FILE not in files:
        raise ModelDirError(f"{path / CONFIG_FILE}: records no digest of {WEIGHTS_FILE}")
    for name, record in files.items():
        if not isinstance(record, dict) or name in (CONFIG_FILE, DIGEST_FILE, CARD_FILE) or name != Path(name).name:
            raise ModelDirError(f"{path / CONFIG_FILE}: files: {name!r} is not a weight file of the directory")
        file = path / name
        if not file.is_file():
            raise ModelDirError(f"{file}: missing (config.json lists it)")
        if file.stat().st_size != record.get("bytes"):
            raise ModelDirError(
                f"{file}: {file.stat().st_size} bytes, config.json records {record.get('bytes')}: "
                "the file was modified or comes from another export"
            )
        digest = sha256_file(file)
        if digest != record.get("sha256"):
            raise ModelDirError(
                f"{file}: sha256 {digest[:16]}... differs from config.json's {str(record.get('sha256'))[:16]}...: "
                "the file was modified or comes from another export"
            )
    return config


def read_model_dir(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, tensors)`` of a model directory, verified by :func:`verify_model_dir`.

    Raises:
        ModelDirError: see :func:`verify_model_dir`; ``model.safetensors`` is no safetensors file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    config = verify_model_dir(path)
    try:
        return config, load_file(str(path / WEIGHTS_FILE))
    except SafetensorError as error:
        raise ModelDirError(f"{path / WEIGHTS_FILE}: not a safetensors file ({error})") from error
