"""Benchmark: emotion_ecapa (mean, ecapa) against s3prl's stock emotion task, side by side.

Same corpus (the built-in one, unless --root/--meta point at IEMOCAP), same upstream, same
fold, same number of steps and batch size. Prints test UA/WA of each task's reported model
and the seconds per training step (wall time of the whole run, dev evaluations included,
divided by the steps).

    python benchmarks/downstream_benchmark.py [--steps 300] [--upstream fbank] [--fold fold1]

Stock `emotion` reports its last-step model (it keeps dev-best.ckpt but scores test during
training); emotion_ecapa reports the average of its 5 best dev checkpoints.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

from s3prl_ser.data.corpora.iemocap import prepare
from s3prl_ser.experiments.launch import RunRequest, launch
from s3prl_ser.toy.builtin_corpus import default_corpus_dir, generate_corpus
from s3prl_ser.training.metrics import classification_report
from s3prl_ser.upstreams.registry import DOWNSTREAM_DIR, register

BUILTIN = DOWNSTREAM_DIR / "emotion_ecapa" / "config_builtin.yaml"


def _test_report(expdir: Path, fold: str):
    rows = {}
    for kind in ("truth", "predict"):
        lines = (expdir / f"test_{fold}_{kind}.txt").read_text().split("\n")
        rows[kind] = dict(line.split() for line in lines if line)
    names = sorted(rows["truth"])
    return classification_report(
        [rows["truth"][n] for n in names], [rows["predict"][n] for n in names], ["neu", "hap", "ang", "sad"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-step", type=int, default=50)
    parser.add_argument("--upstream", default="fbank")
    parser.add_argument("-k", "--upstream-ckpt", default=None)
    parser.add_argument("--fold", default="fold1")
    parser.add_argument("--root", type=Path, help="corpus root (default: built-in corpus)")
    parser.add_argument("--meta", type=Path, help="meta data dir (default: prepared from --root)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    register()
    root = args.root or generate_corpus(default_corpus_dir())
    work = Path(tempfile.mkdtemp(prefix="s3prl_ser_bench_"))
    meta = args.meta
    if meta is None:
        meta = work / "meta"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare(root, meta)
    shared = (
        ("config.downstream_expert.datarc.root", str(root)),
        ("config.downstream_expert.datarc.meta_data", str(meta)),
        ("config.downstream_expert.datarc.test_fold", args.fold),
        ("config.runner.total_steps", args.steps),
        ("config.runner.eval_step", args.eval_step),
        ("config.runner.save_step", args.eval_step),
        ("config.runner.log_step", args.eval_step),
        ("config.runner.gradient_accumulate_steps", 1),
        ("config.downstream_expert.datarc.train_batch_size", 8),
        ("config.downstream_expert.datarc.num_workers", 0),
        ("config.optimizer.lr", 1.0e-3),
    )
    tasks = {
        "emotion (s3prl stock, mean)": ("emotion", None, ()),
        "emotion_ecapa mean": ("emotion_ecapa", BUILTIN, (("config.downstream_expert.modelrc.aggregator", "mean"),)),
        "emotion_ecapa ecapa": ("emotion_ecapa", BUILTIN, ()),
    }
    rows = []
    for label, (task, config, extra) in tasks.items():
        expdir = work / task / label.split()[-1]
        request = RunRequest(
            upstream=args.upstream,
            upstream_ckpt=args.upstream_ckpt,
            downstream=task,
            config=str(config) if config else None,
            expdir=str(expdir),
            device=args.device,
            overrides=(*shared, *extra),
        )
        start = time.perf_counter()
        launch(request)
        seconds = time.perf_counter() - start
        report = _test_report(expdir, args.fold)
        rows.append((label, report.ua * 100, report.wa * 100, seconds / args.steps))

    print(f"\nupstream {args.upstream}, {args.fold}, {args.steps} steps of batch 8, corpus {root}")
    print(f"{'task':<30}{'test UA %':>10}{'test WA %':>10}{'s/step':>9}")
    for label, ua, wa, sps in rows:
        print(f"{label:<30}{ua:>10.2f}{wa:>10.2f}{sps:>9.3f}")
    (work / "benchmark.json").write_text(json.dumps(rows))
    print(f"(runs in {work})")


if __name__ == "__main__":
    main()
