"""int8 inference on the CPU: PyTorch dynamic quantization, and onnxruntime's quantized graph.

* :func:`quantize_dynamic_int8` (``EmotionRecognizer.quantize("int8")``,
  ``from_pretrained(..., quantize="int8")``): every ``nn.Linear`` of the upstreams becomes
  ``torch.ao.nn.quantized.dynamic.Linear`` (int8 weights; activations quantized per call, one
  scale per tensor). Convolutions (HuBERT's feature encoder, ECAPA-TDNN) stay float32: PyTorch
  has no dynamic quantization for them. ``torch.ao.quantization`` warns that it is deprecated
  and leaves PyTorch in 2.10 (torchao's ``quantize_`` follows it); torch is pinned to 2.9.1.
* :func:`quantize_onnx`: onnxruntime's ``quantize_dynamic`` of an exported graph's ``MatMul``
  nodes (``MatMulInteger``, int8 weights; activations take one scale per tensor, over the
  padded batch: run the graph one clip at a time for probabilities that do not depend on
  batch-mates). Given ``calibration`` clips, the upstream's convolutions (HuBERT's feature
  encoder after its first layer, and its positional convolution) also become static int8
  (``QuantizeLinear``/``DequantizeLinear`` around ``Conv``, which onnxruntime runs as
  ``QLinearConv``): per-channel weights, activation scales fixed by the clips. Dynamic
  ``ConvInteger`` ran slower than the float32 ``Conv`` (measured); the first convolution (the
  waveform, one channel) and the head's stay float32.

The figures (speed, label agreement, largest probability difference) are in
``docs/benchmarks.md`` (``benchmarks/inference_benchmark.py``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
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


def quantize_onnx(
    source: str | os.PathLike, target: str | os.PathLike, calibration: Sequence[np.ndarray] | None = None
) -> Path:
    """Write ``source`` (a float32 ONNX graph from ``export_onnx``) with int8 ``MatMul`` weights to
    ``target``; with ``calibration`` (1-D float32 16 kHz clips, a few dozen like the ones to be
    recognised), the upstream's convolutions become static int8 too (see the module docstring).

    The graph keeps its inputs and outputs; run it with onnxruntime as the float32 one.

    Raises:
        ImportError: ``onnxruntime`` is not installed (``pip install 's3prl-ser[onnx]'``).
        ValueError: ``calibration`` is empty.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = Path(target)
    if calibration is not None and len(calibration) == 0:
        raise ValueError("calibration needs at least one clip")
    # onnxruntime logs a suggestion to pre-process the graph (shape inference) at WARNING on the root logger
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        # DefaultTensorType: shape inference cannot type outputs of onnxruntime's own operators
        options = {"DefaultTensorType": 1}  # onnx.TensorProto.FLOAT
        if calibration is None:
            quantize_dynamic(Path(source), target, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
        else:
            with tempfile.TemporaryDirectory(prefix="s3prl_ser_int8_") as tmp:
                dynamic = Path(tmp) / "dynamic.onnx"
                quantize_dynamic(
                    Path(source), dynamic, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                    extra_options=options,
                )  # fmt: skip
                _quantize_convolutions(dynamic, target, calibration, options)
    finally:
        root.setLevel(level)
    log.info(
        "wrote %s (int8 MatMul weights%s of %s)", target, "" if calibration is None else " and convolutions", source
    )
    return target


def _quantize_convolutions(
    source: Path, target: Path, calibration: Sequence[np.ndarray], options: dict[str, Any]
) -> None:
    """Static int8 (QDQ) of the upstream's multi-channel ``Conv`` nodes of ``source``, scales
    calibrated on ``calibration`` fed one clip per run (batch 1, as the graph is run)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(source), load_external_data=False).graph
    channels = {tensor.name: tensor.dims[1] for tensor in graph.initializer if len(tensor.dims) == 3}
    nodes = [
        node.name
        for node in graph.node
        if node.op_type == "Conv" and not node.name.startswith("/heads.") and channels.get(node.input[1], 0) > 1
    ]
    if not nodes:
        log.info("no upstream convolution to quantize in %s", source)
        shutil.copyfile(source, target)
        return

    class Clips(CalibrationDataReader):
        def __init__(self) -> None:
            self.clips = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            clip = next(self.clips, None)
            if clip is None:
                return None
            wav = np.asarray(clip, dtype=np.float32).reshape(1, -1)
            return {"wavs": wav, "lengths": np.array([wav.shape[1]], dtype=np.int64)}

    quantize_static(
        source, target, Clips(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
        nodes_to_quantize=nodes, per_channel=True, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, extra_options=options,
    )  # fmt: skip
    log.info("int8 convolutions: %s", ", ".join(nodes))
