"""Token-level features of transcripts from a Hugging Face encoder (the paper's BERT, exp. 10-11).

The encoder is read from a local directory (``save_pretrained`` layout); nothing is downloaded.
For tests and demos, ``python -m s3prl_ser.cli.tiny_bert DIR`` writes a tiny random-init BERT
(:mod:`s3prl_ser.toy.tiny_bert`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "FEATURE_SELECTIONS",
    "LayerSelection",
    "TextEncoder",
    "load_transcripts",
    "transcripts_for",
]

FEATURE_SELECTIONS = ("last_hidden_state", "hidden_states")
# Files any one of which holds a tokenizer's vocabulary. Without one, AutoTokenizer silently
# builds a tokenizer that maps every word to [UNK], so their absence is checked up front.
_VOCABULARY_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
_HOW_TO_MAKE = (
    "write a tiny one with `python -m s3prl_ser.cli.tiny_bert DIR`, or `save_pretrained` "
    "a real BERT's model and tokenizer there"
)


class LayerSelection(nn.Module):
    """The features taken from an encoder's layers, like s3prl's ``Featurizer``.

    Args:
        num_layers: L, hidden states the encoder returns (embeddings + each layer).
        feature_selection: ``last_hidden_state`` (the last layer) or ``hidden_states`` (a sum of
            all layers weighted by the softmax of L learnable weights, initialised equal).
    """

    def __init__(self, num_layers: int, feature_selection: str = "last_hidden_state") -> None:
        super().__init__()
        if feature_selection not in FEATURE_SELECTIONS:
            raise ValueError(
                f"feature_selection must be one of {', '.join(FEATURE_SELECTIONS)}, got {feature_selection!r}"
            )
        self.num_layers, self.feature_selection = num_layers, feature_selection
        self.weights = nn.Parameter(torch.zeros(num_layers)) if feature_selection == "hidden_states" else None

    def forward(self, layers: Sequence[Tensor]) -> Tensor:
        """L tensors ``(B, T, D)`` -> ``(B, T, D)``."""
        if len(layers) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} hidden states, got {len(layers)}")
        if self.weights is None:
            return layers[-1]
        weights = torch.softmax(self.weights, dim=0).view(-1, 1, 1, 1)
        return (weights * torch.stack(list(layers))).sum(dim=0)


def _check_encoder_dir(path: Path) -> None:
    """Raise FileNotFoundError naming ``path`` unless it holds a model config and a vocabulary."""
    if not path.is_dir():
        raise FileNotFoundError(f"text encoder directory not found: {path} ({_HOW_TO_MAKE})")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"text encoder {path} has no config.json ({_HOW_TO_MAKE})")
    if not any((path / name).is_file() for name in _VOCABULARY_FILES):
        raise FileNotFoundError(
            f"text encoder {path} has no tokenizer vocabulary (one of {', '.join(_VOCABULARY_FILES)}; {_HOW_TO_MAKE})"
        )


class TextEncoder(nn.Module):
    """A Hugging Face encoder (BERT) as a feature extractor over raw texts.

    Args:
        name_or_path: local directory with the tokenizer and the model (``save_pretrained``).
        feature_selection: ``last_hidden_state``, or ``hidden_states`` for a learnable softmax-
            weighted sum of all layers (see :class:`LayerSelection`).
        max_length: texts are truncated to this many tokens (CLS and SEP included).

    Attributes:
        tokenizer, model: the Hugging Face tokenizer and model (``model`` is what gets fine-tuned
            and exported with ``save_pretrained``).
        featurizer: the :class:`LayerSelection` applied to the model's hidden states.
        output_size: D, the hidden size.

    Raises:
        FileNotFoundError: the directory, its config, vocabulary or weights are missing.
    """

    def __init__(
        self, name_or_path: str | os.PathLike, feature_selection: str = "last_hidden_state", max_length: int = 128
    ) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = Path(name_or_path)
        _check_encoder_dir(path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except OSError as error:  # e.g. no weights file
            raise FileNotFoundError(f"cannot load the text encoder in {path}: {error} ({_HOW_TO_MAKE})") from error
        self.max_length = max_length
        self.output_size = int(self.model.config.hidden_size)
        self.num_layers = int(self.model.config.num_hidden_layers) + 1  # + the embedding output
        self.featurizer = LayerSelection(self.num_layers, feature_selection)

    def hidden_states(self, texts: Sequence[str]) -> tuple[tuple[Tensor, ...], Tensor]:
        """Tokenise ``B`` texts on the model's device and encode them.

        Returns:
            the L = layers + 1 hidden states, each ``(B, T, D)`` with T the longest text's token
            count (padding positions hold arbitrary values), and the valid token counts ``(B,)``
            (CLS and SEP included, so an empty text has 2).
        """
        device = next(self.model.parameters()).device
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        output = self.model(**batch, output_hidden_states=True)
        return tuple(output.hidden_states), batch["attention_mask"].sum(dim=1)

    def forward(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``B`` texts -> features ``(B, T, D)`` and valid token counts ``(B,)`` (CLS/SEP included)."""
        layers, lengths = self.hidden_states(texts)
        return self.featurizer(layers), lengths


def load_transcripts(path: str | os.PathLike) -> dict[str, str]:
    """``META_DIR/transcripts.json`` (utterance name -> text) written by ``prepare_iemocap``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or not an object of strings.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"transcripts not found: {path} (written by `python -m s3prl_ser.cli.prepare_iemocap`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{path}: expected an object mapping utterance names to texts")
    return data


def transcripts_for(names: Sequence[str], transcripts: Mapping[str, str], source: str | os.PathLike) -> list[str]:
    """The texts of ``names``; a name without transcript raises a KeyError naming it and ``source``."""
    missing = [name for name in names if name not in transcripts]
    if missing:
        raise KeyError(f"{source}: no transcript for {', '.join(missing[:3])}")
    return [transcripts[name] for name in names]
