"""int8 inference on the CPU: PyTorch dynamic quantization, and onnxruntime's quantized graph.

* :func:`quantize_dynamic_int8` (``EmotionRecognizer.quantize("int8")``,
  ``from_pretrained(..., quantize="int8")``): every ``nn.Linear`` of the upstreams becomes
  ``torch.ao.nn.quantized.dynamic.Linear`` (int8 weights; activations quantized per call, one
  scale per tensor). Convolutions (HuBERT's feature encoder, ECAPA-TDNN) stay float32: PyTorch
  has no dynamic quantization for them. ``torch.ao.quantization`` warns that it is deprecated
  and leaves PyTorch in 2.10 (torchao's ``quantize_`` follows it); torch is pinned to 2.9.1.
* :func:`quantize_onnx`: onnxruntime's ``quantize_dynamic`` of an exported graph's ``MatMul``
  nodes (``MatMulInteger``, int8 weights). ``Conv`` is left float32: onnxruntime's
  ``ConvInteger`` ran slower than the float32 ``Conv`` on the feature encoder (measured).
  Activations take one scale per tensor, over the padded batch: run the graph one clip at a
  time for probabilities that do not depend on batch-mates.

The figures (speed, label agreement, largest probability difference) are in
``docs/benchmarks.md`` (``benchmarks/inference_benchmark.py``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["QUANTIZATIONS", "quantize_dynamic_int8", "quantize_onnx"]

QUANTIZATIONS = ("int8",)


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """``model`` (a float32 recognizer on the CPU) with its ``nn.Linear`` layers int8, in place.

    Fairseq-style attention (s3prl's HuBERT, wav2vec 2.0) is switched to its own
    projections first: its fused path hands ``q_proj.bias`` to
    ``F.multi_head_attention_forward`` as a tensor, and a quantized Linear's ``bias`` is a
    method. In place because s3prl's upstreams collect hidden states with hooks bound to
    their own instance (a copy would fill the original's list).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> [type(m).__name__ for m in quantize_dynamic_int8(model)]
        ['Linear', 'ReLU', 'Linear']
        >>> type(model[0]).__module__
        'torch.ao.nn.quantized.dynamic.modules.linear'

    Raises:
        ValueError: ``model`` is not float32 on the CPU.
    """
    parameter = next(p for p in model.parameters() if p.is_floating_point())
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        raise ValueError(
            f"int8 quantization needs a float32 model on the CPU, got {parameter.dtype} on {parameter.device}"
        )
    for module in model.modules():
        if hasattr(module, "_set_skip_embed_dim_check") and hasattr(module, "q_proj"):
            module._set_skip_embed_dim_check()
    torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return model


def quantize_onnx(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Write ``source`` (a float32 ONNX graph) with int8 ``MatMul`` weights to ``target``.

    The graph keeps its inputs and outputs; run it with onnxruntime as the float32 one.

    Raises:
        ImportError: ``onnxruntime`` is not installed (``pip install 's3prl-ser[onnx]'``).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = Path(target)
    # onnxruntime logs a suggestion to pre-process the graph (shape inference) at WARNING on the root logger
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(Path(source), target, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    log.info("wrote %s (int8 MatMul weights of %s)", target, source)
    return target
