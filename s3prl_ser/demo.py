"""The main job on the built-in data: corpus -> meta data -> 5-fold emotion_ecapa -> results.

    python -m s3prl_ser.demo [--out result/demo]

1. generates the built-in synthetic corpus in IEMOCAP's raw layout (cached, deterministic);
2. prepares its leave-one-session-out meta data exactly as for real IEMOCAP;
3. runs 5-fold cross-validation of ``fbank`` + ``emotion_ecapa`` (ECAPA-TDNN, 5-best
   averaging) with ``downstream/emotion_ecapa/config_builtin.yaml``;
4. prints the results table and where it is.

Re-running resumes: finished folds are reused, a killed fold continues from its checkpoint.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from s3prl_ser.builtin_corpus import default_corpus_dir, generate_corpus
from s3prl_ser.cross_validate import cross_validate
from s3prl_ser.prepare_iemocap import prepare
from s3prl_ser.registry import DOWNSTREAM_DIR

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("result/demo"), help="output directory")
    parser.add_argument("--corpus", type=Path, default=None, help="built-in corpus location (default: cache)")
    parser.add_argument("--folds", default="fold1,fold2,fold3,fold4,fold5")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    corpus = generate_corpus(args.corpus or default_corpus_dir())
    print(f"[demo] - built-in corpus: {corpus}")
    meta = args.out / "meta_data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the built-in corpus has no missing audio
        prepare(corpus, meta)
    expdir = args.out / "fbank_ecapa"
    summary = cross_validate(
        expdir,
        ["-u", "fbank", "-d", "emotion_ecapa", "-c", str(DOWNSTREAM_DIR / "emotion_ecapa" / "config_builtin.yaml"),
         "--device", args.device],
        folds=args.folds.split(","),
        overrides=f"config.downstream_expert.datarc.root={corpus.resolve()},,"
                  f"config.downstream_expert.datarc.meta_data={meta.resolve()}",
        title="fbank + ECAPA-TDNN (5-best averaged), built-in corpus",
    )
    print(f"[demo] - WA {summary['wa']['mean']:.2f} ± {summary['wa']['std']:.2f}, "
          f"UA {summary['ua']['mean']:.2f} ± {summary['ua']['std']:.2f} over {len(summary['folds'])} folds")
    print(f"[demo] - results: {(expdir / 'results.md').resolve()}")


if __name__ == "__main__":
    main()
