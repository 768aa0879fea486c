"""Benchmark: CPU real-time factor of inference, batch 1 vs batched, and peak memory on a long file.

Real-time factor here = seconds of audio processed per second of wall time (higher is faster),
for two random-init recognizers with the default ECAPA-TDNN (``downstream/emotion_ecapa/config.yaml``):

* ``fbank+ECAPA``: s3prl's fbank upstream;
* ``HuBERT-Base+ECAPA``: a random-init HuBERT of Base size (s3prl's ``HubertConfig`` defaults:
  7-layer 512-channel CNN, 12 transformer layers of 768), loaded through ``hubert_local``.

The clips (default 16, 2-8 s, mean ~5 s like IEMOCAP's utterances) are synthetic noise held in
memory: the figures are model time (what :meth:`EmotionRecognizer.probabilities` costs), not
decoding. ``--long-minutes N`` also writes an N-minute WAV and runs the windowed long-audio path
(8 s windows, 4 s hop, fbank+ECAPA) in a child process, reporting its peak resident memory.

Precision (HuBERT-Base+ECAPA, batch 1, ``--precision-clips`` clips of 2-8 s): seconds per
second of audio of the bare float32 upstream forward, the full float32 path, the full path in
bfloat16, with int8 linear layers (``quantize("int8")``), and onnxruntime on the exported full
graph (float32; its int8 ``MatMul`` graph: ``quantize_onnx``; and that graph with the upstream's
convolutions static int8 too, calibrated on 16 synthetic clips other than the agreement clips),
each as a speed ratio to the bare float32 upstream and to the full float32 path (timed clip by
clip, the paths in turn). Each path's labels and probabilities are compared with the float32
path's on ``--agreement-clips`` 1-s synthetic clips (harmonic tones with vibrato, noise and
envelopes drawn at random); the head's linear layer is scaled to logits of standard deviation
3 over them, since a random-init head gives near-uniform probabilities where labels flip on
rounding noise (a trained head is far from uniform).

    python benchmarks/inference_benchmark.py [--threads 1] [--clips 16] [--batch 8] [--long-minutes 60]
        [--precision-clips 8] [--agreement-clips 200] [--skip-precision]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import yaml

from s3prl_ser.inference import EmotionRecognizer, RecognizerMember
from s3prl_ser.models.fusion import EmotionClassifier
from s3prl_ser.upstreams.build import build_upstream
from s3prl_ser.upstreams.multi_upstream import build_featurizer
from s3prl_ser.upstreams.registry import DOWNSTREAM_DIR, register

# Peak memory from /proc/self/status's VmHWM: ru_maxrss survives fork + exec, so a child would
# report the benchmark's own peak (the HuBERT model) instead of its own.
_LONG_CHILD = """
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
from s3prl_ser.inference import EmotionRecognizer
def hwm_kb():
    line = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
    return int(line.split()[1])
recognizer = EmotionRecognizer.from_pretrained(sys.argv[1])
before = hwm_kb()
start = time.perf_counter()
rows = recognizer.predict_long(sys.argv[2], window=8.0, hop=4.0, batch_size=8)
seconds = time.perf_counter() - start
print(json.dumps({"windows": len(rows) - 1, "seconds": seconds, "rss_after_load_kb": before,
                  "peak_kb": hwm_kb(), "summary": rows[-1]["label"]}))
"""


def _ecapa() -> dict:
    config = yaml.safe_load((DOWNSTREAM_DIR / "emotion_ecapa" / "config.yaml").read_text())
    return config["downstream_expert"]["modelrc"]["ecapa"]


def _base_hubert(path: Path) -> Path:
    """A random-init HuBERT Base in s3prl's converted format."""
    from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig
    from s3prl.upstream.utils import merge_with_parent

    from s3prl_ser.fileio import atomic_torch_save

    task_cfg = dict(sample_rate=16000, normalize=False, label_rate=50.0, labels=["km"])
    symbols = [["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(504)]]
    model_cfg = {"encoder_layers": 12, "label_rate": 50.0}  # every other field: HubertConfig's (Base) defaults
    model = HubertModel(
        merge_with_parent(HubertConfig, model_cfg), merge_with_parent(HubertPretrainingConfig, task_cfg), symbols
    )
    atomic_torch_save(
        {
            "task_cfg": task_cfg,
            "model_cfg": model_cfg,
            "model_weight": model.state_dict(),
            "dictionaries_symbols": symbols,
        },
        path,
    )
    return path


def recognizer(name: str, ckpt: str | None = None) -> EmotionRecognizer:
    """A random-init recognizer on upstream ``name`` with the default ECAPA-TDNN, 4 classes."""
    register()
    upstream = build_upstream(name, ckpt)
    featurizer = build_featurizer(upstream, "hidden_states", None, "cpu", False)
    classifier = EmotionClassifier([featurizer.output_dim], [featurizer.downsample_rate], 4, ecapa=_ecapa())
    return EmotionRecognizer([upstream], [RecognizerMember(featurizer, classifier)], ["neu", "hap", "ang", "sad"])


def real_time_factor(model: EmotionRecognizer, clips: list[torch.Tensor], batch: int) -> float:
    """Seconds of audio per second of wall time over ``clips`` (sorted by length, ``batch`` at a time)."""
    ordered = sorted(clips, key=len)
    model.probabilities(ordered[:batch])  # warm-up
    start = time.perf_counter()
    for first in range(0, len(ordered), batch):
        model.probabilities(ordered[first : first + batch])
    seconds = time.perf_counter() - start
    return sum(len(c) for c in clips) / 16000 / seconds


def agreement_clips(count: int, seed: int = 1) -> list[torch.Tensor]:
    """``count`` 1-s clips that differ: a harmonic tone (random pitch, vibrato, harmonics) under a
    random envelope, plus noise at a random level, scaled to a random peak."""
    rng = np.random.default_rng(seed)
    t = np.arange(16000) / 16000
    clips = []
    for _ in range(count):
        pitch = rng.uniform(80, 400) * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(2, 8) * t))
        phase = 2 * np.pi * np.cumsum(pitch) / 16000
        tone = sum(rng.uniform(0, 1) / k * np.sin(k * phase) for k in range(1, 9))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 6) * t + rng.uniform(0, 2 * np.pi))
        clip = tone * envelope + rng.uniform(0.01, 1.0) * rng.standard_normal(16000)
        clips.append(torch.from_numpy((clip / np.abs(clip).max() * rng.uniform(0.05, 0.9)).astype("float32")))
    return clips


def precision_paths(base: Path, clips: list[torch.Tensor], agreement: list[torch.Tensor], workdir: Path) -> None:
    """Print each path's speed at batch 1 on ``clips`` as a ratio to the bare float32 upstream, and
    its label agreement and largest probability difference with the float32 path on ``agreement``."""
    float32 = recognizer("hubert_local", str(base))
    head = float32.members[0].classifier.classifier
    with torch.no_grad():  # logits of std 3 on the agreement clips (see the module docstring)
        scale = 3.0 / head(float32.embeddings(agreement)).std()
        head.weight.mul_(scale)
        head.bias.mul_(scale)

    def copy() -> EmotionRecognizer:  # a fresh one with the same weights (s3prl's hooks forbid deepcopy)
        model = recognizer("hubert_local", str(base))
        model.load_state_dict(float32.state_dict())
        return model

    upstream = float32.upstreams[0]
    paths: dict[str, tuple[Callable[[torch.Tensor], Any], Callable[[list[torch.Tensor]], np.ndarray] | None]] = {
        "bare float32 upstream": (lambda clip: upstream([clip]), None),
        "full float32 (PyTorch)": (lambda clip: float32.probabilities([clip]), None),
    }
    bfloat16 = copy().bfloat16()
    paths["full bfloat16 (PyTorch)"] = (lambda clip: bfloat16.probabilities([clip]), bfloat16.probabilities)
    int8 = copy().quantize("int8")
    paths["full int8 (PyTorch)"] = (lambda clip: int8.probabilities([clip]), int8.probabilities)
    try:
        import onnxruntime as ort

        from s3prl_ser.inference.onnx import export_onnx
        from s3prl_ser.inference.quantize import quantize_onnx

        export_onnx(float32, workdir / "model.onnx")
        quantize_onnx(workdir / "model.onnx", workdir / "model.int8.onnx")
        calibration = [clip.numpy() for clip in agreement_clips(16, seed=2)]  # not the agreement clips
        quantize_onnx(workdir / "model.onnx", workdir / "model.int8conv.onnx", calibration)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = torch.get_num_threads()
        for name, file in [
            ("onnxruntime float32", "model.onnx"),
            ("onnxruntime int8", "model.int8.onnx"),
            ("onnxruntime int8 + conv", "model.int8conv.onnx"),
        ]:
            session = ort.InferenceSession(str(workdir / file), options, providers=["CPUExecutionProvider"])

            def run(clip: torch.Tensor, session: Any = session) -> np.ndarray:
                feed = {"wavs": clip.numpy()[None], "lengths": np.array([len(clip)], dtype=np.int64)}
                return session.run(None, feed)[0]

            # one clip per run: the int8 graph's activation scales are per tensor, over the padded batch
            paths[name] = (run, lambda wavs, run=run: np.concatenate([run(w) for w in wavs]))
    except ImportError as error:
        print(f"onnxruntime paths skipped: {error}")
    reference = float32.probabilities(agreement).numpy()
    audio = sum(len(c) for c in clips) / 16000
    print(
        f"precision: HuBERT-Base+ECAPA, batch 1, {len(clips)} clips ({audio:.1f} s); "
        f"agreement on {len(agreement)} 1-s clips vs the float32 path"
    )
    seconds = dict.fromkeys(paths, 0.0)
    with torch.inference_mode():
        for one, _ in paths.values():
            one(clips[0])  # warm-up
        # clip by clip, every path in turn: a machine shared with other jobs slows them alike
        for clip in clips:
            for name, (one, _) in paths.items():
                start = time.perf_counter()
                one(clip)
                seconds[name] += time.perf_counter() - start
        for name, (_, many) in paths.items():
            line = (
                f"  {name:26s} {audio / seconds[name]:6.2f} s audio/s  x{seconds['bare float32 upstream'] / seconds[name]:5.2f}"
                f" (x{seconds['full float32 (PyTorch)'] / seconds[name]:5.2f} the full float32 path)"
            )
            if many is not None:
                probabilities = np.asarray(many(agreement))
                same = float((probabilities.argmax(1) == reference.argmax(1)).mean())
                line += f"   labels {same:7.2%} same, max |p - p32| {np.abs(probabilities - reference).max():.1e}"
            print(line, flush=True)


def long_audio_memory(minutes: float, threads: int, workdir: Path) -> dict:
    """Peak RSS (VmHWM) of a child process running the windowed path over an ``minutes``-long WAV."""
    from s3prl_ser.inference.model_dir import write_model_dir

    model = recognizer("fbank")
    model.config = None
    # A model directory needs an exportable description; build it from a one-member spec by hand.
    description = {
        "class_names": model.class_names,
        "sample_rate": 16000,
        "min_samples": 400,
        "upstreams": [[{"entry": "fbank", "trained_as": "fbank", "converted": None, "model_config": None}]],
        "members": [
            {
                "upstream": 0,
                "featurizer": {"feature_selection": "hidden_states", "layer_selection": None, "normalize": False},
                "classifier": {
                    "input_sizes": [model.members[0].featurizer.output_dim],
                    "rates": [160],
                    "num_classes": 4,
                    "aggregator": "ecapa",
                    "ecapa": _ecapa(),
                    "fusion": None,
                    "projector_dim": None,
                },
                "source": {"benchmark": "random init"},
            }
        ],
    }
    model_dir = write_model_dir(workdir / "model", description, model.state_dict(), "# benchmark model\n")
    wav = workdir / "long.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(wav, "w", samplerate=16000, channels=1, subtype="PCM_16") as handle:
        for _ in range(int(minutes * 60)):  # one second at a time: the file is never in memory whole
            handle.write(rng.uniform(-0.3, 0.3, 16000).astype("float32"))
    result = subprocess.run(
        [sys.executable, "-c", _LONG_CHILD, str(model_dir), str(wav), str(threads)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    record = json.loads(result.stdout.strip().splitlines()[-1])
    record.update(minutes=minutes, file_mb=wav.stat().st_size / 2**20, float32_16k_mb=minutes * 60 * 16000 * 4 / 2**20)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--long-minutes", type=float, default=0.0, help="also measure the long-audio path (0: skip)")
    parser.add_argument("--skip-hubert", action="store_true")
    parser.add_argument("--skip-precision", action="store_true", help="skip the precision / int8 / onnxruntime paths")
    parser.add_argument("--precision-clips", type=int, default=8, help="clips of 2-8 s timed at batch 1, each path")
    parser.add_argument("--agreement-clips", type=int, default=200, help="1-s clips for label agreement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    clips = [
        torch.from_numpy(rng.uniform(-0.3, 0.3, int(s * 16000)).astype("float32"))
        for s in rng.uniform(2, 8, args.clips)
    ]
    audio = sum(len(c) for c in clips) / 16000
    print(f"{args.clips} clips, {audio:.1f} s of audio, {args.threads} thread(s), CPU; RTF = audio s / wall s")
    with tempfile.TemporaryDirectory(prefix="s3prl_ser_inference_bench_") as tmp:
        models = {"fbank+ECAPA": lambda: recognizer("fbank")}
        if not args.skip_hubert:
            models["HuBERT-Base+ECAPA"] = lambda: recognizer("hubert_local", str(_base_hubert(Path(tmp) / "base.pt")))
        for name, build in models.items():
            model = build()
            with torch.inference_mode():
                single = real_time_factor(model, clips, 1)
                batched = real_time_factor(model, clips, args.batch)
            print(f"{name:20s} batch 1: RTF {single:7.1f}   batch {args.batch}: RTF {batched:7.1f}", flush=True)
        if not args.skip_precision:
            base = Path(tmp) / "base.pt"
            if not base.exists():
                _base_hubert(base)
            precision_paths(base, clips[: args.precision_clips], agreement_clips(args.agreement_clips), Path(tmp))
        if args.long_minutes:
            record = long_audio_memory(args.long_minutes, args.threads, Path(tmp))
            print(
                f"long audio: {record['minutes']:g} min ({record['file_mb']:.0f} MB WAV; {record['float32_16k_mb']:.0f} MB "
                f"as float32), {record['windows']} windows in {record['seconds']:.0f} s: peak RSS "
                f"{record['peak_kb'] / 1024:.0f} MB, {record['rss_after_load_kb'] / 1024:.0f} MB after loading the model"
            )


if __name__ == "__main__":
    main()
