"""s3prl downstream expert for IEMOCAP emotion recognition with mean pooling or ECAPA-TDNN.

Drop-in for s3prl's ``emotion`` task (same meta data, same fold naming, same SUPERB dev split),
with the paper's additions: an ECAPA-TDNN aggregator, early/late fusion of several upstreams
(``-u NAME1,NAME2``, ``modelrc.fusion``), UA beside WA, the k best checkpoints kept by dev
accuracy for averaging (done by :class:`s3prl_ser.training.runner.SERRunner` after training), and
test-set predictions written only for the reported model.

The ``targets`` section adds continuous attributes (arousal, valence, dominance) beside or instead
of the categories (:class:`~s3prl_ser.training.targets.TargetSpec`; docs/dimensional.md): the
attribute loss (1 - CCC or MSE) skips unknown values, checkpoints are kept by the dev metric
``targets.selection`` names, and predictions are reported on the corpus's own scale. The ``loss``
section sets the class head's cross-entropy for imbalanced classes (class weights, focal loss, a
class-balanced sampler).
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed import get_rank, get_world_size, is_initialized
from torch.utils.data import DataLoader

from s3prl_ser.config import check_int, check_keys, expert_default
from s3prl_ser.data.attributes import denormalise
from s3prl_ser.data.audio import load_audio
from s3prl_ser.data.emotion_dataset import SESSION_CORPORA
from s3prl_ser.data.fold_data import FoldData, eval_loader, load_fold_data, train_loader
from s3prl_ser.data.folds import check_run_fold, fold_session, is_deployment, resolve_fold
from s3prl_ser.fileio import atomic_write_json, atomic_write_text
from s3prl_ser.inference.rows import prediction_row
from s3prl_ser.models.classifier import AGGREGATORS
from s3prl_ser.models.fusion import EmotionClassifier, split_outputs
from s3prl_ser.training.best_checkpoints import BestCheckpoints
from s3prl_ser.training.metrics import RegressionReport, classification_report, regression_report
from s3prl_ser.training.objective import TargetObjective, selection_scores, selection_value, split_labels
from s3prl_ser.training.targets import expert_targets

DATARC_KEYS = {
    "root",
    "meta_data",
    "test_fold",
    "split",
    "valid_ratio",
    "dev_session",
    "dev_speakers",
    "labels",
    "pre_load",
    "train_batch_size",
    "eval_batch_size",
    "num_workers",
    "min_samples",
    "allow_outside_root",
    "max_seconds",
    "max_eval_seconds",
    "bucket_by_length",
}
MODELRC_KEYS = {"aggregator", "ecapa", "fusion", "projector_dim"}
AVERAGING_KEYS = {"best_k", "average"}
TEXT_KEYS = {"encoder", "transcripts", "speech", "feature_selection"}
EXPERT_SECTIONS = {"datarc", "modelrc", "checkpoint_averaging", "text", "targets", "loss"}
_NO_TEST_SET = (
    "a deployment run (test_fold: deploy) has no test set: it trained on every fold's utterances, so it "
    "has no held-out score; the cross-validation's folds score the procedure"
)

# s3prl imports this file as s3prl.downstream.emotion_ecapa.expert, whose logger the commands
# keep at WARNING with the rest of s3prl's; the project's name keeps its progress with the project's.
# Not `logger`: s3prl's interface names its TensorBoard writer so (log_records' argument).
_log = logging.getLogger("s3prl_ser.downstream.emotion_ecapa")


class DownstreamExpert(nn.Module):
    """Builds the fold's datasets and the classifier; s3prl's runner drives training.

    Args:
        upstream_dim: feature dimension of the featurizer output; a list with several
            upstreams (one feature stream each).
        upstream_rate: downsample rate of the features (a list with several upstreams).
        downstream_expert: the ``downstream_expert`` config section (datarc, modelrc,
            checkpoint_averaging, text, targets, loss).
        expdir: experiment directory.
        fold_data: the fold's data, as :class:`~s3prl_ser.training.runner.SERRunner` built it
            (once per run); None: read here (under s3prl's own runner).
        **kwargs: the runner's remaining config sections and command-line args (used here:
            ``downstream_variant``, which selects the fold like s3prl's ``-v``, ``seed``,
            which seeds the training order, and ``mode``: in ``train`` with ``datarc.pre_load``,
            the train and dev audio are read at construction).
    """

    def __init__(
        self,
        upstream_dim: int | list[int],
        downstream_expert: dict,
        expdir: str,
        upstream_rate: int | list[int] = 160,
        fold_data: FoldData | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        check_keys(downstream_expert, EXPERT_SECTIONS, "downstream_expert")
        self.targets, self.loss_spec = expert_targets(downstream_expert)
        self.datarc = dict(downstream_expert.get("datarc", {}))
        self.modelrc = dict(downstream_expert.get("modelrc", {}))
        self.averaging = dict(downstream_expert.get("checkpoint_averaging", {}))
        check_keys(self.datarc, DATARC_KEYS, "downstream_expert.datarc")
        check_keys(self.modelrc, MODELRC_KEYS, "downstream_expert.modelrc")
        check_keys(self.averaging, AVERAGING_KEYS, "downstream_expert.checkpoint_averaging")
        best_k = check_int(self.averaging.get("best_k", 5), "config.downstream_expert.checkpoint_averaging.best_k")
        self.textrc = dict(downstream_expert.get("text") or {})
        check_keys(self.textrc, TEXT_KEYS, "downstream_expert.text")
        self.expdir = Path(expdir)
        self.seed = int(kwargs.get("seed", 0))

        where = "downstream_expert.datarc"
        # ``deploy``: a deployment run, trained on every fold (s3prl_ser.data.full_data_pool), no test set
        self.fold = check_run_fold(resolve_fold(self.datarc.get("test_fold"), kwargs.get("downstream_variant")))
        if fold_data is None:  # checks every audio header
            data = load_fold_data(self.datarc, self.fold, where=where, **self.targets.fold_data_options())
        elif fold_data.protocol.fold != self.fold:
            raise ValueError(f"the runner built {fold_data.protocol.fold}'s data for a {self.fold} expert")
        else:
            data = fold_data
        meta_dir = Path(self.datarc["meta_data"])
        # No class head without categories: C = 0 outputs, no class names recorded.
        self.class_names = list(data.class_names) if self.targets.categories else []
        scale = getattr(data, "attribute_scale", {})
        self.attribute_scale = {name: tuple(scale[name]) for name in self.targets.attributes}
        self.protocol = data.protocol
        self.train_dataset, self.dev_dataset, self.test_dataset = data.train, data.dev, data.test
        corpus = self.protocol.corpus_name or "corpus"
        if is_deployment(self.fold):
            if kwargs.get("mode") == "evaluate" and kwargs.get("evaluate_split") == "test":
                raise ValueError(_NO_TEST_SET)  # refused before anything is built or read
            tested = "none, a deployment run on every fold's utterances"
        else:
            tested = fold_session(self.fold) if corpus in SESSION_CORPORA else self.protocol.official_test or self.fold
        _log.info(
            f"[Expert] - {corpus} {self.fold}: test {tested} ({len(self.test_dataset)}), "
            f"train {len(self.train_dataset)}, dev {len(self.dev_dataset)} ({data.split} split)"
        )

        aggregator = self.modelrc.get("aggregator", expert_default("modelrc", "aggregator"))
        if aggregator not in AGGREGATORS:
            raise ValueError(
                f"downstream_expert.modelrc.aggregator must be one of {', '.join(AGGREGATORS)}, got {aggregator!r}"
            )
        processes = get_world_size() if is_initialized() else 1
        batch = self.datarc.get("train_batch_size", expert_default("datarc", "train_batch_size"))
        if aggregator == "ecapa" and batch // processes < 2:
            raise ValueError(
                f"{where}.train_batch_size ({batch}, the global batch) must give "
                f"each of the {processes} process(es) >= 2 utterances for the ecapa aggregator (BatchNorm)"
            )
        self.multi_stream = isinstance(upstream_dim, (list, tuple))
        sizes = list(upstream_dim) if self.multi_stream else [upstream_dim]
        rates = list(upstream_rate) if self.multi_stream else [upstream_rate]
        self.use_speech, self._text, self._text_cache = True, None, None
        self._text_filled: set[str] = set()
        if self.textrc.get("encoder"):
            self._setup_text(meta_dir, kwargs)
            if not self.use_speech:
                sizes, rates = [], []
            sizes.append(self._text.output_size)
            rates.append(0)  # tokens have no frame rate: text can only be fused late
        self.model = EmotionClassifier(
            sizes,
            rates,
            len(self.class_names),
            aggregator=aggregator,
            ecapa=self.modelrc.get("ecapa"),
            fusion=self.modelrc.get("fusion"),
            projector_dim=self.modelrc.get("projector_dim"),
            num_attributes=self.targets.num_attributes,
        )
        counts = np.bincount(self.train_dataset.labels(), minlength=len(self.class_names)) if self.class_names else []
        self.objective = TargetObjective(self.targets, self.loss_spec, list(counts))
        self.best = BestCheckpoints(self.expdir, best_k)
        # Where dev/test predictions go, and whether dev results select checkpoints: a
        # standalone ``-m evaluate`` writes elsewhere and selects nothing.
        self.output_dir = self.expdir
        self.selecting = True
        # With pre_load, training decodes train and dev now, after the config checks above,
        # so a file only decoding can reject (NaN samples) stops the run at start-up rather
        # than at a batch or dev evaluation. Other splits and modes load when their loader is
        # first asked for, so -m evaluate and -m inference read only what they use.
        if kwargs.get("mode") == "train" and self.datarc.get("pre_load", False):
            self.train_dataset.preload()
            self.dev_dataset.preload()

    def evaluate_separately(self, tag: str) -> Path:
        """Send later logs and predictions to ``expdir/evaluate_<tag>/`` and stop offering dev
        results to the k best, so evaluating a checkpoint leaves the training run's files alone."""
        self.output_dir = self.expdir / f"evaluate_{tag}"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.selecting = False
        return self.output_dir

    def _setup_text(self, meta_dir: Path, run: dict[str, Any]) -> None:
        """The frozen text encoder over the transcripts (paper experiments 10-11).

        ``text.encoder`` is a Hugging Face encoder directory, or the FT_DIR of ``python -m
        upstream_ft -u text``, whose per-fold export for this fold is used (checked against this
        fold, corpus and split). The
        encoder is kept out of the module tree: checkpoints then hold only the trained
        downstream, and the encoder is rebuilt from the config. Frozen, its features come from
        the feature cache (``feature_cache`` section, ``run``: the runner's config and args;
        :func:`~s3prl_ser.feature_cache.attach.attach_text_feature_cache`), each split
        filled when its loader is first asked for.
        """
        from s3prl_ser.feature_cache.attach import attach_text_feature_cache
        from s3prl_ser.finetuning.hub_entries import resolve_ft_text_encoder
        from s3prl_ser.models.text_encoder import TextEncoder, load_transcripts

        encoder_dir = resolve_ft_text_encoder(self.textrc["encoder"], self.protocol)
        encoder = TextEncoder(str(encoder_dir), self.textrc.get("feature_selection", "last_hidden_state"))
        object.__setattr__(self, "_text", encoder.eval().requires_grad_(False))
        device = str(run.get("device", "cpu"))
        cache = attach_text_feature_cache(run.get("feature_cache"), run.get("mode"), device, encoder, encoder_dir)
        object.__setattr__(self, "_text_cache", cache)
        self._text_device = device
        self.transcripts_path = Path(self.textrc.get("transcripts") or meta_dir / "transcripts.json")
        self.transcripts = load_transcripts(self.transcripts_path)
        self.use_speech = bool(self.textrc.get("speech", True))

    def _text_stream(self, filenames: list[str], device: torch.device) -> list[torch.Tensor]:
        from s3prl_ser.models.text_encoder import transcripts_for

        self._text.to(device)
        texts = transcripts_for(filenames, self.transcripts, self.transcripts_path)
        encoder = self._text if self._text_cache is None else self._text_cache
        with torch.no_grad():
            features, lengths = encoder(texts)
        return [f[:n] for f, n in zip(features, lengths.tolist())]

    def _fill_text_cache(self, split: str, dataset: Any) -> None:
        """Encode and store the transcripts of ``split`` the text cache lacks (once per split)."""
        if self._text_cache is None or split in self._text_filled:
            return
        from s3prl_ser.models.text_encoder import transcripts_for

        dataset = getattr(dataset, "dataset", dataset)  # a RandomCrop view of the train split
        names = [dataset.name(i) if hasattr(dataset, "name") else dataset[i][2] for i in range(len(dataset))]
        self._text.to(self._text_device)
        self._text_cache.fill(transcripts_for(names, self.transcripts, self.transcripts_path), f"{split} (text)")
        self._text_filled.add(split)

    def get_downstream_name(self) -> str:
        return self.fold.replace("fold", "emotion")

    # Interface
    def get_dataloader(self, mode: str, epoch: int = 0, start: int = 0) -> DataLoader:
        """``train``: this process's batches of ``epoch`` from global batch ``start`` on
        (:func:`~s3prl_ser.data.fold_data.train_loader`); ``dev`` / ``test``: the whole split."""
        if mode == "train":
            self._fill_text_cache(mode, self.train_dataset)
            # passed only when on, so the natural order stays exactly as before
            balanced = {"balanced": True} if self.loss_spec.balanced_sampler else {}
            return train_loader(
                self.train_dataset,
                self.datarc,
                seed=self.seed,
                epoch=epoch,
                start=start,
                rank=get_rank() if is_initialized() else 0,
                world_size=get_world_size() if is_initialized() else 1,
                **balanced,
            )
        if mode == "test" and is_deployment(self.fold):
            raise ValueError(_NO_TEST_SET)
        datasets = {"dev": self.dev_dataset, "test": self.test_dataset}
        if mode not in datasets:
            raise ValueError(f"unknown split {mode!r}; expected train, dev or test")
        self._fill_text_cache(mode, datasets[mode])
        return eval_loader(datasets[mode], self.datarc)

    def _logits(self, features: list, filenames: list[str]) -> torch.Tensor:
        """Per-utterance ``(T, D)`` tensors, or one such list per upstream -> ``(B, C + A)``: class
        logits, then normalised attribute predictions (:func:`~s3prl_ser.models.fusion.split_outputs`)."""
        streams = list(features) if self.multi_stream else [features]
        if self._text is not None:
            device = streams[0][0].device
            streams = (streams if self.use_speech else []) + [self._text_stream(list(filenames), device)]
        return self.model(streams)

    # Interface
    def forward(
        self,
        mode: str,
        features: list,
        labels: tuple[int, ...],
        filenames: tuple[str, ...],
        records: defaultdict,
        **kwargs: Any,
    ) -> torch.Tensor:
        """``features``: per-utterance ``(T_i, D)`` tensors (one list per upstream with several);
        ``labels``: class ids, or with attributes ``(class id or -1, (A,) normalised values, NaN
        unknown)`` pairs -> the loss: cross-entropy, + ``attribute_weight`` * the attribute loss
        (the attribute loss alone without categories)."""
        outputs = self._logits(features, filenames)
        loss = self.objective(outputs, labels)
        class_ids, values = split_labels(labels, self.targets)
        logits, predicted_attributes = split_outputs(outputs, len(self.class_names))
        if self.targets.categories:
            records["predict"] += [self.class_names[i] for i in logits.argmax(dim=-1).tolist()]
            records["truth"] += [self.class_names[i] for i in class_ids]
        if values is not None:
            records["attribute_predict"] += list(predicted_attributes.detach().cpu().double().numpy())
            records["attribute_truth"] += list(values.astype(np.float64))
        records["loss"].append(loss.item())
        records["filename"] += list(filenames)
        return loss

    # Interface
    def log_records(self, mode: str, records: defaultdict, logger: Any, global_step: int, **kwargs: Any) -> list[str]:
        """Log the split's metrics (WA/UA with categories, CCC per attribute with attributes) and
        loss; on dev offer the step to the k best by ``targets.selection``; on dev and test write
        the predictions and ``<split>_<fold>_metrics.json``."""
        loss = float(torch.tensor(records["loss"]).mean())
        metrics: dict[str, Any] = {}
        line = f"{mode} at step {global_step}:"
        report = regression = None
        if self.targets.categories:
            report = classification_report(records["truth"], records["predict"], self.class_names)
            metrics.update(report.to_dict())
            line += f" acc {report.wa:.4f} ua {report.ua:.4f}"
        line += f" loss {loss:.4f}"
        if self.targets.attributes:
            regression = self._regression_report(records)
            metrics.update(regression.to_dict())
            line += (
                f" ccc_mean {regression.ccc_mean:.4f} ("
                + ", ".join(f"{a} {c:.4f}" for a, c in regression.ccc.items())
                + ")"
            )
        scores = selection_scores(report, regression)
        prefix = f"emotion-{self.fold}/{mode}"
        named = {"acc": scores.get("wa"), "ua": scores.get("ua"), "loss": loss}
        named.update({name: scores[name] for name in scores if name.startswith("ccc_")})
        for name, value in named.items():
            if value is not None:
                logger.add_scalar(f"{prefix}-{name}", value, global_step=global_step)
        _log.info(f"[Expert] - {line}")
        with open(self.output_dir / "log.log", "a") as log:
            log.write(line + "\n")

        save_names: list[str] = []
        if mode == "dev" and self.selecting:  # dev metrics only, never test
            save_names = self.best.offer(global_step, selection_value(scores, self.targets.selection_metric))
        if mode in ("dev", "test"):
            kinds = ("predict", "truth") if self.targets.categories else ()
            for kind in kinds:
                lines = [f"{f} {e}\n" for f, e in zip(records["filename"], records[kind])]
                atomic_write_text(self.output_dir / f"{mode}_{self.fold}_{kind}.txt", "".join(lines))
            metrics.setdefault("num_utterances", len(records["filename"]))  # attributes only: no report gave it
            metrics.update(step=global_step, fold=self.fold, loss=loss, corpus=self._corpus_record())
            if not self.targets.is_categorical_only:  # a categorical run's file stays as it was
                metrics.update(targets=self.targets.to_dict(), attribute_scale=self._scale_record())
            if self.targets.attributes:
                metrics["attribute_predictions"] = self._write_attribute_predictions(mode, records)
            # atomic: cross-validation reads it as the fold's result once final.json names it
            atomic_write_json(self.output_dir / f"{mode}_{self.fold}_metrics.json", metrics, indent=1)
        return save_names

    def _scale_record(self) -> dict[str, list[float]]:
        return {name: list(bounds) for name, bounds in self.attribute_scale.items()}

    def _on_scale(self, records: defaultdict) -> tuple[np.ndarray, np.ndarray]:
        """Truth (NaN unknown) and predictions ``(N, A)`` back on the corpus's own scale."""
        scale = [self.attribute_scale[name] for name in self.targets.attributes]
        truth = denormalise(np.stack(records["attribute_truth"]), scale)
        predicted = denormalise(np.stack(records["attribute_predict"]), scale)
        return truth, predicted

    def _regression_report(self, records: defaultdict) -> RegressionReport:
        truth, predicted = self._on_scale(records)
        return regression_report(truth, predicted, self.targets.attributes)

    def _write_attribute_predictions(self, mode: str, records: defaultdict) -> str:
        """``<split>_<fold>_attributes.csv``: file, then each attribute's true and predicted value on
        the corpus's scale (empty: unknown); its name, for the metrics record."""
        truth, predicted = self._on_scale(records)
        names = self.targets.attributes
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["file", *(f"{a}_true" for a in names), *(f"{a}_pred" for a in names)])
        for name, true_row, pred_row in zip(records["filename"], truth, predicted):
            known = ["" if np.isnan(t) else f"{t:.6g}" for t in true_row]
            writer.writerow([name, *known, *(f"{p:.6g}" for p in pred_row)])
        path = self.output_dir / f"{mode}_{self.fold}_attributes.csv"
        atomic_write_text(path, text.getvalue())
        return path.name

    def _corpus_record(self) -> dict:
        """What reports say about the data: corpus, protocol, fold count, official test set, classes."""
        p = self.protocol
        return {
            "name": p.corpus_name,
            "num_folds": p.num_folds,
            "official_test": p.official_test,
            "class_names": list(self.class_names),
            "split": p.split.get("rule"),
        }

    def load_audio(self, path: str | Path) -> torch.Tensor:
        """Used by the runner's ``-m inference``: the project's one reader (any sample rate or
        channel count; formats soundfile cannot decode through ffmpeg), as ``EmotionRecognizer`` reads."""
        return load_audio(path, min_samples=self.datarc.get("min_samples", expert_default("datarc", "min_samples")))

    def inference(self, features: list, filenames: list[str]) -> list[dict]:
        """Return ``{"file", "label", "probabilities"}`` per utterance (the row
        :func:`s3prl_ser.inference.rows.prediction_row` builds for ``python -m s3prl_ser.inference``),
        with attributes also ``"attributes": {name: value on the corpus's scale}`` (without categories:
        ``file`` and ``attributes`` only)."""
        with torch.no_grad():
            outputs = self._logits(features, filenames).cpu()
        logits, attributes = split_outputs(outputs, len(self.class_names))
        rows = [
            prediction_row(self.class_names, probs, file=name) if self.targets.categories else {"file": name}
            for name, probs in zip(filenames, logits.softmax(dim=-1))
        ]
        if self.targets.attributes:
            scale = [self.attribute_scale[name] for name in self.targets.attributes]
            for row, values in zip(rows, denormalise(attributes.double(), scale).tolist()):
                row["attributes"] = dict(zip(self.targets.attributes, values))
        return rows
