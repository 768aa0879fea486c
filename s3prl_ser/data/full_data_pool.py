"""All the data a final model learns from: the training pool of a deployment run (``test_fold: deploy``).

A cross-validation scores a *procedure*; the model to ship is that procedure applied to all
the data (``datarc.test_fold: deploy``, :data:`~s3prl_ser.data.folds.DEPLOY_FOLD`). Its pool:

* a cross-validated corpus (IEMOCAP's sessions, a manifest's or EmoBox's speaker folds): the
  union of every fold's train, dev and test lists, i.e. every utterance, each once;
* a corpus with an official test set (``official_test``: MSP-Podcast, ESD): the union of every
  fold's train and dev lists, minus every utterance any fold tests on. The official test set
  never enters.

The pool is one train list with no dev list, so :func:`~s3prl_ser.data.fold_data.load_fold_data`
carves the dev set that selects checkpoints out of it by the run's own rule (``datarc.split``:
``superb``, ``speaker``), exactly as it does for a fold: a corpus's given dev list joins the pool
instead of being used as is. There is no test set (an empty list), hence no held-out score.

The pool is ordered by utterance key, so the SUPERB permutation (and thus the dev set) does not
depend on the order the fold lists were written in; the split record says ``file_order: sorted``.
"""

from __future__ import annotations

import os
from pathlib import Path

from s3prl_ser.data.emotion_dataset import FoldLists, MetaData, available_folds, read_fold_lists, utterance_key
from s3prl_ser.data.folds import DEPLOY_FOLD
from s3prl_ser.data.manifest import LabelRules

__all__ = ["POOL_ORDER", "read_full_data_pool"]

POOL_ORDER = "sorted"  # the pool's file_order: by utterance key


def read_full_data_pool(
    meta_dir: str | os.PathLike,
    root: str | os.PathLike,
    *,
    allow_outside_root: bool = False,
    label_rules: LabelRules | None = None,
) -> FoldLists:
    """The deployment run's lists: ``train`` is the pool (module docstring), ``dev`` is None (the
    run's rule carves it), ``test`` is empty.

    Every fold is read with :func:`~s3prl_ser.data.emotion_dataset.read_fold_lists` (same checks,
    same label rules), so the pool is exactly the folds' utterances.

    Raises:
        FileNotFoundError: ``meta_dir`` defines no fold, or audio files are missing.
        ValueError: the folds disagree on the classes or on an utterance's label, or nothing is
            left to train on.
    """
    meta_dir = Path(meta_dir)
    folds = available_folds(meta_dir)
    lists = [
        read_fold_lists(meta_dir, fold, root, allow_outside_root=allow_outside_root, label_rules=label_rules)
        for fold in folds
    ]
    first = lists[0]
    tested: set[str] = set()
    if first.official_test is not None:
        tested = {utterance_key(item) for fold in lists for item in fold.test.items}
    pool: dict[str, dict] = {}
    for fold_lists in lists:
        if fold_lists.train.labels != first.train.labels:
            raise ValueError(
                f"{fold_lists.train.path} and {first.train.path} define different classes: one deployment "
                "model cannot be trained on both"
            )
        parts = [fold_lists.train, *([fold_lists.dev] if fold_lists.dev is not None else [])]
        if first.official_test is None:
            parts.append(fold_lists.test)  # cross-validation: the test folds are training data here
        for part in parts:
            for item in part.items:
                key = utterance_key(item)
                if key in tested:
                    continue  # listed for training in one fold, tested on in another: never trained on
                if key in pool and pool[key]["label"] != item["label"]:
                    raise ValueError(
                        f"{meta_dir}: utterance {key} is labelled {pool[key]['label']!r} in one fold and "
                        f"{item['label']!r} in {part.path}"
                    )
                pool.setdefault(key, item)
    if not pool:
        raise ValueError(f"{meta_dir}: no utterance is left to train a deployment model on")
    items = [pool[key] for key in sorted(pool)]
    scale = first.train.attribute_scale
    train = MetaData(Path(f"{meta_dir}#{DEPLOY_FOLD}/train"), dict(first.train.labels), items, POOL_ORDER, scale)
    test = MetaData(Path(f"{meta_dir}#{DEPLOY_FOLD}/test"), dict(first.train.labels), [], attribute_scale=scale)
    protocol = f"deployment: every fold's utterances ({first.protocol})"
    if first.official_test is not None:
        protocol = f"deployment: train and dev without the official test set {first.official_test}"
    return FoldLists(train, test, None, first.corpus, protocol, first.official_test, first.num_folds, first.kind)
