"""Benchmark: peak memory of training with one very long clip, with and without ``max_seconds``.

A copy of the built-in corpus gets one 10-minute clip (by default) in fold1's training split;
stage 2 (fbank + emotion_ecapa, ``config_builtin.yaml``) then trains one epoch, so the clip is
in exactly one batch, once with ``datarc.max_seconds: null`` (whole clips) and once with the
default cap. A third run scores a test clip at the evaluation limit (``max_eval_seconds``).
Each run is its own process; the figure is that process's peak resident memory (ru_maxrss,
KiB on Linux), so it includes the one test evaluation with the long test clip.

    python benchmarks/memory_benchmark.py [--minutes 10] [--cap 40]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

from s3prl_ser.data.corpora.iemocap import prepare
from s3prl_ser.data.fold_data import load_fold_data
from s3prl_ser.toy.builtin_corpus import generate_corpus
from s3prl_ser.upstreams.registry import DOWNSTREAM_DIR

_CHILD = """
import resource, sys
from s3prl_ser.cli.run_downstream import main
main(sys.argv[1:])
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _long_clip(seconds: float, source: Path) -> np.ndarray:
    """Speech of the corpus repeated to ``seconds`` (so fbank sees speech-like frames)."""
    speech, rate = sf.read(source, dtype="float32")
    return np.resize(speech, int(seconds * rate))


def _peak_mb(argv: list[str]) -> float:
    result = subprocess.run([sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True)
    peak = [line for line in result.stdout.splitlines() if line.startswith("PEAK_KB")]
    if result.returncode != 0 or not peak:
        raise RuntimeError(f"run failed ({result.returncode}): {result.stderr[-2000:]}")
    return int(peak[0].split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the long training clip")
    parser.add_argument("--cap", type=float, default=40.0, help="max_seconds of the capped run")
    parser.add_argument("--eval-seconds", type=float, default=120.0, help="length of the long test clip")
    args = parser.parse_args()

    corpus = Path(tempfile.mkdtemp(prefix="s3prl_ser_mem_")) / "corpus"
    generate_corpus(corpus)
    meta = corpus.parent / "meta"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(corpus, meta)
    datarc = {"root": str(corpus), "meta_data": str(meta)}
    data = load_fold_data(datarc, "fold1", read_audio=False)
    train_clip = corpus / data.train.items[0]["path"]
    test_clip = corpus / data.test.items[0]["path"]
    sf.write(train_clip, _long_clip(args.minutes * 60, train_clip), 16000)
    sf.write(test_clip, _long_clip(args.eval_seconds, test_clip), 16000)
    steps = len(data.train) // 8  # one epoch of batch 8: the long clip is in one batch

    def run(name: str, extra: str) -> float:
        overrides = ",,".join(
            [
                f"config.downstream_expert.datarc.root={corpus}",
                f"config.downstream_expert.datarc.meta_data={meta}",
                f"config.runner.total_steps={steps}",
                f"config.runner.eval_step={steps}",
                f"config.runner.save_step={steps}",
                "config.downstream_expert.checkpoint_averaging.best_k=1",
                extra,
            ]
        )
        argv = ["-m", "train", "-u", "fbank", "-d", "emotion_ecapa", "-p", str(corpus.parent / name)]
        argv += ["-c", str(DOWNSTREAM_DIR / "emotion_ecapa" / "config_builtin.yaml"), "--device", "cpu"]
        return _peak_mb(argv + ["-o", overrides])

    figures = {
        f"training, one {args.minutes:g}-min clip, max_seconds null": run(
            "whole", "config.downstream_expert.datarc.max_seconds=null"
        ),
        f"training, one {args.minutes:g}-min clip, max_seconds {args.cap:g}": run(
            "capped", f"config.downstream_expert.datarc.max_seconds={args.cap}"
        ),
    }
    print(f"fbank + emotion_ecapa (config_builtin.yaml), fold1, {steps} steps of batch 8, one test of fold1")
    print(f"(the test split holds one {args.eval_seconds:g}-s clip; max_eval_seconds allows it)")
    for name, megabytes in figures.items():
        print(f"{name:55} peak RSS {megabytes:8.0f} MB")
    print(f"ratio whole / capped: {figures[list(figures)[0]] / figures[list(figures)[1]]:.2f}")
    print(json.dumps({"peak_mb": figures}))


if __name__ == "__main__":
    main()
