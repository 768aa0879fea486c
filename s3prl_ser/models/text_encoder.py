"""Token-level features of transcripts from a Hugging Face encoder (the paper's BERT, exp. 10-11).

The encoder is read from a local directory (``save_pretrained`` layout); nothing is downloaded.
For tests and demos, ``python -m s3prl_ser.models.text_encoder tiny DIR`` writes a tiny random-init
BERT with a word-level WordPiece vocabulary covering the built-in corpus's sentences.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "FEATURE_SELECTIONS",
    "LayerSelection",
    "TextEncoder",
    "write_tiny_bert",
    "load_transcripts",
    "transcripts_for",
]

FEATURE_SELECTIONS = ("last_hidden_state", "hidden_states")
# Files any one of which holds a tokenizer's vocabulary. Without one, AutoTokenizer silently
# builds a tokenizer that maps every word to [UNK], so their absence is checked up front.
_VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                     "tokenizer.model")
_HOW_TO_MAKE = ("write a tiny one with `python -m s3prl_ser.models.text_encoder tiny DIR`, or `save_pretrained` "
                "a real BERT's model and tokenizer there")


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
            raise ValueError(f"feature_selection must be one of {', '.join(FEATURE_SELECTIONS)}, "
                             f"got {feature_selection!r}")
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
        raise FileNotFoundError(f"text encoder {path} has no tokenizer vocabulary (one of "
                                f"{', '.join(_VOCABULARY_FILES)}; {_HOW_TO_MAKE})")


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

    def __init__(self, name_or_path: str | os.PathLike, feature_selection: str = "last_hidden_state",
                 max_length: int = 128) -> None:
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
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(device)
        output = self.model(**batch, output_hidden_states=True)
        return tuple(output.hidden_states), batch["attention_mask"].sum(dim=1)

    def forward(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``B`` texts -> features ``(B, T, D)`` and valid token counts ``(B,)`` (CLS/SEP included)."""
        layers, lengths = self.hidden_states(texts)
        return self.featurizer(layers), lengths


_WORDS = (
    "i you he she it we they me my your his her our their this that these those the a an and or but not no "
    "yes is are was were be been will would can could do did have has had to of in on at for with from by "
    "about as what where when who why how there here all some one two nine six last new other again day "
    "morning tomorrow yesterday home city car bus train door table keys box salt book letter shop meeting "
    "friday dinner corner drawer brother excuse left comes called need talk put raining bought open pass "
    "moved another works downtown think closes sit over read had late turn let see saw forms problem line "
    "told get let's know just right okay well really go going want like time"
)


def write_tiny_bert(path: str | os.PathLike, *, seed: int = 0, hidden_size: int = 32, layers: int = 2,
                    heads: int = 2) -> Path:
    """Write a random-init BERT and its tokenizer to ``path`` (``save_pretrained`` layout).

    The vocabulary holds the special tokens, single characters and a few hundred common
    English words (every word of the built-in corpus), so texts rarely fall back to [UNK].
    The weights depend on ``seed`` only (the global RNG is left untouched).
    """
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from s3prl_ser.toy.builtin_corpus import SENTENCES

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    corpus_words = {w.strip(".,?!'").lower() for sentence in SENTENCES for w in sentence.split()}
    words = sorted(set(_WORDS.split()) | corpus_words - {""})
    characters = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,?!'-"))
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + characters
                               + [f"##{c}" for c in characters] + words))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # Positional: the argument is `vocab_file` in transformers 4 and `vocab` in 5.
    tokenizer = BertTokenizerFast(str(path / "vocab.txt"), do_lower_case=True)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"tokenizer built from {path / 'vocab.txt'} has {len(tokenizer)} tokens, "
                           f"expected {len(vocab)}")
    tokenizer.save_pretrained(str(path))
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden_size, max_position_embeddings=128)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(str(path))
    return path


def load_transcripts(path: str | os.PathLike) -> dict[str, str]:
    """``META_DIR/transcripts.json`` (utterance name -> text) written by ``prepare_iemocap``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or not an object of strings.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"transcripts not found: {path} (written by `python -m s3prl_ser.data.prepare_iemocap`)")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m s3prl_ser.models.text_encoder",
                                     description="Write a tiny random-init BERT for tests and demos.")
    parser.add_argument("command", choices=["tiny"])
    parser.add_argument("path", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"wrote tiny BERT to {write_tiny_bert(args.path, seed=args.seed)}")


if __name__ == "__main__":
    main()
