"""Predict emotions with a trained model, without the training corpus at hand.

    from s3prl_ser.inference import EmotionRecognizer
    recognizer = EmotionRecognizer.from_pretrained("result/downstream/NAME/fold1")
    recognizer.predict("speech.flac")            # any sample rate / channel count
    # Prediction(label='ang', probabilities={'neu': 0.1, 'hap': 0.05, 'ang': 0.8, 'sad': 0.05})

Command line: ``python -m s3prl_ser.cli.inference EXPDIR_OR_CKPT AUDIO [AUDIO ...]`` prints one
JSON line per file (:mod:`s3prl_ser.cli.inference`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from s3prl_ser.compat import safe_torch_load
from s3prl_ser.data.audio import load_audio, prepare_waveform
from s3prl_ser.data.folds import resolve_fold
from s3prl_ser.hub.multi_upstream import MultiFeaturizer, build_featurizer, build_upstreams
from s3prl_ser.models.fusion import EmotionClassifier
from s3prl_ser.training.runner import FINAL_RECORD

__all__ = ["Prediction", "EmotionRecognizer", "resolve_checkpoint"]


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: dict[str, float]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the reported model of an experiment directory (``final.json``)."""
    path = Path(path)
    if path.is_dir():
        record = path / FINAL_RECORD
        if not record.is_file():
            raise FileNotFoundError(f"{path}: no {FINAL_RECORD}; is training of this fold finished?")
        path = path / json.loads(record.read_text())["checkpoint"]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


class EmotionRecognizer(nn.Module):
    """Upstream + featurizer + classifier of an ``emotion_ecapa`` experiment, in eval mode."""

    def __init__(
        self,
        upstream: nn.Module,
        featurizer: nn.Module,
        classifier: nn.Module,
        class_names: Sequence[str],
        min_samples: int = 400,
    ) -> None:
        super().__init__()
        self.upstream = upstream
        self.featurizer = featurizer
        self.classifier = classifier
        self.class_names = list(class_names)
        self.min_samples = min_samples
        self.eval()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu") -> EmotionRecognizer:
        """Load the final model of an experiment directory or a ``dev-avg``/``dev-best`` checkpoint."""
        from s3prl_ser.hub.registry import register

        register()

        ckpt_path = resolve_checkpoint(path)
        ckpt = safe_torch_load(ckpt_path)
        missing = [k for k in ("Args", "Config", "Downstream", "Featurizer", "ClassNames") if k not in ckpt]
        if missing:
            raise ValueError(f"{ckpt_path}: not a final emotion_ecapa checkpoint (missing {', '.join(missing)})")
        args, config = ckpt["Args"], ckpt["Config"]
        if (config["downstream_expert"].get("text") or {}).get("encoder"):
            raise ValueError(
                f"{ckpt_path}: this model also reads transcripts (downstream_expert.text); "
                "EmotionRecognizer predicts from speech alone"
            )
        fold = resolve_fold(config["downstream_expert"].get("datarc", {}).get("test_fold"), args.downstream_variant)
        upstream = build_upstreams(args.upstream, args.upstream_ckpt, args.upstream_model_config, fold=fold).to(device)
        if "Upstream" in ckpt:
            upstream.load_state_dict(ckpt["Upstream"])
        featurizer = build_featurizer(
            upstream,
            args.upstream_feature_selection,
            args.upstream_layer_selection,
            device,
            args.upstream_feature_normalize,
        ).to(device)
        featurizer.load_state_dict(ckpt["Featurizer"])
        modelrc = config["downstream_expert"].get("modelrc", {})
        multi = isinstance(featurizer.output_dim, list)
        classifier = EmotionClassifier(
            featurizer.output_dim if multi else [featurizer.output_dim],
            featurizer.downsample_rate if multi else [featurizer.downsample_rate],
            len(ckpt["ClassNames"]),
            aggregator=modelrc.get("aggregator", "ecapa"),
            ecapa=modelrc.get("ecapa"),
            fusion=modelrc.get("fusion"),
        )
        classifier.load_state_dict(
            {k.removeprefix("model."): v for k, v in ckpt["Downstream"].items() if k.startswith("model.")}
        )
        min_samples = config["downstream_expert"].get("datarc", {}).get("min_samples", 400)
        return cls(upstream, featurizer, classifier.to(device), ckpt["ClassNames"], min_samples)

    @property
    def device(self) -> torch.device:
        return next(self.classifier.parameters()).device

    def _waveform(self, audio: str | os.PathLike | np.ndarray | torch.Tensor, sample_rate: int | None) -> torch.Tensor:
        if isinstance(audio, (str, os.PathLike)):
            return load_audio(audio, min_samples=self.min_samples)
        if sample_rate is None:
            raise ValueError("pass sample_rate with a waveform array")
        return prepare_waveform(audio, sample_rate, min_samples=self.min_samples)

    @torch.no_grad()
    def predict_batch(
        self, audios: Sequence[str | os.PathLike | np.ndarray | torch.Tensor], sample_rate: int | None = None
    ) -> list[Prediction]:
        """Predict several files or waveforms (batched; results do not depend on batching)."""
        wavs = [self._waveform(a, sample_rate).to(self.device) for a in audios]
        features = self.featurizer(wavs, self.upstream(wavs))
        streams = features if isinstance(self.featurizer, MultiFeaturizer) else [features]
        probabilities = self.classifier(streams).softmax(dim=-1).cpu()
        return [
            Prediction(self.class_names[int(p.argmax())], {c: float(v) for c, v in zip(self.class_names, p)})
            for p in probabilities
        ]

    def predict(
        self, audio: str | os.PathLike | np.ndarray | torch.Tensor, sample_rate: int | None = None
    ) -> Prediction:
        """Predict one file path or waveform (then ``sample_rate`` is required)."""
        return self.predict_batch([audio], sample_rate)[0]
