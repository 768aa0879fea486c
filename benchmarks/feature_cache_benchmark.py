"""Benchmark: the feature cache against live features, with a HuBERT-Base-sized upstream.

On the built-in corpus (fold1), with a random-init HuBERT of Base's real size (the real
feature encoder, 12 transformer layers x 768, written in s3prl's converted format), it trains
side by side, each configuration in its own process (for its peak RSS):

* s3prl's stock ``emotion`` task (mean pooling; it has no cache);
* ``emotion_ecapa`` with the mean and the ECAPA aggregator, each live (``--no_feature_cache``)
  and cached (a fresh cache, so the first epoch includes extracting the training split);

and prints seconds per epoch (the first one -- for a cached run including the extraction --
and the mean of the later ones), peak RSS, and the ratios. Epochs are timed from the start of
training to each epoch's first batch; the last one ends where the final dev evaluation
begins (``eval_step`` = the whole run, so no evaluation falls inside an epoch).

    python benchmarks/feature_cache_benchmark.py [--epochs 3] [--threads 2] [--layers 12 --dim 768]
        [--only stock,mean-live,...]

The defaults are the issue's configuration (takes about 15 min on 2 cores); ``--layers 2
--dim 96 --epochs 2`` or ``--only`` shrink it for a check. Not a test: timings need an idle
machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from s3prl_ser.experiments.launch import RunRequest, launch

DOWNSTREAM_DIR = Path(__file__).resolve().parents[1] / "downstream"
BUILTIN = DOWNSTREAM_DIR / "emotion_ecapa" / "config_builtin.yaml"
# HuBERT Base's feature encoder and transformer sizes (fairseq's hubert_base_ls960).
BASE_ENCODER = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"
CONFIGS = ("stock", "mean-live", "mean-cached", "ecapa-live", "ecapa-cached")


def _write_upstream(path: Path, layers: int, dim: int, encoder: str) -> None:
    from s3prl_ser.toy.tiny_upstream import write_tiny_upstream

    base = layers == 12 and dim == 768
    real_encoder = {"conv_feature_layers": BASE_ENCODER} if encoder == "base" else {}
    write_tiny_upstream(
        "hubert",
        path,
        layers=layers,
        dim=dim,
        heads=12 if dim % 12 == 0 else 4,
        model_overrides={
            **real_encoder,
            "encoder_ffn_embed_dim": 4 * dim,
            "conv_pos": 128 if base else 16,
            "conv_pos_groups": 16 if base else 4,
            "final_dim": 256,
        },
    )


def _request(name: str, work: Path, root: Path, meta: Path, upstream: Path, steps: int) -> RunRequest:
    """The run of one configuration."""
    shared = (
        ("config.downstream_expert.datarc.root", str(root)),
        ("config.downstream_expert.datarc.meta_data", str(meta)),
        ("config.downstream_expert.datarc.test_fold", "fold1"),
        ("config.runner.total_steps", steps),
        ("config.runner.eval_step", steps),
        ("config.runner.save_step", steps),
        ("config.runner.log_step", steps),
        ("config.runner.gradient_accumulate_steps", 1),
        ("config.downstream_expert.datarc.train_batch_size", 8),
        ("config.downstream_expert.datarc.eval_batch_size", 8),
        ("config.downstream_expert.datarc.num_workers", 0),
        ("config.optimizer.lr", 1.0e-3),
    )
    base = RunRequest(
        upstream="hubert_local", upstream_ckpt=str(upstream), expdir=str(work / name), device="cpu", overrides=shared
    )
    if name == "stock":
        return dataclasses.replace(base, downstream="emotion")
    aggregator, mode = name.split("-")
    request = dataclasses.replace(base, downstream="emotion_ecapa", config=str(BUILTIN)).with_overrides(
        ("config.downstream_expert.modelrc.aggregator", aggregator)
    )
    if mode == "live":
        return dataclasses.replace(request, no_feature_cache=True)
    # fresh: extraction is timed
    return dataclasses.replace(request, feature_cache_dir=str(work / f"cache-{aggregator}"))


def _to_json(request: RunRequest) -> str:
    return json.dumps(dataclasses.asdict(request))


def _from_json(text: str) -> RunRequest:
    fields = json.loads(text)
    return RunRequest(**{**fields, "overrides": tuple(tuple(entry) for entry in fields["overrides"])})


def _child(request: RunRequest, threads: int, out: Path) -> None:
    """Train one configuration in this process; write its epoch boundaries and peak RSS."""
    import torch

    from s3prl_ser.training.runner import SERRunner
    from s3prl_ser.upstreams.registry import register

    torch.set_num_threads(threads)
    register()
    marks: list[float] = []
    train, batches, evaluate = SERRunner.train, SERRunner._train_batches, SERRunner.evaluate

    def timed_train(self: SERRunner) -> None:
        marks.append(time.perf_counter())
        train(self)

    def timed_batches(self: SERRunner, split: str, epoch: int, start: int):
        if epoch > 0:
            marks.append(time.perf_counter())  # the end of the previous epoch
        return batches(self, split, epoch, start)

    def timed_evaluate(self: SERRunner, *args, **kwargs):
        if len(marks) and not hasattr(timed_evaluate, "done"):
            timed_evaluate.done = True
            marks.append(time.perf_counter())  # the last epoch ends where the final dev evaluation begins
        return evaluate(self, *args, **kwargs)

    SERRunner.train, SERRunner._train_batches, SERRunner.evaluate = timed_train, timed_batches, timed_evaluate
    launch(request)
    epochs = [b - a for a, b in zip(marks, marks[1:])]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    out.write_text(json.dumps({"epochs": epochs, "peak_rss": rss}))


def _float16_check(work: Path, root: Path, meta: Path, upstream: Path, steps: int, seed: int) -> None:
    """Train ECAPA from a float32 and from a float16 cache (same seed); print both test
    results and how far float16 features move the float32 model's test logits."""
    import torch

    from s3prl_ser.upstreams.registry import register

    register()
    runners = {}
    for dtype in ("float32", "float16"):
        request = _request("ecapa-cached", work / dtype, root, meta, upstream, steps).with_overrides(
            ("config.feature_cache.dtype", dtype), ("config.runner.eval_step", steps // 6)
        )
        runners[dtype] = launch(dataclasses.replace(request, seed=seed))
    reference = runners["float32"]  # its reported (averaged) model is loaded
    expert = reference.downstream.model.eval()
    reference.featurizer.model.eval()
    logits = {}
    for dtype, runner in runners.items():
        rows = []
        with torch.no_grad():
            for wavs, _, names in expert.get_dataloader("test"):
                wavs = [torch.as_tensor(w) for w in wavs]
                features = reference.featurizer.model(wavs, runner.upstream.model(wavs))
                rows.append(expert._logits(features, list(names)))
        logits[dtype] = torch.cat(rows)
    difference = (logits["float16"] - logits["float32"]).abs()
    agree = (logits["float16"].argmax(-1) == logits["float32"].argmax(-1)).float().mean()
    print(f"\nfloat16 against float32 cache (built-in corpus fold1, ECAPA, seed {seed}, {steps} steps)")
    for dtype in runners:
        metrics = json.loads((work / dtype / "ecapa-cached" / "test_fold1_metrics.json").read_text())
        print(f"  {dtype}: test UA {100 * metrics['ua']:.2f} WA {100 * metrics['wa']:.2f}")
    print(
        f"  float32 model's test logits fed float16 features: max |difference| {difference.max():.2e} "
        f"(logits up to {logits['float32'].abs().max():.1f}), same predicted class for {100 * agree:.1f}%"
    )


def _batches_per_epoch(meta: Path, root: Path) -> int:
    from s3prl_ser.data.fold_data import load_fold_data

    data = load_fold_data({"root": str(root), "meta_data": str(meta)}, "fold1", read_audio=False)
    return len(data.train) // 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per configuration (the first one + later ones)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads per run")
    parser.add_argument("--layers", type=int, default=12, help="transformer layers (HuBERT Base: 12)")
    parser.add_argument("--dim", type=int, default=768, help="transformer width (HuBERT Base: 768)")
    parser.add_argument(
        "--encoder",
        choices=["base", "tiny"],
        default="base",
        help="the CNN feature encoder: HuBERT Base's, or 32 channels",
    )
    parser.add_argument("--only", default=",".join(CONFIGS), help=f"configurations to run, of {', '.join(CONFIGS)}")
    parser.add_argument("--work", type=Path, help="working directory (default: a new temporary one)")
    parser.add_argument(
        "--float16-check",
        type=int,
        metavar="STEPS",
        help="instead: train ECAPA for STEPS from a float32 and a float16 cache and compare (logits, test UA)",
    )
    parser.add_argument("--seed", type=int, default=1337, help="training seed of --float16-check")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        request_json, threads, out = args.child
        _child(_from_json(request_json), int(threads), Path(out))
        return
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch and at least one later one)")
    configs = [c for c in args.only.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"--only: unknown configurations {sorted(unknown)}; choose from {', '.join(CONFIGS)}")

    from s3prl_ser.data.corpora.iemocap import prepare
    from s3prl_ser.toy.builtin_corpus import default_corpus_dir, generate_corpus

    work = args.work or Path(tempfile.mkdtemp(prefix="s3prl_ser_cache_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    root = generate_corpus(default_corpus_dir()).resolve()
    meta = work / "meta"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(root, meta)
    upstream = work / f"hubert_{args.encoder}_{args.layers}x{args.dim}.pt"
    if not upstream.is_file():
        _write_upstream(upstream, args.layers, args.dim, args.encoder)
    if args.float16_check:
        _float16_check(work, root, meta, upstream, args.float16_check, args.seed)
        return
    steps = args.epochs * _batches_per_epoch(meta, root)
    results = {}
    for name in configs:
        out = work / f"{name}.json"
        request = _request(name, work, root, meta, upstream, steps)
        # The child is this script: the project must import from it as from here.
        path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=path)
        print(f"[benchmark] - {name}: {args.epochs} epochs ({steps} steps of 8)", flush=True)
        subprocess.run(
            [sys.executable, __file__, "--child", _to_json(request), str(args.threads), str(out)],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        results[name] = json.loads(out.read_text())
    (work / "benchmark.json").write_text(json.dumps(results, indent=1))
    _print(results, args, work)


def _print(results: dict, args: argparse.Namespace, work: Path) -> None:
    print(
        f"\nbuilt-in corpus, fold1, random-init HuBERT {args.layers} layers x {args.dim} ({args.encoder} feature encoder), "
        f"batch 8, {args.epochs} epochs per run, {args.threads} thread(s); cache float16"
    )
    header = f"{'configuration':<34}{'1st epoch s':>12}{'later s':>10}{'peak RSS GB':>13}"
    print(header)

    def row(label: str, name: str) -> None:
        if name in results:
            r = results[name]
            later = sum(r["epochs"][1:]) / len(r["epochs"][1:])
            print(f"{label:<34}{r['epochs'][0]:>12.1f}{later:>10.2f}{r['peak_rss'] / 1e9:>13.2f}")

    row("emotion (s3prl stock, mean)", "stock")
    for aggregator in ("mean", "ecapa"):
        row(f"emotion_ecapa {aggregator}, live", f"{aggregator}-live")
        row(f"emotion_ecapa {aggregator}, cached", f"{aggregator}-cached")
    print("\nratios")
    for aggregator, target in (("mean", 20), ("ecapa", 5)):
        live, cached = results.get(f"{aggregator}-live"), results.get(f"{aggregator}-cached")
        if live and cached:
            live_later = sum(live["epochs"][1:]) / len(live["epochs"][1:])
            cached_later = sum(cached["epochs"][1:]) / len(cached["epochs"][1:])
            live_mean = sum(live["epochs"]) / len(live["epochs"])
            print(
                f"  {aggregator}: later epochs live/cached {live_later / cached_later:.1f}x (target >= {target}x); "
                f"first cached epoch / mean live epoch {cached['epochs'][0] / live_mean:.2f} (target <= 1.3)"
            )
        stock = results.get("stock")
        if stock and cached:
            print(f"  {aggregator}: peak RSS cached / stock {cached['peak_rss'] / stock['peak_rss']:.2f} (target <= 1)")
    print(f"(runs in {work})")


if __name__ == "__main__":
    main()
