"""The fine-tuning models of paper Figure 2: upstream -> features -> masked mean -> linear.

The linear layer has one row per output: C class logits, then A normalised attribute
predictions when the run learns attributes (:func:`~s3prl_ser.models.fusion.split_outputs`;
C = 0 without categories), so one head serves categories, attributes or both.

Speech (:class:`FineTuneModel`) and text (:class:`TextFineTuneModel`) share what the trainer
relies on, so one loop serves both modalities:

* ``upstream``: trained at ``upstream_lr``; ``upstream.model`` is what the checkpoints'
  ``model_weight`` holds and the export writes;
* ``head``: the layer selection and the classifier, trained at ``head_lr`` (``ft_head``);
* ``forward(wavs, names, train_upstream) -> (B, C + A) outputs`` over a raw batch of the fold's
  datasets: the only modality-specific step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from s3prl.upstream.interfaces import Featurizer
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from s3prl_ser.config import ConfigError
from s3prl_ser.models.classifier import UtteranceClassifier
from s3prl_ser.models.text_encoder import LayerSelection, TextEncoder, transcripts_for
from s3prl_ser.s3prl_logging import log_featurizer_notes

__all__ = ["FineTuneModel", "TextFineTuneModel", "AnyFineTuneModel", "configure_feature_encoder"]


def configure_feature_encoder(upstream: nn.Module, freeze: bool) -> None:
    """Freeze or unfreeze the CNN feature encoder ``upstream.model.feature_extractor``.

    s3prl's HuBERT / wav2vec 2.0 experts set ``feature_grad_mult = 0``, which runs the CNN
    under ``no_grad``; a trainable CNN needs it back at 1.

    Raises:
        ConfigError: ``freeze`` is asked of an upstream without such an encoder.
    """
    model = getattr(upstream, "model", None)
    encoder = getattr(model, "feature_extractor", None)
    if encoder is None:
        if freeze:
            raise ConfigError(
                f"config.upstream.freeze_feature_encoder: {type(upstream).__name__} has no "
                "model.feature_extractor to freeze; set it to false"
            )
        return
    for parameter in encoder.parameters():
        parameter.requires_grad_(not freeze)
    if not freeze and hasattr(model, "feature_grad_mult"):
        model.feature_grad_mult = 1.0


class FineTuneModel(nn.Module):
    """An s3prl upstream trained jointly with masked mean pooling and a linear head.

    ``head`` holds everything but the upstream: s3prl's ``Featurizer`` (whose layer weights are
    trained when ``feature_selection`` is ``hidden_states``) and the classifier.

    Args:
        upstream: an s3prl upstream expert (``upstream(wavs)`` -> dict of features).
        num_outputs: C + A (class logits, then attribute predictions).
        feature_selection: ``last_hidden_state`` or ``hidden_states`` (weighted sum of layers).
        device: where the model lives (the Featurizer probes the upstream there once to learn
            its output size).
    """

    def __init__(self, upstream: nn.Module, num_outputs: int, feature_selection: str, device: str) -> None:
        super().__init__()
        self.upstream = upstream.to(device)
        log_featurizer_notes()  # its construction notes as log records, not stderr prints
        featurizer = Featurizer(self.upstream, feature_selection=feature_selection, upstream_device=device)
        classifier = UtteranceClassifier(featurizer.output_dim, num_outputs, aggregator="mean")
        self.head = nn.ModuleDict({"featurizer": featurizer, "classifier": classifier}).to(device)

    def forward(
        self, wavs: Sequence[np.ndarray | Tensor], names: Sequence[str] = (), train_upstream: bool = True
    ) -> Tensor:
        """``wavs``: B waveforms ``(T_i,)`` at 16 kHz -> outputs ``(B, C + A)`` (``names`` unused).

        ``train_upstream=False`` runs the upstream without autograd (its frozen phase), so
        only the head receives gradients.
        """
        device = next(self.upstream.parameters()).device
        wavs = [torch.as_tensor(wav, device=device) for wav in wavs]
        with torch.set_grad_enabled(train_upstream and torch.is_grad_enabled()):
            features = self.upstream(wavs)
        # Per utterance (T'_i, D), trimmed to round(T_i / downsample rate) frames exactly as
        # s3prl's runner feeds the downstream stage.
        frames = self.head["featurizer"](wavs, features)
        lengths = torch.tensor([len(f) for f in frames], device=frames[0].device)
        return self.head["classifier"](pad_sequence(frames, batch_first=True), lengths)


class TextFineTuneModel(nn.Module):
    """A text encoder (BERT) trained jointly with masked mean pooling and a linear head
    on the utterances' transcripts: the text counterpart of :class:`FineTuneModel`.

    Args:
        encoder: the text encoder; ``encoder.model`` (the Hugging Face model) is what gets
            exported. Its own layer selection is unused: the head holds the one trained here.
        transcripts: utterance name -> text.
        source: where the transcripts came from (named in errors).
        num_outputs: C + A (class logits, then attribute predictions).
        feature_selection: ``last_hidden_state`` or ``hidden_states`` (weighted sum of layers).
        device: where the model lives.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        transcripts: Mapping[str, str],
        source: str,
        num_outputs: int,
        feature_selection: str,
        device: str,
    ) -> None:
        super().__init__()
        self.upstream = encoder.to(device)
        self.transcripts, self.source = transcripts, source
        featurizer = LayerSelection(encoder.num_layers, feature_selection)
        classifier = UtteranceClassifier(encoder.output_size, num_outputs, aggregator="mean")
        self.head = nn.ModuleDict({"featurizer": featurizer, "classifier": classifier}).to(device)

    def forward(self, wavs: Sequence[np.ndarray | Tensor], names: Sequence[str], train_upstream: bool = True) -> Tensor:
        """The transcripts of the B utterances ``names`` -> outputs ``(B, C + A)`` (``wavs`` unused)."""
        with torch.set_grad_enabled(train_upstream and torch.is_grad_enabled()):
            layers, lengths = self.upstream.hidden_states(transcripts_for(list(names), self.transcripts, self.source))
        return self.head["classifier"](self.head["featurizer"](layers), lengths)


AnyFineTuneModel = FineTuneModel | TextFineTuneModel
