"""Export a trained run as a self-contained model directory (:mod:`s3prl_ser.inference.model_dir`).

Sources:

* one fold: ``RUN`` is a fold directory (its ``final.json``), or a cross-validation
  directory and ``fold`` names the fold;
* an ensemble: ``RUN`` is a cross-validation directory; every finished fold's reported
  model becomes a member, and probabilities (and attribute values) are averaged;
* the deployment model: ``RUN`` is the deployment run (``CV_DIR/deploy``, trained by
  ``python -m s3prl_ser.cli.cross_validate ... --deploy``), or the cross-validation directory
  and ``deploy``. It was trained on every fold's utterances, so it has no held-out score: its
  ``config.json`` (``held_out_score: null``) and model card say so, and no WA/UA is recorded
  (:mod:`s3prl_ser.experiments.deployment`).

``config.json`` records what the model predicts: ``class_names``, ``targets`` (the run's
:class:`~s3prl_ser.training.targets.TargetSpec` record) and ``attribute_scale`` (``{name: [low,
high]}`` of the attributes it predicts on the corpus's scale; ``{}`` without), all covered by
``config.sha256``. It records the source model's fold protocol under ``ser_protocol`` (one fold or
the deployment run), so that the fold guard refuses the directory as a fold's ``-k``
(:func:`s3prl_ser.data.protocol.check_fine_tuned`): a deployment model for every fold.
It also records ``training_audio``: digests of the audio every member learnt from (train and
dev lists), by which cross-corpus scoring refuses to score the model on that audio
(:mod:`s3prl_ser.data.training_audio`).

No absolute path of this machine is written: paths inside the run are recorded relative to it,
others (the corpus, a ``-k`` file) by their last component only (:func:`portable_paths`); the
upstreams' own configs are embedded as they are.

The upstream is rebuilt as the run built it (its ``-u``/``-k``, which must still be
reachable here), then its weights are embedded, so the directory loads anywhere offline.
Models reading transcripts are refused, and so are upstreams whose weights cannot be
embedded (:mod:`s3prl_ser.inference.upstream_spec` gives the reason).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from s3prl_ser.data.folds import DEPLOY_FOLD
from s3prl_ser.data.protocol import PROTOCOL_KEY, checkpoint_protocol
from s3prl_ser.data.training_audio import RECORD_KEY, training_audio_record
from s3prl_ser.fileio import safe_torch_load
from s3prl_ser.inference.model_card import FoldRecord, package_versions, render_card
from s3prl_ser.inference.model_dir import ONNX_FILE, write_model_dir
from s3prl_ser.inference.onnx import export_onnx
from s3prl_ser.inference.recognizer import EmotionRecognizer, resolve_checkpoint
from s3prl_ser.training.run_dir import FINAL_RECORD, RunDir

__all__ = ["ExportError", "portable_paths", "fold_dirs", "fold_record", "export_run"]


class ExportError(ValueError):
    """The run cannot be exported as asked; the message says why."""


def portable_paths(value: Any, run: Path) -> Any:
    """``value`` (JSON-like) with every absolute path made relative to ``run`` when inside it, else
    cut to its last component; a comma-separated string (``-k ,FILE``) part by part.

    Example:
        >>> portable_paths({"k": ",/data/x/tiny.pt", "ckpt": ["/runs/cv/fold1/dev-avg.ckpt"], "n": 3}, Path("/runs/cv"))
        {'k': ',tiny.pt', 'ckpt': ['fold1/dev-avg.ckpt'], 'n': 3}
    """
    if isinstance(value, dict):
        return {key: portable_paths(item, run) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable_paths(item, run) for item in value]
    if not isinstance(value, str) or "/" not in value:
        return value
    parts = value.split(",")
    for index, part in enumerate(parts):
        if os.path.isabs(part):
            resolved, base = Path(part).resolve(), run.resolve()
            parts[index] = resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else resolved.name
    return ",".join(parts)


def fold_dirs(run: Path) -> list[Path]:
    """Finished fold directories of a cross-validation directory (``<run>/<fold>/final.json``), by
    name; the deployment run (``<run>/deploy``) is no fold and never an ensemble member."""
    runs = [RunDir(p) for p in run.iterdir() if p.is_dir()]
    return sorted(r.path for r in runs if r.is_finished() and not r.is_deployment())


def fold_record(fold_dir: Path) -> FoldRecord:
    """What the model card needs from one fold run (its test score read from its metrics file)."""
    run = RunDir(fold_dir)
    ckpt_path = run.reported_checkpoint()
    ckpt = safe_torch_load(ckpt_path, mmap=True)
    args = vars(ckpt["Args"]) if hasattr(ckpt["Args"], "__dict__") else dict(ckpt["Args"])
    final = run.final()
    metrics = run.test_metrics()  # None for a deployment run, never tested
    test = {k: metrics.get(k) for k in ("wa", "ua", "macro_f1", "num_utterances")} if metrics else None
    if test is not None and metrics.get("attributes"):  # a model trained with attributes: their CCC
        test["ccc"] = {name: values.get("ccc") for name, values in metrics["attributes"].items()}
        test["ccc_mean"] = metrics.get("ccc_mean")
    versions = sorted(fold_dir.glob("versions_*.yaml"))
    fold = metrics.get("fold") if test else None
    return {
        "fold": fold or fold_dir.name,
        "run_dir": str(fold_dir.resolve()),
        "checkpoint": ckpt_path.name,
        "averaged": bool(final.get("averaged", True)),
        "test": test,
        "config": ckpt["Config"],
        "args": {k: v for k, v in args.items() if isinstance(v, (str, int, float, bool, type(None)))},
        "versions": yaml.safe_load(versions[-1].read_text()) if versions else None,
        "protocol": checkpoint_protocol(ckpt),
    }


def export_run(
    run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fold: str | None = None,
    ensemble: bool = False,
    deploy: bool = False,
    onnx: bool = False,
    overwrite: bool = False,
    title: str | None = None,
) -> Path:
    """Write the model directory ``out`` from the trained run ``run``.

    Args:
        run: a fold directory, or a cross-validation directory (then ``fold`` or ``ensemble``).
        out: the model directory to create.
        fold: which fold's reported model, in a cross-validation directory.
        ensemble: every finished fold's model, probabilities averaged.
        deploy: the deployment run ``run/deploy`` of a cross-validation directory (``run`` may
            also be that run itself); exported without any held-out score.
        onnx: also write ``model.onnx`` (:func:`s3prl_ser.inference.onnx.export_onnx`).
        overwrite: replace an existing model directory.
        title: the model card's title (default: the run directory's name).

    Raises:
        ExportError: nothing to export as asked, or the model cannot be made self-contained.
    """
    run = Path(run)
    if not run.is_dir():
        raise ExportError(f"{run}: no such run directory")
    if deploy and (ensemble or fold):
        raise ExportError("choose one of --fold, --ensemble and --deploy")
    if deploy and not RunDir(run).is_finished():
        if not RunDir(run / DEPLOY_FOLD).is_deployment():
            raise ExportError(
                f"{run / DEPLOY_FOLD}: no finished deployment run; train it with "
                f"`python -m s3prl_ser.cli.cross_validate -p {run} <the cross-validation's arguments> --deploy`"
            )
        run = run / DEPLOY_FOLD
    if RunDir(run).is_finished():
        if ensemble or fold:
            raise ExportError(f"{run} is one fold's run; --ensemble and --fold need the cross-validation directory")
        kind = "deployment" if RunDir(run).is_deployment() else "fold"
        if deploy and kind != "deployment":
            raise ExportError(f"{run} is a fold's run, not a deployment run (--deploy)")
        dirs = [run]
    else:
        found = fold_dirs(run)
        if not found:
            raise ExportError(f"{run}: neither a finished fold run ({FINAL_RECORD}) nor a directory of them")
        if ensemble == bool(fold):
            raise ExportError(
                f"{run} holds folds {', '.join(p.name for p in found)}: choose --fold FOLD or --ensemble (or --deploy: its deployment model)"
            )
        if fold:
            dirs = [p for p in found if p.name == fold]
            if not dirs:
                raise ExportError(f"{run}/{fold}: not a finished fold (finished: {', '.join(p.name for p in found)})")
            kind = "fold"
        else:
            dirs, kind = found, "ensemble"
    try:
        members = [EmotionRecognizer.from_checkpoint(resolve_checkpoint(d)) for d in dirs]
        recognizer = members[0] if len(members) == 1 else EmotionRecognizer.ensemble(members)
        description = recognizer.description()
    except ValueError as error:
        raise ExportError(f"{run}: {error}") from error
    records = portable_paths([fold_record(d) for d in dirs], run)
    config: dict[str, Any] = {
        **description,
        "members": portable_paths(description["members"], run),
        "source": {"kind": kind, "run": run.resolve().name, "folds": [r["fold"] for r in records]},
        "exported_with": package_versions(),
    }
    card_extra: dict[str, Any] = {"onnx": onnx}
    if description["attribute_scale"]:
        card_extra["attribute_scale"] = description["attribute_scale"]
    if kind == "deployment":
        recorded = RunDir(run).deployment_record()
        schedule = portable_paths(recorded, run) if recorded is not None else None
        config["held_out_score"] = None
        config["deployment"] = {
            "note": "trained on every utterance of the corpus (never an official test set); no held-out score: "
            "the cross-validation's scores estimate the training procedure, not this model",
            "schedule": schedule,
        }
        card_extra["held_out_score"] = None
        card_extra["schedule"] = schedule
    if len(records) == 1 and records[0].get("protocol"):
        config[PROTOCOL_KEY] = records[0]["protocol"]  # the fold guard reads it (a deployment model: refused)
    # Digests of the audio the members learnt from: cross-corpus scoring refuses to score on it.
    config[RECORD_KEY] = training_audio_record([resolve_checkpoint(d) for d in dirs])
    extra: dict[str, Callable[[Path], None]] = {}
    onnx_note: dict[str, Any] = {}
    if onnx:

        def write_onnx(path: Path) -> None:
            onnx_note.update(export_onnx(recognizer, path))

        extra[ONNX_FILE] = write_onnx
    config["onnx"] = onnx_note  # filled when model.onnx is written, before config.json
    default_title = f"{run.resolve().parent.name} (deployment model)" if kind == "deployment" else run.resolve().name
    card = render_card(title or default_title, kind, recognizer.class_names, records, card_extra)
    return write_model_dir(out, config, recognizer.state_dict(), card, extra, overwrite=overwrite)
