"""Build an s3prl upstream from its hub entry and find out how a fine-tuned copy can be exported.

An upstream can be exported in s3prl's converted format when its expert is s3prl's HuBERT or
wav2vec 2.0 ``UpstreamExpert`` (every hub entry of those families: ``hubert``,
``hubert_large_ll60k``, ``wav2vec2``, ``xlsr_53``, ``*_local -k FILE``, ...). Such an expert
keeps the fairseq-style model as ``expert.model``; its ``state_dict()`` is the converted
checkpoint's ``model_weight``, and the checkpoint's configs come from the file s3prl read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from s3prl_ser.data.protocol import FoldSpec

__all__ = ["CONVERTED_LOADERS", "UnsupportedUpstreamError", "LoadedUpstream", "load_upstream", "export_loader"]

CONVERTED_LOADERS = ("hubert_local", "wav2vec2_local")
"""The hub entries that load an exported upstream from a converted checkpoint file (no download)."""


class UnsupportedUpstreamError(ValueError):
    """The upstream cannot be exported as an s3prl converted checkpoint."""


@dataclass(frozen=True)
class LoadedUpstream:
    """An upstream expert and where its weights came from.

    Attributes:
        expert: the s3prl upstream (``expert(wavs)`` -> dict of features).
        name: the hub entry, e.g. ``hubert`` or ``hubert_local``.
        ckpt: the ``-k`` argument, if any.
        source_file: the converted checkpoint file s3prl built the model from (HuBERT and
            wav2vec 2.0 families), else None.
    """

    expert: nn.Module
    name: str
    ckpt: str | None
    source_file: Path | None


def _converted_expert_modules() -> dict[str, object]:
    import s3prl.upstream.hubert.expert as hubert_expert
    import s3prl.upstream.wav2vec2.expert as wav2vec2_expert

    return dict(zip(CONVERTED_LOADERS, (hubert_expert, wav2vec2_expert)))


@contextlib.contextmanager
def _recording_converted_loads() -> Iterator[list[Path]]:
    """Collect the files s3prl's HuBERT / wav2vec 2.0 experts read while the block runs.

    Entries such as ``hubert`` resolve a URL to a cached file inside s3prl, so the expert's
    call to ``load_converted_model`` is the one place that sees the path.
    """
    seen: list[Path] = []
    originals = {}
    for module in _converted_expert_modules().values():
        original = module.load_converted_model
        originals[module] = original

        def recording(ckpt, _original=original):
            seen.append(Path(ckpt))
            return _original(ckpt)

        module.load_converted_model = recording
    try:
        yield seen
    finally:
        for module, original in originals.items():
            module.load_converted_model = original


def load_upstream(
    name: str, ckpt: str | None = None, fold: FoldSpec | None = None, model_config: str | None = None
) -> LoadedUpstream:
    """Instantiate the s3prl hub entry ``name`` (with ``ckpt=`` and ``model_config=`` when given), on CPU.

    ``fold`` is the fold about to be fine-tuned, or its protocol: an ``upstream_ft`` export
    of another fold as the starting point (or a ``*_ft_avg`` entry's) would carry that fold's
    training data, which include this fold's test session; one of another split, this
    fold's dev utterances.

    Raises:
        ValueError: ``name`` is not an s3prl hub entry (close names are suggested).
        FoldMismatchError: ``ckpt`` was fine-tuned for another fold, or records none.
        ProtocolMismatchError: ``ckpt`` was fine-tuned on another corpus or split.
    """
    from s3prl_ser.upstreams.build import build_upstream

    with _recording_converted_loads() as seen:
        expert = build_upstream(name, ckpt, model_config, fold=fold)
    return LoadedUpstream(expert, name, ckpt, seen[-1] if seen else None)


def export_loader(loaded: LoadedUpstream) -> str:
    """The hub entry that loads an exported copy of ``loaded``: ``hubert_local`` or ``wav2vec2_local``.

    Raises:
        UnsupportedUpstreamError: the upstream's checkpoints have no converted format.
    """
    for loader, module in _converted_expert_modules().items():
        if type(loaded.expert) is module.UpstreamExpert and loaded.source_file is not None:
            return loader
    kind = f"{type(loaded.expert).__module__}.{type(loaded.expert).__name__}"
    raise UnsupportedUpstreamError(
        f"cannot export a fine-tuned {loaded.name!r}: its expert ({kind}) has no s3prl converted "
        "checkpoint format; fine-tuning and export support the HuBERT and wav2vec 2.0 families "
        "(loaded by hubert_local / wav2vec2_local), e.g. -u hubert, -u wav2vec2, -u hubert_local -k FILE"
    )
