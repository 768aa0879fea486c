"""One fold end to end: fine-tune (or resume), export the k best (averaged), test once, record.

The test split is scored exactly once, on the exported model, after everything it could
influence is fixed; its numbers go to the metadata only. The metadata, every kept checkpoint
and the export record what the head predicts (``targets``, and each attribute's scale).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from s3prl_ser.data.fold_data import load_fold_data
from s3prl_ser.data.folds import fold_session
from s3prl_ser.data.protocol import FT_METADATA, PROTOCOL_KEY, check_fine_tuned
from s3prl_ser.fileio import read_json, safe_torch_load
from s3prl_ser.finetuning.config import config_targets
from s3prl_ser.finetuning.hub_entries import FT_CHECKPOINT, LOADER_KEY
from s3prl_ser.finetuning.model import FineTuneModel, TextFineTuneModel, configure_feature_encoder
from s3prl_ser.finetuning.trainer import FoldTrainer
from s3prl_ser.finetuning.upstream_checkpoint import (
    ATTRIBUTE_SCALE_KEY,
    TARGETS_KEY,
    export_fold,
    read_base_fields,
    write_metadata,
)
from s3prl_ser.models.text_encoder import TextEncoder, load_transcripts
from s3prl_ser.training.distributed import Distributed
from s3prl_ser.training.run_identity import describe, significant_differences
from s3prl_ser.training.states import seed_everything
from s3prl_ser.upstreams.exportable import export_loader, load_upstream

__all__ = ["TEXT", "exported_metadata", "best_export_dir", "run_fold"]

TEXT = "text"  # -u text: fine-tune a Hugging Face text encoder (-k DIR) on the transcripts


def exported_metadata(fold_dir: Path, requested: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The fold's metadata if its export is complete (checkpoint and metadata), else None.

    Args:
        requested: ``{"base_upstream", "base_ckpt", "config", "seed"}`` of the run asking; an
            export made with other values raises ``ValueError`` instead of being reused.
    """
    checkpoint, metadata = fold_dir / FT_CHECKPOINT, fold_dir / FT_METADATA
    if not (checkpoint.is_file() and metadata.is_file()):
        return None
    record = read_json(metadata)
    if requested is not None:
        changed = significant_differences({key: record.get(key) for key in requested}, requested)
        if changed:
            raise ValueError(
                f"{fold_dir} was exported with other settings ({describe(changed)}): "
                "use another -p FT_DIR, or move that fold away to redo it"
            )
    return record


def _text_model(
    encoder_dir: str | None, config: Mapping[str, Any], num_outputs: int, device: str
) -> tuple[TextFineTuneModel, dict[str, Any], Path]:
    """The text fine-tuning model and the configs its checkpoints carry (for averaging checks)."""
    if encoder_dir is None:
        raise ValueError("-u text needs -k DIR: a local Hugging Face text encoder (e.g. a saved BERT)")
    datarc = config["datarc"]
    source = Path(datarc["transcripts"] or Path(datarc["meta_data"]) / "transcripts.json")
    encoder = TextEncoder(encoder_dir)
    model = TextFineTuneModel(
        encoder,
        load_transcripts(source),
        str(source),
        num_outputs,
        config["upstream"]["feature_selection"],
        device,
    )
    model_cfg = json.loads(encoder.model.config.to_json_string())
    return model, {"task_cfg": {"modality": TEXT, "base": str(encoder_dir)}, "model_cfg": model_cfg}, Path(encoder_dir)


def best_export_dir(fold_dir: Path) -> Path:
    """Where ``checkpoint_averaging.export_best`` writes the single best checkpoint of the run in
    ``fold_dir``: ``FT_DIR/best/<fold>/``, so ``-u <base>_ft_avg -k FT_DIR/best`` loads it."""
    return fold_dir.parent / "best" / fold_dir.name


def run_fold(
    upstream_name: str,
    upstream_ckpt: str | None,
    fold: str,
    config: Mapping[str, Any],
    fold_dir: Path,
    *,
    device: str,
    dist: Distributed,
    seed: int,
    environment: Mapping[str, Any],
) -> dict[str, Any] | None:
    """Fine-tune, export and test ``fold`` in ``fold_dir``; return its metadata (rank 0; else None).

    With ``checkpoint_averaging.export_best`` (and ``average``), the same run's single best
    checkpoint is exported and tested too, in :func:`best_export_dir`.

    Raises:
        UnsupportedUpstreamError: the upstream cannot be exported (before any training).
        FoldMismatchError, ProtocolMismatchError: the starting checkpoint was fine-tuned on
            another fold, corpus or split.
    """
    fold_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    targets, loss = config_targets(config)
    data = load_fold_data(config["datarc"], fold, read_audio=upstream_name != TEXT, **targets.fold_data_options())
    # One linear head: C class logits (none without categories), then A attribute predictions.
    class_names = list(data.class_names) if targets.categories else []
    num_outputs = len(class_names) + targets.num_attributes
    if upstream_name == TEXT:
        if upstream_ckpt is not None:
            check_fine_tuned(upstream_ckpt, data.protocol)  # e.g. another fold's text export
        model, base_fields, base_file = _text_model(upstream_ckpt, config, num_outputs, device)
        loader = TEXT
    else:
        loaded = load_upstream(upstream_name, upstream_ckpt, data.protocol)
        loader = export_loader(loaded)
        base_fields, base_file = read_base_fields(loaded.source_file), loaded.source_file
        configure_feature_encoder(loaded.expert, config["upstream"]["freeze_feature_encoder"])
        model = FineTuneModel(loaded.expert, num_outputs, config["upstream"]["feature_selection"], device)
    attribute_scale = {name: list(data.attribute_scale[name]) for name in targets.attributes}
    # Every checkpoint of the fold carries what it was trained on (the fold guard reads it) and
    # what its head predicts.
    stamp = {
        PROTOCOL_KEY: data.protocol.to_dict(),
        LOADER_KEY: loader,
        TARGETS_KEY: targets.to_dict(),
        ATTRIBUTE_SCALE_KEY: attribute_scale,
    }
    # The schedule (config.runner) may change on resume, e.g. to train longer; nothing else may,
    # nor the accumulation, since the saved position counts micro-batches.
    identity = {
        "fold": fold,
        "protocol": data.protocol.to_dict(),
        "upstream": upstream_name,
        "upstream_ckpt": upstream_ckpt,
        "world_size": dist.world_size,
        "seed": seed,
        "gradient_accumulate_steps": config["runner"]["gradient_accumulate_steps"],
        "config": {key: value for key, value in config.items() if key != "runner"},
    }
    trainer = FoldTrainer(
        model,
        data,
        config,
        fold_dir,
        targets=targets,
        loss=loss,
        base_fields={**base_fields, **stamp},
        identity=identity,
        device=device,
        dist=dist,
        seed=seed,
    )
    try:
        trainer.log(
            f"splits: train {len(data.train)}, dev {len(data.dev)} ({config['datarc']['split']} split), "
            f"test {fold_session(fold)} ({len(data.test)})"
        )
        trainer.train()
        if not dist.is_leader:
            return None
        averaging = config["checkpoint_averaging"]
        provenance = {
            "base_upstream": upstream_name,
            "base_ckpt": upstream_ckpt,
            "base_checkpoint_file": str(base_file),
            "loader": loader,
            "modality": "text" if loader == TEXT else "speech",
            "fold": fold,
            "test_session": fold_session(fold),
            "protocol": data.protocol.to_dict(),
            "class_names": class_names,
            "targets": targets.to_dict(),
            "attribute_scale": attribute_scale,
            "split_sizes": {"train": len(data.train), "dev": len(data.dev), "test": len(data.test)},
            "config": config,
            "seed": seed,
            "environment": dict(environment),
        }
        # The extra export first: the main upstream.json, written last, marks the fold finished.
        if averaging["average"] and averaging["export_best"]:
            _export_and_test(trainer, False, stamp, provenance, best_export_dir(fold_dir))
        return _export_and_test(trainer, averaging["average"], stamp, provenance, fold_dir)
    finally:
        trainer.close()


def _export_and_test(
    trainer: FoldTrainer, average: bool, stamp: Mapping[str, Any], provenance: Mapping[str, Any], out_dir: Path
) -> dict[str, Any]:
    """Export the run's k best (averaged) or its best to ``out_dir``, score the test split once on
    the file as written, and record both in ``out_dir/upstream.json``."""
    model, config = trainer.model, trainer.config
    export = export_fold(
        trainer.fold_dir, config["checkpoint_averaging"]["best_k"], average, trainer.class_names, stamp, out_dir
    )
    # Score the file as written, so the reported numbers belong to the exported model.
    exported = safe_torch_load(export.path)
    model.upstream.model.load_state_dict(exported["model_weight"])
    model.head.load_state_dict(exported["ft_head"])
    if provenance["loader"] == TEXT:  # the downstream's text stream reads a Hugging Face directory
        encoder = model.upstream.model
        encoder.config.update({PROTOCOL_KEY: stamp[PROTOCOL_KEY]})  # the fold guard reads config.json
        encoder.save_pretrained(str(out_dir / "text_encoder"))
        model.upstream.tokenizer.save_pretrained(str(out_dir / "text_encoder"))
    evaluation = trainer.evaluate("test")
    trainer.log(
        f"test of the exported model in {out_dir} ({'average of' if export.averaged else 'best of'} steps "
        f"{[e.step for e in export.entries]}): {evaluation.summary()}"
    )
    selected_by = f"dev_{trainer.targets.selection_metric}"  # dev_wa by default
    record = {
        **provenance,
        "averaged": export.averaged,
        "checkpoints": [{"step": e.step, selected_by: e.score, "file": e.name} for e in export.entries],
        "test": evaluation.to_dict(),
    }
    write_metadata(out_dir, record)
    return record
