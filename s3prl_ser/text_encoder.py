"""Token-level features of transcripts from a Hugging Face encoder (the paper's BERT, exp. 10-11).

The encoder is read from a local directory (``save_pretrained`` layout); nothing is downloaded.
For tests and demos, ``python -m s3prl_ser.text_encoder tiny DIR`` writes a tiny random-init
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

__all__ = ["TextEncoder", "write_tiny_bert", "load_transcripts", "transcripts_for"]

class TextEncoder(nn.Module):
    """A Hugging Face encoder as a feature extractor over raw texts (its last hidden state).

    Args:
        name_or_path: local directory with the tokenizer and model (``save_pretrained``).
        max_length: texts are truncated to this many tokens.
    """

    def __init__(self, name_or_path: str | os.PathLike, max_length: int = 128) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = Path(name_or_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"text encoder not found: {path} has no config.json (write a tiny one with "
                "`python -m s3prl_ser.text_encoder tiny DIR`, or save_pretrained a real BERT there)"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.max_length = max_length
        self.output_size = int(self.model.config.hidden_size)

    def forward(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``B`` texts -> features ``(B, T, D)`` and valid token counts ``(B,)`` (CLS/SEP included)."""
        device = next(self.model.parameters()).device
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(device)
        return self.model(**batch).last_hidden_state, batch["attention_mask"].sum(dim=1)


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
    """
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from s3prl_ser.builtin_corpus import SENTENCES

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    corpus_words = {w.strip(".,?!'").lower() for sentence in SENTENCES for w in sentence.split()}
    words = sorted(set(_WORDS.split()) | corpus_words - {""})
    characters = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,?!'-"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + characters + [f"##{c}" for c in characters] + words
    (path / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    # Positional: the argument is `vocab_file` in transformers 4 and `vocab` in 5.
    tokenizer = BertTokenizerFast(str(path / "vocab.txt"), do_lower_case=True)
    if len(tokenizer) != len(dict.fromkeys(vocab)):
        raise RuntimeError(f"tokenizer built from {path / 'vocab.txt'} has {len(tokenizer)} tokens, expected {len(dict.fromkeys(vocab))}")
    tokenizer.save_pretrained(str(path))
    config = BertConfig(vocab_size=len(dict.fromkeys(vocab)), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden_size, max_position_embeddings=128)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(str(path))
    return path


def load_transcripts(path: str | os.PathLike) -> dict[str, str]:
    """``META_DIR/transcripts.json`` (utterance name -> text) written by ``prepare_iemocap``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"transcripts not found: {path} (written by `python -m s3prl_ser.prepare_iemocap`)")
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
    parser = argparse.ArgumentParser(description="Write a tiny random-init BERT for tests and demos.")
    parser.add_argument("command", choices=["tiny"])
    parser.add_argument("path", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"wrote tiny BERT to {write_tiny_bert(args.path, seed=args.seed)}")


if __name__ == "__main__":
    main()
