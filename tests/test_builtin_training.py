"""fbank + emotion_ecapa learns the built-in corpus: UA clearly above chance (0.25)."""

import json
import warnings

import pytest

from helpers import train_args
from s3prl_ser.cli.run_downstream import main as run_downstream
from s3prl_ser.data.corpora.iemocap import prepare
from s3prl_ser.toy.builtin_corpus import generate_corpus
from s3prl_ser.upstreams.registry import DOWNSTREAM_DIR

# Measured: 200 steps of config_builtin.yaml give test UA 0.72 (fold2) and 0.66 (fold3, the
# hardest fold of the full 600-step run); 0.45 leaves a wide margin over chance and noise.
UA_THRESHOLD = 0.45


@pytest.mark.slow
def test_short_fbank_ecapa_training_beats_chance(tmp_path):
    corpus = generate_corpus(tmp_path / "corpus")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(corpus, tmp_path / "meta")
    expdir = tmp_path / "exp"
    run_downstream(
        train_args(
            expdir,
            f"config.downstream_expert.datarc.root={corpus},,config.downstream_expert.datarc.meta_data={tmp_path / 'meta'},,"
            "config.runner.total_steps=200,,config.downstream_expert.datarc.test_fold=fold3,,"
            "config.downstream_expert.checkpoint_averaging.best_k=3",
            extra=("-c", str(DOWNSTREAM_DIR / "emotion_ecapa" / "config_builtin.yaml")),
        )
    )
    metrics = json.loads((expdir / "test_fold3_metrics.json").read_text())
    assert metrics["num_utterances"] == 50
    assert metrics["ua"] > UA_THRESHOLD, metrics
