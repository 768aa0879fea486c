"""A tiny random-init BERT and tokenizer, in place of a pretrained one for tests and demos.

Its word-level WordPiece vocabulary covers the built-in corpus's sentences, so the text stream
(paper experiments 10-11) runs without downloads. Command line: ``python -m
s3prl_ser.cli.tiny_bert DIR [--seed N]`` (:mod:`s3prl_ser.cli.tiny_bert`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from s3prl_ser.toy.builtin_corpus import SENTENCES

__all__ = ["write_tiny_bert"]

_WORDS = (
    "i you he she it we they me my your his her our their this that these those the a an and or but not no "
    "yes is are was were be been will would can could do did have has had to of in on at for with from by "
    "about as what where when who why how there here all some one two nine six last new other again day "
    "morning tomorrow yesterday home city car bus train door table keys box salt book letter shop meeting "
    "friday dinner corner drawer brother excuse left comes called need talk put raining bought open pass "
    "moved another works downtown think closes sit over read had late turn let see saw forms problem line "
    "told get let's know just right okay well really go going want like time"
)


def write_tiny_bert(
    path: str | os.PathLike, *, seed: int = 0, hidden_size: int = 32, layers: int = 2, heads: int = 2
) -> Path:
    """Write a random-init BERT and its tokenizer to ``path`` (``save_pretrained`` layout).

    The vocabulary holds the special tokens, single characters and a few hundred common
    English words (every word of the built-in corpus), so texts rarely fall back to [UNK].
    The weights depend on ``seed`` only (the global RNG is left untouched).
    """
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    corpus_words = {w.strip(".,?!'").lower() for sentence in SENTENCES for w in sentence.split()}
    words = sorted(set(_WORDS.split()) | corpus_words - {""})
    characters = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,?!'-"))
    vocab = list(
        dict.fromkeys(
            ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + characters + [f"##{c}" for c in characters] + words
        )
    )
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # Positional: the argument is `vocab_file` in transformers 4 and `vocab` in 5.
    tokenizer = BertTokenizerFast(str(path / "vocab.txt"), do_lower_case=True)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(
            f"tokenizer built from {path / 'vocab.txt'} has {len(tokenizer)} tokens, expected {len(vocab)}"
        )
    tokenizer.save_pretrained(str(path))
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=128,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(str(path))
    return path
