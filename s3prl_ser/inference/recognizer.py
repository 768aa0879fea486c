"""The recognizer: predict emotions with a trained model, without the training corpus at hand.

    from s3prl_ser.inference import EmotionRecognizer
    recognizer = EmotionRecognizer.from_pretrained("MODEL_DIR")  # or a run's fold directory / checkpoint
    recognizer.predict("speech.flac")            # any sample rate / channel count
    # Prediction(label='ang', probabilities={'neu': 0.1, 'hap': 0.05, 'ang': 0.8, 'sad': 0.05}, silence=False,
    #            attributes={})  # a model trained with attributes: {'arousal': 3.9, ...} on the corpus's scale
    recognizer.predict_files(["DIR/", "list.txt"])   # rows: label, probabilities, duration, status
    recognizer.predict_long("meeting.wav")           # 8 s windows, 4 s hop, and a summary
    recognizer.predict_long("meeting.wav", segments="vad")  # speech segments (<= 8 s) and silences

``from_pretrained`` takes a self-contained model directory (``python -m s3prl_ser.export``,
loaded offline: ``config.json`` checked against ``config.sha256``, every weight file against
its sha256, and only upstreams that build without a download accepted), a run's fold directory (its
``final.json``), a runner checkpoint, or a model directory on the Hugging Face Hub (``"user/name"``,
fetched by ``huggingface_hub.snapshot_download``, then checked the same way). A recognizer holds one or several members (an
ensemble of fold models: their class probabilities are averaged); members trained on the same
upstream share it, and it runs once per batch.

A model trained with continuous attributes (``targets.attributes``, e.g. arousal, valence,
dominance) also predicts their values, on the corpus's own scale (``attribute_scale``, e.g. 1-5):
``Prediction.attributes``; an ensemble averages them over members as it does the probabilities.
A model trained on attributes only has no classes (``label`` None, ``probabilities`` empty).

``from_pretrained(..., device="cuda", dtype="bfloat16")`` (or ``recognizer.to(...)``,
``.half()``, ``.bfloat16()``) runs the model in bfloat16 (CPU or CUDA) or float16 (CUDA);
``quantize="int8"`` (or :meth:`EmotionRecognizer.quantize`) makes its linear layers int8 on the
CPU. Probabilities and embeddings come back as float32 either way (bounds: ``docs/inference.md``).

Command line: ``python -m s3prl_ser.inference MODEL AUDIO|DIR|LIST... [--output results.csv]``
(:mod:`s3prl_ser.cli.inference`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from s3prl_ser.config import expert_default
from s3prl_ser.data.attributes import denormalise, parse_scale
from s3prl_ser.data.audio import SAMPLE_RATE, is_silent
from s3prl_ser.data.folds import resolve_fold
from s3prl_ser.fileio import safe_torch_load
from s3prl_ser.inference.audio_input import AudioInput, load_input
from s3prl_ser.inference.files import predict_files
from s3prl_ser.inference.model_dir import (
    CARD_FILE,
    CONFIG_FILE,
    DIGEST_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    ModelDirError,
    is_model_dir,
    read_model_dir,
)
from s3prl_ser.inference.postprocess import check_classes, restrict, top_classes
from s3prl_ser.inference.precision import check_precision, resolve_dtype, run_upstream
from s3prl_ser.inference.quantize import QUANTIZATIONS, quantize_dynamic_int8
from s3prl_ser.inference.speech_segments import stream_long
from s3prl_ser.inference.upstream_spec import build_upstreams_offline, describe_upstreams
from s3prl_ser.models.fusion import EmotionClassifier, split_outputs
from s3prl_ser.training.run_dir import RunDir
from s3prl_ser.training.targets import TargetSpec
from s3prl_ser.upstreams.exportable import UnsupportedUpstreamError
from s3prl_ser.upstreams.multi_upstream import MultiFeaturizer, build_featurizer, shortest_input
from s3prl_ser.upstreams.registry import register

__all__ = ["Prediction", "RecognizerMember", "EmotionRecognizer", "resolve_checkpoint"]


@dataclass(frozen=True)
class Prediction:
    """The most probable class and every class's probability (in the model's class order).

    ``silence``: the audio's RMS level is below :data:`~s3prl_ser.data.audio.SILENCE_DBFS`;
    the model still picks a class, often confidently, but there is no emotion to read.
    ``attributes``: ``{name: value}`` on the corpus's scale for a model trained with attributes
    (``{}`` otherwise); a model of attributes only has no ``label`` (None) and no ``probabilities``.

    Example:
        >>> Prediction("ang", {"neu": 0.2, "ang": 0.8}).label
        'ang'
        >>> Prediction(None, {}, attributes={"arousal": 3.9}).attributes["arousal"]
        3.9
    """

    label: str | None
    probabilities: dict[str, float]
    silence: bool = False
    attributes: dict[str, float] = field(default_factory=dict)

    def top(self, k: int) -> list[dict[str, Any]]:
        """The ``k`` most probable classes as the HF pipeline gives them, highest first:
        ``[{"label": c, "score": p}, ...]`` (ties in class order)."""
        return top_classes(self.probabilities, k)

    def restricted(self, classes: Sequence[str]) -> Prediction:
        """This prediction over ``classes`` only: their probabilities divided by their sum, the
        label the most probable of them. Raises ValueError for a class the model does not have."""
        probabilities = restrict(self.probabilities, classes)
        return Prediction(
            max(probabilities, key=probabilities.__getitem__), probabilities, self.silence, self.attributes
        )


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the reported model of an experiment directory (``final.json``)."""
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).reported_checkpoint()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def _download_model_dir(
    repo_id: str,
    revision: str | None,
    token: str | bool | None,
    cache_dir: str | os.PathLike | None,
    local_files_only: bool,
) -> Path:
    """The snapshot directory of Hub model ``repo_id`` in the local Hub cache, downloaded if needed.

    Only the files of a model directory are fetched; they are verified by the caller.

    Raises:
        FileNotFoundError: ``repo_id`` is no Hub model id (``user/name``) or its first part is a
            local directory (a mistyped local path), or the Hub or its cache cannot provide it.
    """
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    owner = Path(repo_id).parent
    try:
        validate_repo_id(repo_id)
        reason = None if repo_id.count("/") == 1 else "not a Hugging Face Hub model id (user/name)"
    except HFValidationError:
        reason = "not a Hugging Face Hub model id (user/name)"
    if reason is None and owner.is_dir():  # a mistyped local path, which must not reach the network
        reason = f"read as a local path, not a Hub model id, since {owner}/ is a local directory"
    if reason:
        # "checkpoint not found": what the command-line programs have always said of a missing model
        raise FileNotFoundError(f"checkpoint not found: {repo_id} (no such file or directory, and {reason})")
    at = f" at revision {revision!r}" if revision else ""
    try:
        snapshot = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_patterns=[CONFIG_FILE, DIGEST_FILE, CARD_FILE, WEIGHTS_FILE, ONNX_FILE],
            library_name="s3prl-ser",
        )
    except (OSError, HFValidationError) as error:  # not found, gated, offline and not cached, no connection
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(
            f"{repo_id}: no such local path, and Hub model {repo_id}{at} could not be loaded "
            f"({type(error).__name__}: {reason})"
        ) from error
    return Path(snapshot)


def _classifier_config(
    featurizer: nn.Module, num_classes: int, modelrc: dict[str, Any], num_attributes: int = 0
) -> dict[str, Any]:
    """:class:`EmotionClassifier` keyword arguments, as the ``emotion_ecapa`` expert builds it
    (``num_attributes`` only when there are attributes: a categorical model's config as before)."""
    multi = isinstance(featurizer.output_dim, list)
    config = {
        "input_sizes": list(featurizer.output_dim) if multi else [featurizer.output_dim],
        "rates": list(featurizer.downsample_rate) if multi else [featurizer.downsample_rate],
        "num_classes": num_classes,
        "aggregator": modelrc.get("aggregator", expert_default("modelrc", "aggregator")),
        "ecapa": modelrc.get("ecapa"),
        "fusion": modelrc.get("fusion"),
        "projector_dim": modelrc.get("projector_dim"),
    }
    return config | ({"num_attributes": num_attributes} if num_attributes else {})


class RecognizerMember(nn.Module):
    """One trained model's featurizer + classifier, reading the output of upstream ``upstream_index``.

    ``forward(wavs, upstream_output)``: B waveforms ``(T_b,)`` and the upstream's output for
    them -> logits ``(B, num_classes)`` (then ``num_attributes`` normalised attribute values).

    Example:
        >>> class Frames(nn.Module):  # a stand-in upstream: 160 samples per frame, 3 features
        ...     def forward(self, wavs):
        ...         return torch.stack([w[: len(w) // 160 * 160].view(-1, 160)[:, :3] for w in wavs])
        >>> class Identity(nn.Module):
        ...     def forward(self, wavs, out):
        ...         return list(out)
        >>> classifier = EmotionClassifier([3], [160], num_classes=2, aggregator="mean")
        >>> member = RecognizerMember(Identity(), classifier, upstream_index=0)
        >>> wavs = [torch.ones(1600), torch.ones(1600)]
        >>> member(wavs, Frames()(wavs)).shape
        torch.Size([2, 2])
    """

    def __init__(self, featurizer: nn.Module, classifier: nn.Module, upstream_index: int = 0) -> None:
        super().__init__()
        self.featurizer = featurizer
        self.classifier = classifier
        self.upstream_index = upstream_index

    def features(self, wavs: list[Tensor], upstream_output: Any) -> list[list[Tensor]]:
        """B waveforms and the upstream's output for them -> S streams of B ``(T_b, D_s)`` features."""
        features = self.featurizer(wavs, upstream_output)
        return features if isinstance(self.featurizer, MultiFeaturizer) else [features]

    def forward(self, wavs: list[Tensor], upstream_output: Any) -> Tensor:
        return self.classifier(self.features(wavs, upstream_output))


class EmotionRecognizer(nn.Module):
    """Upstream(s) + members (featurizer + classifier each) of ``emotion_ecapa`` models, in eval mode.

    Args:
        upstreams: the distinct upstream modules the members read.
        members: one per trained model; probabilities (and attribute values) are averaged over members.
        class_names: the class order of every member's output (empty for a model of attributes only).
        min_samples: the shortest clip accepted (the upstream's receptive field); None:
            ``datarc.min_samples`` of ``emotion_ecapa``'s ``config.yaml``; raised to what the
            upstreams need for finite features (:func:`~s3prl_ser.upstreams.multi_upstream.shortest_input`).
        config: the JSON description :mod:`s3prl_ser.inference.model_dir` saves (``upstreams``,
            ``members``, and ``targets``: the :class:`~s3prl_ser.training.targets.TargetSpec`
            record); ``None`` for a recognizer that cannot be exported.
        attribute_scale: ``{name: (low, high)}`` of the attributes the members predict after the
            classes, in output order (their outputs are normalised to ``[0, 1]`` on it); None: none.

    Example:
        >>> class Frames(nn.Module):  # a stand-in upstream: 160 samples per frame, 3 features
        ...     def forward(self, wavs):
        ...         return [w[: len(w) // 160 * 160].view(-1, 160)[:, :3] for w in wavs]
        >>> class Identity(nn.Module):
        ...     def forward(self, wavs, out):
        ...         return out
        >>> _ = torch.manual_seed(0)
        >>> members = [RecognizerMember(Identity(), EmotionClassifier([3], [160], 2, aggregator="mean")) for _ in range(2)]
        >>> recognizer = EmotionRecognizer([Frames()], members, ["calm", "angry"])
        >>> prediction = recognizer.predict(np.zeros(8000, dtype="float32"), sample_rate=8000)  # resampled to 16 kHz
        >>> sorted(prediction.probabilities) == ["angry", "calm"] and abs(sum(prediction.probabilities.values()) - 1) < 1e-6
        True
    """

    def __init__(
        self,
        upstreams: Sequence[nn.Module],
        members: Sequence[RecognizerMember],
        class_names: Sequence[str],
        min_samples: int | None = None,
        config: dict[str, Any] | None = None,
        attribute_scale: dict[str, Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("a recognizer needs at least one member model")
        self.attribute_scale = {name: (float(lo), float(hi)) for name, (lo, hi) in (attribute_scale or {}).items()}
        for member in members:
            if not 0 <= member.upstream_index < len(upstreams):
                raise ValueError(f"member reads upstream {member.upstream_index}, but there are {len(upstreams)}")
            predicted = getattr(member.classifier, "num_attributes", 0)
            if predicted != len(self.attribute_scale):
                raise ValueError(
                    f"a member predicts {predicted} attribute(s), the scale names {len(self.attribute_scale)}"
                )
        self.upstreams = nn.ModuleList(upstreams)
        self.members = nn.ModuleList(members)
        self.class_names = list(class_names)
        self.attribute_names = list(self.attribute_scale)
        configured = int(expert_default("datarc", "min_samples") if min_samples is None else min_samples)
        # fbank with CMVN: one frame gives NaN features (models trained with min_samples 400 record it)
        self.min_samples = max(configured, *(shortest_input(upstream) for upstream in upstreams))
        self.config = config
        self.quantization: str | None = None  # "int8" after quantize()
        self.eval()

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        *,
        dtype: str | torch.dtype | None = None,
        quantize: str | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
    ) -> EmotionRecognizer:
        """Load a model directory (offline, digests checked), a run's fold directory, a checkpoint,
        or a model directory on the Hugging Face Hub (``"user/name"``).

        A path that exists is always loaded from disk, without the network. A string that does not
        exist and is a Hub model id is fetched with ``huggingface_hub.snapshot_download`` (its
        cache, ``HF_HUB_OFFLINE``, login / ``HF_TOKEN``; only the model directory's files), then
        checked exactly as a local model directory.

        Args:
            device: where the recognizer runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
            dtype: ``"float32"`` (None: as saved, float32), ``"bfloat16"`` (CPU or CUDA) or
                ``"float16"`` (CUDA only); see :mod:`s3prl_ser.inference.precision`.
            quantize: ``"int8"``: the linear layers int8 (float32, CPU; :meth:`quantize`).
            revision, token, cache_dir, local_files_only: passed to ``snapshot_download``; a Hub id only.

        Raises:
            FileNotFoundError: no such path and no Hub id, a Hub model that cannot be fetched
                (not found, offline and not cached, ...), or a fold directory without ``final.json``.
            ModelDirError: a model directory with a missing, modified or mismatched file.
            ValueError: a checkpoint that is not a final ``emotion_ecapa`` one, or reads text;
                ``revision`` etc. given with a local path; a dtype or quantization not supported
                (float16 on the CPU, int8 with another dtype or off the CPU), checked before loading.
        """
        target = resolve_dtype(dtype or torch.float32)
        check_precision(device, target)
        if quantize is not None and (
            quantize not in QUANTIZATIONS or target != torch.float32 or torch.device(device).type != "cpu"
        ):
            raise ValueError(f"quantize={quantize!r}: 'int8' with dtype float32 on the CPU is supported")
        hub_options = {"revision": revision, "token": token, "cache_dir": cache_dir}
        if isinstance(path, str) and not os.path.lexists(path):
            local = _download_model_dir(path, local_files_only=local_files_only, **hub_options)
            recognizer = cls.from_model_dir(local, device)
        elif any(value is not None for value in hub_options.values()) or local_files_only:
            raise ValueError(f"{path}: a local path; revision, token, cache_dir and local_files_only apply to a Hub id")
        elif is_model_dir(path):
            recognizer = cls.from_model_dir(path, device)
        else:
            recognizer = cls.from_checkpoint(resolve_checkpoint(path), device)
        recognizer.to(dtype=target)
        return recognizer.quantize(quantize) if quantize else recognizer

    @classmethod
    def from_checkpoint(cls, ckpt_path: str | os.PathLike, device: str = "cpu") -> EmotionRecognizer:
        """One trained model from its runner checkpoint (``dev-avg.ckpt``, ...); the upstream is
        rebuilt as the run built it (its ``-u``/``-k``, for its fold). What it predicts comes from
        the checkpoint's ``Targets`` and ``AttributeScale`` (none: categories only)."""
        register()
        ckpt_path = Path(ckpt_path)
        ckpt = safe_torch_load(ckpt_path)
        missing = [k for k in ("Args", "Config", "Downstream", "Featurizer", "ClassNames") if k not in ckpt]
        if missing:
            raise ValueError(f"{ckpt_path}: not a final emotion_ecapa checkpoint (missing {', '.join(missing)})")
        args, config = ckpt["Args"], ckpt["Config"]
        expert = config["downstream_expert"]
        if (expert.get("text") or {}).get("encoder"):
            raise ValueError(
                f"{ckpt_path}: this model also reads transcripts (downstream_expert.text); "
                "EmotionRecognizer predicts from speech alone"
            )
        fold = resolve_fold(expert.get("datarc", {}).get("test_fold"), args.downstream_variant)
        upstream, specs = describe_upstreams(args.upstream, args.upstream_ckpt, args.upstream_model_config, fold)
        upstream = upstream.to(device)
        if "Upstream" in ckpt:
            upstream.load_state_dict(ckpt["Upstream"])
        featurizer_config = {
            "feature_selection": args.upstream_feature_selection,
            "layer_selection": args.upstream_layer_selection,
            "normalize": bool(args.upstream_feature_normalize),
        }
        featurizer = _build_featurizer(upstream, featurizer_config, device)
        featurizer.load_state_dict(ckpt["Featurizer"])
        targets = TargetSpec.from_dict(ckpt.get("Targets"))
        scale = ckpt.get("AttributeScale") or {}
        missing = [name for name in targets.attributes if name not in scale]
        if missing:
            raise ValueError(f"{ckpt_path}: no AttributeScale of {', '.join(missing)}, which the model predicts")
        scale = {name: scale[name] for name in targets.attributes}  # in output order
        classifier_config = _classifier_config(
            featurizer, len(ckpt["ClassNames"]), expert.get("modelrc", {}), targets.num_attributes
        )
        classifier = EmotionClassifier(**classifier_config)
        classifier.load_state_dict(
            {k.removeprefix("model."): v for k, v in ckpt["Downstream"].items() if k.startswith("model.")}
        )
        min_samples = expert.get("datarc", {}).get("min_samples")
        description = {
            "targets": targets.to_dict(),
            "upstreams": [specs],
            "members": [
                {
                    "upstream": 0,
                    "featurizer": featurizer_config,
                    "classifier": classifier_config,
                    "source": {"checkpoint": str(ckpt_path.resolve()), "fold": fold, "upstream": args.upstream},
                }
            ],
        }
        member = RecognizerMember(featurizer, classifier.to(device), 0)
        return cls([upstream], [member], ckpt["ClassNames"], min_samples, description, scale)

    @classmethod
    def from_model_dir(cls, path: str | os.PathLike, device: str = "cpu") -> EmotionRecognizer:
        """Load a model directory written by ``python -m s3prl_ser.export``: no network, no run files.

        Raises:
            ModelDirError: missing or modified files (sha256), weights that do not fit the config,
                or an upstream entry that is not rebuilt offline (refused before any is built).
        """
        register()
        config, tensors = read_model_dir(path)
        scale = parse_scale(config.get("attribute_scale"), f"{Path(path) / 'config.json'}")  # none before attributes
        try:
            upstreams = []
            for index, specs in enumerate(config["upstreams"]):
                prefix = f"upstreams.{index}."
                own = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
                upstreams.append(build_upstreams_offline(specs, own).to(device))
            members = []
            for member in config["members"]:
                featurizer = _build_featurizer(upstreams[member["upstream"]], member["featurizer"], device)
                expected = _classifier_config(featurizer, len(config["class_names"]), {}, len(scale))
                for key in ("input_sizes", "rates", "num_classes", "num_attributes"):
                    if expected.get(key, 0) != member["classifier"].get(key, 0):
                        raise ModelDirError(
                            f"{Path(path) / 'config.json'}: classifier {key} {member['classifier'].get(key, 0)} does "
                            f"not match {expected.get(key, 0)} (from its upstream, class_names and attribute_scale)"
                        )
                classifier = EmotionClassifier(**member["classifier"]).to(device)
                members.append(RecognizerMember(featurizer, classifier, member["upstream"]))
        except UnsupportedUpstreamError as error:
            raise ModelDirError(f"{Path(path) / 'config.json'}: {error}") from error
        except (KeyError, TypeError) as error:
            raise ModelDirError(f"{Path(path) / 'config.json'}: malformed ({type(error).__name__}: {error})") from error
        recognizer = cls(upstreams, members, config["class_names"], config.get("min_samples"), config, scale)
        try:
            recognizer.load_state_dict({k: v.to(device) for k, v in tensors.items()}, strict=True)
        except RuntimeError as error:
            raise ModelDirError(
                f"{Path(path) / 'model.safetensors'}: weights do not fit config.json ({str(error)[:500]})"
            ) from error
        return recognizer

    @classmethod
    def ensemble(cls, recognizers: Sequence[EmotionRecognizer]) -> EmotionRecognizer:
        """One recognizer averaging the class probabilities (and attribute values) of ``recognizers``
        (e.g. the 5 fold models); it records the first one's ``targets``.

        Upstreams that are the same (same description and weights) are kept once.

        Raises:
            ValueError: the recognizers' class names, attributes and their scales, or dtypes
                differ, or one is int8 (ensemble the float32 ones, then quantize the ensemble).
        """
        if not recognizers:
            raise ValueError("an ensemble needs at least one recognizer")
        if any(r.quantization for r in recognizers):
            raise ValueError("ensemble the float32 recognizers, then quantize the ensemble (int8)")
        if len({r.dtype for r in recognizers}) > 1:
            raise ValueError(f"cannot ensemble models of different dtypes: {sorted(str(r.dtype) for r in recognizers)}")
        names, scale = recognizers[0].class_names, recognizers[0].attribute_scale
        for other in recognizers[1:]:
            if other.class_names != names:
                raise ValueError(f"cannot ensemble models with different classes: {names} vs {other.class_names}")
            if list(other.attribute_scale.items()) != list(scale.items()):
                raise ValueError(
                    f"cannot ensemble models with different attributes or scales: {scale} vs {other.attribute_scale}"
                )
        exportable = all(r.config is not None for r in recognizers)
        upstreams: list[nn.Module] = []
        specs: list[Any] = []
        members: list[RecognizerMember] = []
        member_configs: list[dict[str, Any]] = []
        for recognizer in recognizers:
            mapping = {}
            for index, upstream in enumerate(recognizer.upstreams):
                spec = recognizer.config["upstreams"][index] if exportable else None
                same = [
                    j
                    for j, (kept, kept_spec) in enumerate(zip(upstreams, specs))
                    if kept_spec == spec and _same_weights(kept, upstream)
                ]
                if same:
                    mapping[index] = same[0]
                else:
                    mapping[index] = len(upstreams)
                    upstreams.append(upstream)
                    specs.append(spec)
            for position, member in enumerate(recognizer.members):
                members.append(RecognizerMember(member.featurizer, member.classifier, mapping[member.upstream_index]))
                if exportable:
                    member_configs.append(
                        dict(recognizer.config["members"][position], upstream=mapping[member.upstream_index])
                    )
        targets = recognizers[0].config.get("targets") if exportable else None
        config = {"targets": targets, "upstreams": specs, "members": member_configs} if exportable else None
        min_samples = max(r.min_samples for r in recognizers)
        return cls(upstreams, members, names, min_samples, config, scale)

    def description(self) -> dict[str, Any]:
        """What a model directory's ``config.json`` records (besides files and provenance): the
        classes, ``targets`` (the :class:`~s3prl_ser.training.targets.TargetSpec` record; categories
        only for a model from before targets existed) and ``attribute_scale`` (``{name: [low, high]}``,
        ``{}`` without attributes), the upstreams and members.

        Raises:
            ValueError: an upstream cannot be rebuilt offline (the reason is given).
        """
        if self.quantization or self.dtype != torch.float32:
            raise ValueError(
                f"export the float32 model, not this {self.quantization or self.dtype} one: "
                "choose dtype= or quantize= when loading it"
            )
        if self.config is None:
            raise ValueError("this recognizer was assembled by hand: no description to export")
        for specs in self.config["upstreams"]:
            if isinstance(specs, str):
                raise ValueError(f"cannot export this model: {specs}")
        return {
            "class_names": self.class_names,
            "targets": TargetSpec.from_dict(self.config.get("targets")).to_dict(),
            "attribute_scale": {name: list(bounds) for name, bounds in self.attribute_scale.items()},
            "sample_rate": SAMPLE_RATE,
            "min_samples": self.min_samples,
            "upstreams": copy.deepcopy(self.config["upstreams"]),
            "members": copy.deepcopy(self.config["members"]),
        }

    # ----------------------------------------------------------------------------- predicting
    @property
    def device(self) -> torch.device:
        return next(self.members[0].classifier.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point dtype the members run in (float32 for an int8 recognizer's activations)."""
        return next(p.dtype for p in self.members[0].classifier.parameters() if p.is_floating_point())

    def _apply(self, fn: Any, recurse: bool = True) -> EmotionRecognizer:
        # nn.Module's to(), half(), bfloat16(), float(), cuda() and cpu() all convert through
        # _apply: the precision they lead to (fn on an empty tensor like the weights) is checked
        # before any weight is converted, so a refused one leaves the recognizer as it was.
        probe = fn(torch.empty(0, dtype=self.dtype, device=self.device))
        if self.quantization and (probe.dtype != self.dtype or probe.device.type != "cpu"):
            raise ValueError(f"an {self.quantization} recognizer runs float32 on the CPU only")
        check_precision(probe.device, probe.dtype)
        return super()._apply(fn, recurse)

    def quantize(self, scheme: str = "int8") -> EmotionRecognizer:
        """Quantize this recognizer in place and return it: ``"int8"``, the linear layers of the
        upstreams (:func:`~s3prl_ser.inference.quantize.quantize_dynamic_int8`).

        The heads stay float32: their one linear layer costs little, and dynamic quantization
        takes one activation scale per tensor, which would tie a clip's probabilities to its
        batch-mates'. For the same reason an int8 upstream reads each clip alone (see
        :meth:`probabilities`), so a clip still gets what it gets alone.

        Raises:
            ValueError: another scheme, already quantized, not float32 on the CPU, or upstreams
                without linear layers (fbank & co.: nothing to quantize).
        """
        if scheme not in QUANTIZATIONS:
            raise ValueError(f"quantize {scheme!r}: the schemes are {', '.join(QUANTIZATIONS)}")
        if self.quantization:
            raise ValueError(f"this recognizer is already {self.quantization}")
        if not any(isinstance(m, nn.Linear) for m in self.upstreams.modules()):
            raise ValueError("int8 quantizes the upstreams' linear layers, and these upstreams have none")
        quantize_dynamic_int8(self.upstreams)
        self.quantization = scheme
        return self

    @property
    def embedding_dim(self) -> int:
        """``E`` of :meth:`embeddings`: the sum of the members' linear-head input sizes."""
        return sum(member.classifier.classifier.in_features for member in self.members)

    def waveform(self, audio: AudioInput, sample_rate: int | None = None) -> Tensor:
        """A path, bytes, a binary file object, an array with its ``sample_rate``, or a dict
        ``{"array" | "raw": ..., "sampling_rate": ...}`` -> mono 16 kHz ``(T,)``, at least
        ``min_samples`` long; see :func:`~s3prl_ser.inference.audio_input.load_input`."""
        return load_input(audio, sample_rate, min_samples=self.min_samples)

    def _batched(
        self,
        audios: Sequence[AudioInput],
        sample_rate: int | Sequence[int] | None,
        batch_size: int | None,
        embeddings: bool = False,
    ) -> tuple[list[bool], Tensor]:
        """Whether each input is silence, and its :meth:`predictions` ``(B, C + A)`` (or embeddings
        ``(B, E)``), read and run ``batch_size`` inputs at a time (None: all at once)."""
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        if sample_rate is None or isinstance(sample_rate, (int, float, np.number)):
            rates = [sample_rate] * len(audios)
        else:
            rates = list(sample_rate)
            if len(rates) != len(audios):
                raise ValueError(f"{len(rates)} sample rates for {len(audios)} inputs: pass one rate, or one per input")
        step = batch_size or max(len(audios), 1)
        silent: list[bool] = []
        outputs: list[Tensor] = []
        for first in range(0, len(audios), step):
            wavs = [self.waveform(a, r) for a, r in zip(audios[first : first + step], rates[first : first + step])]
            silent += [is_silent(w) for w in wavs]
            outputs.append(self.outputs(wavs)[1 if embeddings else 0])
        width = self.embedding_dim if embeddings else len(self.class_names) + len(self.attribute_names)
        return silent, torch.cat(outputs) if outputs else torch.zeros(0, width)

    @torch.no_grad()
    def probabilities(self, wavs: Sequence[Tensor]) -> Tensor:
        """B mono 16 kHz waveforms ``(T_b,)`` -> class probabilities ``(B, C)``, averaged over members.

        An utterance gets the probabilities it gets alone, whatever its batch-mates (to float
        rounding, ~1e-7): the upstreams run once per group of equal-length waveforms (a long
        file's windows form one), never on a padded batch, and each classifier, which masks
        padding, on the whole batch. A padded batch would change the features of its shorter
        utterances: HuBERT and wav2vec 2.0 Base's GroupNorm feature encoder normalises over the
        padding, HuBERT's frame mask lets attention see frames computed from padding, and s3prl's
        Featurizer keeps ``round(samples / rate)`` frames, up to 2 more than the upstream computes
        for the utterance alone (zeros for fbank). ``tests/test_batch_independence.py`` measures
        4e-4 (fbank) to 1e-2 (tiny HuBERT) that way, and checks the grouped path within 1e-5.
        An int8 upstream (:meth:`quantize`) reads one clip at a time: its activation scales are per tensor.
        """
        return self.outputs(wavs)[0][:, : len(self.class_names)]

    @torch.no_grad()
    def predictions(self, wavs: Sequence[Tensor]) -> Tensor:
        """B mono 16 kHz waveforms ``(T_b,)`` -> ``(B, C + A)``: the class probabilities, then the
        attribute values on the corpus's scale (:attr:`attribute_names` order), each averaged over
        members; just the probabilities for a model without attributes. Batch-independent as
        :meth:`probabilities` is."""
        return self.outputs(wavs)[0]

    @torch.no_grad()
    def embeddings(self, wavs: Sequence[Tensor]) -> Tensor:
        """B mono 16 kHz waveforms ``(T_b,)`` -> utterance embeddings ``(B, E)``: what each member's
        linear head reads (:meth:`EmotionClassifier.embed <s3prl_ser.models.fusion.EmotionClassifier.embed>`),
        concatenated in member order (``E`` = the sum of the members' sizes). Batch-independent
        as :meth:`probabilities` is."""
        return self.outputs(wavs)[1]

    @torch.no_grad()
    def outputs(self, wavs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """B mono 16 kHz waveforms ``(T_b,)`` -> (:meth:`predictions` ``(B, C + A)``, embeddings ``(B, E)``)
        from one forward pass; see :meth:`probabilities` and :meth:`embeddings`.

        Both float32 on the CPU whatever the recognizer's dtype: the waveforms are read in
        float32 (an upstream without weights computes its features in float32), the model runs
        in :attr:`dtype`, and the softmax and the attributes' scaling are taken in float32."""
        wavs = [w.to(self.device, torch.float32) for w in wavs]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, wav in enumerate(wavs):  # int8 activations take one scale per tensor: one clip at a time
            groups.setdefault((wav.shape[0], index if self.quantization else 0), []).append(index)
        order = [index for indices in groups.values() for index in indices]
        # parts[m]: member m's S streams for each group, utterances in `order`
        parts: list[list[list[list[Tensor]]]] = [[] for _ in self.members]
        for indices in groups.values():
            group = [wavs[i] for i in indices]
            outputs = [run_upstream(upstream, group, self.dtype) for upstream in self.upstreams]
            for member, member_parts in zip(self.members, parts):
                member_parts.append(member.features(group, outputs[member.upstream_index]))
        total = 0
        embeddings = []
        for member, member_parts in zip(self.members, parts):
            streams = [[frames for group in member_parts for frames in group[s]] for s in range(len(member_parts[0]))]
            embedding = member.classifier.embed(streams)
            embeddings.append(embedding.float())
            logits, attributes = split_outputs(member.classifier.classifier(embedding).float(), len(self.class_names))
            total = total + torch.cat([logits.softmax(dim=-1), attributes], dim=-1)
        inverse = torch.argsort(torch.tensor(order, device=self.device))
        mean = total[inverse] / len(self.members)
        if self.attribute_names:  # normalised [0, 1] -> the corpus's scale (linear: the mean of the members')
            probabilities, attributes = split_outputs(mean, len(self.class_names))
            mean = torch.cat([probabilities, denormalise(attributes, list(self.attribute_scale.values()))], dim=-1)
        return mean.cpu(), torch.cat(embeddings, dim=-1)[inverse].cpu()

    def to_prediction(self, values: Tensor, silence: bool = False) -> Prediction:
        """``(C + A,)`` :meth:`predictions` of one input (and whether it was silence) -> :class:`Prediction`."""
        probabilities, attributes = split_outputs(values, len(self.class_names))
        return Prediction(
            self.class_names[int(probabilities.argmax())] if self.class_names else None,
            {c: float(v) for c, v in zip(self.class_names, probabilities)},
            silence,
            {name: float(v) for name, v in zip(self.attribute_names, attributes)},
        )

    def predict_batch(
        self,
        audios: Sequence[AudioInput],
        sample_rate: int | Sequence[int] | None = None,
        *,
        batch_size: int | None = 8,
        top_k: int | None = None,
        classes: Sequence[str] | None = None,
    ) -> list[Prediction] | list[list[dict[str, Any]]]:
        """Predict several inputs (those of :meth:`predict`), ``batch_size`` per forward pass
        (None: all in one); each gets what it gets alone, whatever the batch (see
        :meth:`probabilities`). ``sample_rate``: one rate for every array, or one per input.
        ``classes`` and ``top_k``: as in :meth:`predict`."""
        if (classes is not None or top_k is not None) and not self.class_names:
            raise ValueError("classes and top_k need classes: this model predicts attributes only")
        if classes is not None:  # checked before any audio is read
            check_classes(self.class_names, classes)
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        silent, probabilities = self._batched(audios, sample_rate, batch_size)
        predictions = [self.to_prediction(p, s) for p, s in zip(probabilities, silent)]
        if classes is not None:
            predictions = [p.restricted(classes) for p in predictions]
        return predictions if top_k is None else [p.top(top_k) for p in predictions]

    def predict(
        self,
        audio: AudioInput,
        sample_rate: int | None = None,
        *,
        top_k: int | None = None,
        classes: Sequence[str] | None = None,
    ) -> Prediction | list[dict[str, Any]]:
        """Predict one input: a path (not a URL), an encoded file's bytes or binary file object,
        a waveform array with its ``sample_rate``, or ``{"array" | "raw": ..., "sampling_rate": ...}``
        (see :func:`~s3prl_ser.inference.audio_input.load_input`).

        Args:
            top_k: return the HF pipeline's list instead, ``[{"label": c, "score": p}, ...]``,
                the ``top_k`` most probable classes highest first (:meth:`Prediction.top`).
            classes: a subset of the model's classes: the others' probabilities are dropped and
                these divided by their sum (:meth:`Prediction.restricted`).

        Raises:
            ValueError: a class the model does not have (the message lists its classes), ``top_k`` < 1.
        """
        return self.predict_batch([audio], sample_rate, top_k=top_k, classes=classes)[0]

    def embed(
        self,
        audio: AudioInput | Sequence[AudioInput],
        sample_rate: int | Sequence[int] | None = None,
        *,
        batch_size: int | None = 8,
    ) -> Tensor:
        """The utterance embedding of one input ``(E,)``, or of a list of them ``(B, E)``.

        The inputs, ``sample_rate`` and ``batch_size`` are those of :meth:`predict` and
        :meth:`predict_batch`; each embedding is the one its input gets alone (see :meth:`embeddings`).
        ``E``: the input of each member's linear head (a fused model's: its streams' embeddings,
        concatenated for late fusion), members concatenated in member order.
        """
        batch = isinstance(audio, (list, tuple))
        embeddings = self._batched(audio if batch else [audio], sample_rate, batch_size, embeddings=True)[1]
        return embeddings if batch else embeddings[0]

    def predict_files(self, inputs: Iterable[str | os.PathLike], **options: Any) -> list[dict[str, Any]]:
        """Rows for files, folders and list files; see :func:`s3prl_ser.inference.files.predict_files`."""
        return list(predict_files(self, inputs, **options))

    def predict_long(self, path: str | os.PathLike, **options: Any) -> list[dict[str, Any]]:
        """Window rows (``segments="fixed"``, the default) or speech and silence rows (``segments="vad"``),
        then a summary row, of one long file; see :func:`s3prl_ser.inference.speech_segments.stream_long`."""
        return [row for rows in stream_long(self, path, **options) for row in rows]


def _build_featurizer(upstream: nn.Module, config: dict[str, Any], device: str) -> nn.Module:
    return build_featurizer(
        upstream, config["feature_selection"], config["layer_selection"], device, config["normalize"]
    ).to(device)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    if a is b:
        return True
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)
