"""CUDA check of the recognizer's precisions: float16 and bfloat16 against float32 on a GPU.

For the random-init fbank and HuBERT-Base recognizers of ``inference_benchmark.py`` (their
linear head scaled to logits of standard deviation 3 on the clips, as there): each dtype's
largest probability difference and label agreement with float32 on ``--clips`` 1-s synthetic
clips, its embeddings' largest relative difference, and its speed at batch 1 and ``--batch``.
Exits with status 2 when no GPU is visible (the CPU paths are tested in tests/test_precision.py).

    python benchmarks/gpu_precision_check.py [--device cuda] [--clips 200] [--batch 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from inference_benchmark import _base_hubert, agreement_clips, recognizer

from s3prl_ser.inference import EmotionRecognizer


def seconds_per_pass(model: EmotionRecognizer, clips: list[torch.Tensor], batch: int) -> float:
    """Wall seconds for ``clips``, ``batch`` per forward pass (CUDA synchronised)."""
    model.probabilities(clips[:batch])  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    for first in range(0, len(clips), batch):
        model.probabilities(clips[first : first + batch])
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="CUDA device")
    parser.add_argument("--clips", type=int, default=200, help="1-s synthetic clips")
    parser.add_argument("--batch", type=int, default=16, help="clips per forward pass, second timing")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (tests/test_precision.py covers the CPU)", file=sys.stderr)
        sys.exit(2)
    clips = agreement_clips(args.clips)
    with tempfile.TemporaryDirectory(prefix="s3prl_ser_gpu_check_") as tmp:
        base = str(_base_hubert(Path(tmp) / "base.pt"))
        for name, ckpt in [("fbank", None), ("hubert_local", base)]:
            reference_model = recognizer(name, ckpt).to(args.device)
            head = reference_model.members[0].classifier.classifier
            with torch.no_grad():
                scale = 3.0 / head(reference_model.embeddings(clips).to(args.device)).std()
                head.weight.mul_(scale)
                head.bias.mul_(scale)
            reference, reference_embeddings = reference_model.outputs(clips)
            state = reference_model.state_dict()
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                model = recognizer(name, ckpt)
                model.load_state_dict(state)
                model.to(args.device, dtype)
                probabilities, embeddings = model.outputs(clips)
                assert probabilities.dtype == embeddings.dtype == torch.float32
                difference = (probabilities - reference).abs().max().item()
                same = (probabilities.argmax(1) == reference.argmax(1)).float().mean().item()
                relative = ((embeddings - reference_embeddings).norm(dim=1) / reference_embeddings.norm(dim=1)).max()
                one, many = seconds_per_pass(model, clips, 1), seconds_per_pass(model, clips, args.batch)
                print(
                    f"{name:12s} {str(dtype):15s} max |p - p32| {difference:.1e}  labels {same:7.2%} same  "
                    f"embeddings {relative.item():.1e} rel.  {args.clips / one:7.1f} clips/s at batch 1, "
                    f"{args.clips / many:7.1f} at batch {args.batch}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
