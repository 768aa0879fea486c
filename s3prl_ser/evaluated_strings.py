"""Strings from checkpoints and model directories that s3prl turns into code: validated first.

A weights-only load stops pickled code, but s3prl's builders also ``eval`` plain strings of
their configs, import modules and look up functions by name. A checkpoint or a model
directory's ``config.json`` can carry any string, so every such field is checked here before
s3prl sees it, and anything outside a strict grammar raises :class:`UnsafeConfigError` naming
the file and the field. The sinks (s3prl 0.4.18) and the check each gets:

============================================  ==============================================  =====================
field (found at any depth of the checkpoint)   s3prl reads it in                               accepted
============================================  ==============================================  =====================
``conv_feature_layers``                        ``eval``: HuBERT, wav2vec 2.0, data2vec, WavLM,  a conv layer spec:
                                               UniSpeech-SAT, LightHuBERT, MR-HuBERT, wav2vec   ``[(dim, kernel,
``extractor_conv_feature_layers``              ``eval``: DistilHuBERT (distiller)               stride), ...]`` of
``conv_aggregator_layers``                     ``eval``: wav2vec                                positive ints, with
                                                                                                ``+`` and ``* int``
``override_encoder_layers``                    ``eval``: MR-HuBERT                              ``""`` or a list of
                                                                                                positive ints
runner ``Config.optimizer.name``,              ``eval(f"get_{name}")`` in ``s3prl.optimizers``  a function of that
``Config.scheduler.name``                      / ``s3prl.schedulers``                           module
runner ``Config.optimizer.torch_optim_name``   ``getattr(torch.optim, name)``                   an Optimizer class
runner ``Args.downstream``                     ``import_module(f"s3prl.downstream.{name}...")``  an identifier
runner ``Config.downstream_expert.modelrc``    ``eval``: the stock downstreams' model classes   an identifier
``select`` / ``pooling`` / ``model_type``
baseline feature config (``-g``, a model       ``eval(f"torchaudio.compliance.kaldi.{t}")``     ``fbank``, ``mfcc``,
directory's ``model_config``): ``kaldi.                                                          ``spectrogram``; the
feat_type``                                                                                     YAML plain (safe_load)
============================================  ==============================================  =====================

Checkpoints are checked by :func:`s3prl_ser.compat.install`'s ``torch.load`` (every s3prl
loader and the project's own reads go through it), a model directory's ``config.json`` when it
is read (:func:`s3prl_ser.inference.model_dir.read_model_config`), and a ``-g`` file when an
upstream is built from it (:func:`s3prl_ser.upstreams.build.build_upstream`). Hub entry names
are checked where they are looked up (``build_upstream``; model directories:
:func:`s3prl_ser.inference.upstream_spec.check_offline`). s3prl's other ``eval`` calls read
module paths written in its own code (hooks), not configs.
"""

from __future__ import annotations

import argparse
import ast
import os
from collections.abc import Callable, Mapping
from typing import Any

import yaml

__all__ = [
    "UnsafeConfigError",
    "EVALUATED_FIELDS",
    "KALDI_FEATURES",
    "conv_layer_spec",
    "check_evaluated_fields",
    "check_feature_config",
    "check_model_config",
]

MAX_LAYERS = 1024  # far above any real model; bounds `[(...)] * N` before it is built

KALDI_FEATURES = ("fbank", "mfcc", "spectrogram")
"""The ``torchaudio.compliance.kaldi`` functions s3prl's baseline extractor may name (``kaldi.feat_type``)."""


class UnsafeConfigError(ValueError):
    """A config string that s3prl would evaluate (or look up by name) is not of the expected form.

    A ``ValueError``, so the command-line programs end with ``error: ...``.
    """


def _literal(node: ast.AST) -> Any:
    """Evaluate ints, tuples, lists, ``list + list`` and ``list * int``; refuse anything else."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_literal(element) for element in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _literal(node.left), _literal(node.right)
        if isinstance(node.op, ast.Add) and type(left) is type(right) and isinstance(left, (list, tuple)):
            if len(left) + len(right) <= MAX_LAYERS:
                return left + right
        if isinstance(node.op, ast.Mult):
            sequence, count = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(sequence, list) and isinstance(count, int) and 0 <= count * len(sequence) <= MAX_LAYERS:
                return sequence * count
    raise ValueError(
        f"it holds {type(node).__name__.lower()} {ast.unparse(node)[:40]!r}: only ints, tuples, lists, + and * int"
    )


def _parse(text: str) -> Any:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise ValueError(f"not an expression ({error.msg})") from None
    return _literal(tree.body)


def conv_layer_spec(text: str) -> list[tuple[int, int, int]]:
    """A conv layer spec (``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``) -> its ``(dim, kernel, stride)`` list.

    Raises:
        ValueError: anything else (the reason).

    Example:
        >>> conv_layer_spec("[(32, 10, 5)] + [(32, 3, 2)] * 2")
        [(32, 10, 5), (32, 3, 2), (32, 3, 2)]
        >>> conv_layer_spec("(__import__('os'), [(1, 1, 1)])[1]")
        Traceback (most recent call last):
        ...
        ValueError: it holds subscript "(__import__('os'), [(1, 1, 1)])[1]": only ints, tuples, lists, + and * int
    """
    layers = _parse(text)
    if not (isinstance(layers, list) and layers):
        raise ValueError("not a non-empty list")
    for layer in layers:
        if not (isinstance(layer, tuple) and len(layer) == 3 and all(x > 0 for x in layer)):
            raise ValueError(f"layer {layer!r} is not a (dim, kernel, stride) tuple of positive ints")
    return layers


def _layer_counts(text: str) -> list[int] | None:
    """MR-HuBERT's ``override_encoder_layers``: ``""`` (none) or a sequence of positive ints."""
    if text == "":
        return None
    counts = _parse(text)
    if not (isinstance(counts, (list, tuple)) and all(isinstance(c, int) and c > 0 for c in counts)):
        raise ValueError("not a list of positive ints")
    return list(counts)


EVALUATED_FIELDS: dict[str, tuple[Callable[[str], Any], str]] = {
    "conv_feature_layers": (conv_layer_spec, "a conv layer spec [(dim, kernel, stride), ...]"),
    "extractor_conv_feature_layers": (conv_layer_spec, "a conv layer spec [(dim, kernel, stride), ...]"),
    "conv_aggregator_layers": (conv_layer_spec, "a conv layer spec [(dim, kernel, stride), ...]"),
    "override_encoder_layers": (_layer_counts, 'a list of layer counts (or "")'),
}
"""Config fields s3prl's upstream builders pass to ``eval``: the parser that accepts them, and what it accepts."""


def _refuse(where: str, field: str, value: Any, expected: str, reason: str) -> UnsafeConfigError:
    shown = repr(value) if len(repr(value)) <= 160 else repr(value)[:157] + "..."
    return UnsafeConfigError(
        f"{where}: field {field} = {shown} is not {expected} ({reason}); s3prl would evaluate it as Python "
        "code, so the file is refused"
    )


def _check_field(where: str, field: str, key: str, value: Any) -> None:
    parse, expected = EVALUATED_FIELDS[key]
    if value is None:  # absent: s3prl uses its default
        return
    try:
        parse(value if isinstance(value, str) else str(value))  # the distiller evaluates str(value)
    except ValueError as error:
        raise _refuse(where, field, value, expected, str(error)) from None


def _identifier(where: str, field: str, value: Any, allowed: Callable[[str], bool] = lambda name: True) -> None:
    if not (isinstance(value, str) and value.isidentifier() and allowed(value)):
        raise _refuse(where, field, value, "a known name", "a plain identifier naming what s3prl looks up")


def _s3prl_function(module: str) -> Callable[[str], bool]:
    def allowed(name: str) -> bool:
        import importlib

        return callable(getattr(importlib.import_module(module), f"get_{name}", None))

    return allowed


def _torch_optimizer(name: str) -> bool:
    import torch

    found = getattr(torch.optim, name, None)
    return isinstance(found, type) and issubclass(found, torch.optim.Optimizer)


def _check_runner_names(state: Mapping[str, Any], where: str) -> None:
    """The names an s3prl runner checkpoint's ``Args`` and ``Config`` hand to eval, import or getattr."""
    args, config = state.get("Args"), state.get("Config")
    if isinstance(args, argparse.Namespace) and getattr(args, "downstream", None) is not None:
        _identifier(where, "Args.downstream", args.downstream)
    if not isinstance(config, Mapping):
        return
    for section, module in (("optimizer", "s3prl.optimizers"), ("scheduler", "s3prl.schedulers")):
        options = config.get(section)
        if isinstance(options, Mapping) and "name" in options:
            _identifier(where, f"Config.{section}.name", options["name"], _s3prl_function(module))
    options = config.get("optimizer")
    if isinstance(options, Mapping) and "torch_optim_name" in options:
        _identifier(where, "Config.optimizer.torch_optim_name", options["torch_optim_name"], _torch_optimizer)
    expert = config.get("downstream_expert")
    modelrc = expert.get("modelrc") if isinstance(expert, Mapping) else None
    stack = [("Config.downstream_expert.modelrc", modelrc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, Mapping):
            for key, item in value.items():
                if key in ("select", "pooling", "model_type") and isinstance(item, str):
                    _identifier(where, f"{path}.{key}", item)
                stack.append((f"{path}.{key}", item))


def check_evaluated_fields(state: Any, where: str | os.PathLike, root: str = "") -> None:
    """Check every field of ``state`` (a loaded checkpoint, or part of a ``config.json``) that
    s3prl evaluates: :data:`EVALUATED_FIELDS` at any depth of its dicts, lists and Namespaces,
    and, for a runner checkpoint (``Args`` and ``Config``), the names its runner looks up.

    Args:
        state: what ``torch.load`` or ``json.load`` returned (tensors are skipped).
        where: the file, for messages.
        root: the field path of ``state`` inside that file (``""`` for the whole file).

    Raises:
        UnsafeConfigError: a field outside its grammar (the file, the field and the value named).

    Example:
        >>> check_evaluated_fields({"model_cfg": {"conv_feature_layers": "[(512, 10, 5)] * 2"}}, "ok.pt")
        >>> check_evaluated_fields({"model_cfg": {"conv_feature_layers": "print(1) or [(1, 1, 1)]"}}, "t.pt")
        Traceback (most recent call last):
        ...
        s3prl_ser.evaluated_strings.UnsafeConfigError: t.pt: field model_cfg.conv_feature_layers = ...
    """
    where = os.fspath(where)
    if not root and isinstance(state, Mapping) and "Args" in state and "Config" in state:
        _check_runner_names(state, where)
    stack = [(root, state)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, argparse.Namespace):
            value = vars(value)
        if isinstance(value, Mapping):
            for key, item in value.items():
                field = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and key in EVALUATED_FIELDS:
                    _check_field(where, field, key, item)
                stack.append((field, item))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}[{index}]", item) for index, item in enumerate(value))


def check_feature_config(text: str, where: str | os.PathLike, field: str = "") -> None:
    """Check a baseline feature config (YAML text: a ``-g`` file, a model directory's
    ``model_config``): plain YAML, and a ``kaldi.feat_type`` in :data:`KALDI_FEATURES`.

    Raises:
        UnsafeConfigError: a YAML tag that builds Python objects, or another ``feat_type``.

    Example:
        >>> check_feature_config("kaldi:\\n  feat_type: fbank\\n  fbank: {num_mel_bins: 80}", "fbank.yaml")
        >>> check_feature_config("kaldi: {feat_type: 'fbank if print(1) else fbank'}", "x.yaml")
        Traceback (most recent call last):
        ...
        s3prl_ser.evaluated_strings.UnsafeConfigError: x.yaml: field kaldi.feat_type = ...
    """
    where, prefix = os.fspath(where), f"{field}: " if field else ""
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        reason = str(error).splitlines()[0]
        raise UnsafeConfigError(
            f"{where}: {prefix}not plain YAML ({reason}); s3prl reads it with a loader that builds "
            "Python objects from tags, so the file is refused"
        ) from None
    kaldi = config.get("kaldi") if isinstance(config, Mapping) else None
    if isinstance(kaldi, Mapping) and kaldi.get("feat_type", "fbank") not in KALDI_FEATURES:
        name = f"{field}.kaldi.feat_type" if field else "kaldi.feat_type"
        raise _refuse(where, name, kaldi["feat_type"], f"one of {', '.join(KALDI_FEATURES)}", "a kaldi feature")


def check_model_config(config: Mapping[str, Any], where: str | os.PathLike) -> None:
    """Check the upstream specs of a model directory's ``config.json`` (``upstreams[i][j]``):
    their embedded converted configs and baseline feature configs. Shapes are checked elsewhere.

    Raises:
        UnsafeConfigError: a field s3prl would evaluate, outside its grammar.
    """
    groups = config.get("upstreams")
    for i, group in enumerate(groups if isinstance(groups, list) else []):
        for j, spec in enumerate(group if isinstance(group, list) else []):
            if not isinstance(spec, Mapping):
                continue
            check_evaluated_fields(spec.get("converted"), where, f"upstreams[{i}][{j}].converted")
            if isinstance(spec.get("model_config"), str):
                check_feature_config(spec["model_config"], where, f"upstreams[{i}][{j}].model_config")
