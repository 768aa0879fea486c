"""Write tiny random-init HuBERT / wav2vec 2.0 checkpoints in s3prl's converted format.

No pretrained SSL weights can be downloaded here, so tests and demos use these in place of
``hubert_base_ls960.pt`` & co. They are the same architectures at toy size, saved exactly as
s3prl's ``upstream/{hubert,wav2vec2}/convert.py`` saves converted fairseq checkpoints
(``task_cfg``, ``model_cfg``, ``model_weight``, ``dictionaries_symbols``; configs as plain
dicts), so stock s3prl loads them with ``hubert_local`` / ``wav2vec2_local`` and ``-k PATH``.

The feature encoder keeps the real models' total stride (320 samples = 20 ms at 16 kHz) and
receptive field (400 samples), so frame counts and length checks behave as with real weights.

Command line: ``python -m s3prl_ser.cli.tiny_upstream hubert tiny_hubert.pt [--layers 2 --dim 48
--seed 0]`` (:mod:`s3prl_ser.cli.tiny_upstream`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch

from s3prl_ser.fileio import atomic_torch_save

__all__ = ["write_tiny_upstream", "tiny_model_cfg"]

Architecture = Literal["hubert", "wav2vec2"]

# Same strides as the real models (5 * 2**6 = 320), far fewer channels.
_CONV_FEATURE_LAYERS = "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2"


def tiny_model_cfg(arch: Architecture, *, layers: int, dim: int, heads: int) -> dict[str, Any]:
    """The fairseq-style model config (a plain dict) of a tiny upstream."""
    common = dict(
        encoder_layers=layers,
        encoder_embed_dim=dim,
        encoder_ffn_embed_dim=2 * dim,
        encoder_attention_heads=heads,
        conv_feature_layers=_CONV_FEATURE_LAYERS,
        conv_pos=16,
        conv_pos_groups=4,
        final_dim=16,
        extractor_mode="default",
        layer_norm_first=False,
        feature_grad_mult=1.0,
    )
    if arch == "hubert":
        return dict(common, label_rate=50.0)
    if arch == "wav2vec2":
        return dict(common, latent_vars=8, latent_groups=2, latent_dim=0, num_negatives=10)
    raise ValueError(f"unknown architecture {arch!r}; expected 'hubert' or 'wav2vec2'")


def _build(arch: Architecture, model_cfg: dict, task_cfg: dict, symbols: list) -> torch.nn.Module:
    """Instantiate through s3prl's own loaders' config path, so the saved file round-trips."""
    from s3prl.upstream.utils import merge_with_parent

    if arch == "hubert":
        from s3prl.upstream.hubert.hubert_model import (
            HubertConfig,
            HubertModel,
            HubertPretrainingConfig,
        )

        return HubertModel(
            merge_with_parent(HubertConfig, model_cfg),
            merge_with_parent(HubertPretrainingConfig, task_cfg),
            symbols,
        )
    from s3prl.upstream.wav2vec2.wav2vec2_model import Wav2Vec2Config, Wav2Vec2Model

    return Wav2Vec2Model(merge_with_parent(Wav2Vec2Config, model_cfg))


def write_tiny_upstream(
    arch: Architecture,
    path: str | os.PathLike,
    *,
    layers: int = 2,
    dim: int = 48,
    heads: int = 4,
    seed: int = 0,
    model_overrides: dict[str, Any] | None = None,
) -> Path:
    """Write a random-init ``arch`` checkpoint in s3prl's converted format to ``path``.

    Args:
        arch: ``"hubert"`` or ``"wav2vec2"``.
        path: output file (parent directories are created; written atomically).
        layers, dim, heads: transformer size; ``dim`` must be divisible by ``heads``.
        seed: initialisation seed; the same seed gives bit-identical weights.
        model_overrides: model config keys to replace, e.g. the real feature encoder
            (``conv_feature_layers``) for a random-init model of a real model's size.
    """
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
    model_cfg = {**tiny_model_cfg(arch, layers=layers, dim=dim, heads=heads), **(model_overrides or {})}
    task_cfg = dict(sample_rate=16000, normalize=False, label_rate=50.0, labels=["km"])
    # HuBERT's prediction head needs the label dictionary: fairseq's 4 specials + 8 units.
    symbols = [["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(8)]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build(arch, model_cfg, task_cfg, symbols)
    state = {
        "task_cfg": task_cfg,
        "model_cfg": model_cfg,
        "model_weight": model.state_dict(),
        "dictionaries_symbols": symbols,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, path)
    return path
