import json
import warnings

import pytest
import torch

from s3prl_ser.data.corpora.iemocap import prepare
from s3prl_ser.data.folds import (
    check_fold,
    fold_session,
    resolve_fold,
    speaker_disjoint_split,
    superb_train_dev_split,
    utterance_speaker,
)


def _s3prl_emotion_expert(root, meta_dir, fold, expdir):
    """Stock s3prl's emotion expert, configured as its own config.yaml does."""
    from s3prl.downstream.emotion.expert import DownstreamExpert

    downstream_expert = {
        "datarc": {
            "root": str(root),
            "meta_data": str(meta_dir),
            "test_fold": fold,
            "pre_load": False,
            "train_batch_size": 4,
            "eval_batch_size": 4,
            "num_workers": 0,
            "valid_ratio": 0.2,
        },
        "modelrc": {"projector_dim": 8, "select": "UtteranceLevel", "UtteranceLevel": {"pooling": "MeanPooling"}},
    }
    return DownstreamExpert(upstream_dim=8, downstream_expert=downstream_expert, expdir=str(expdir))


@pytest.mark.parametrize("fold", ["fold1", "fold3", "fold5"])
def test_split_identical_to_s3prl_expert_on_prepared_corpus(mini_corpus, tmp_path, fold):
    meta_dir = tmp_path / "meta"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(mini_corpus, meta_dir)
    expert = _s3prl_emotion_expert(mini_corpus, meta_dir, fold, tmp_path)
    n = len(json.loads((meta_dir / fold_session(fold) / "train_meta_data.json").read_text())["meta_data"])
    train, dev = superb_train_dev_split(n)
    assert train == list(expert.train_dataset.indices)
    assert dev == list(expert.dev_dataset.indices)


@pytest.mark.parametrize("n", [4446, 4290, 4500])  # IEMOCAP's real fold sizes: 5531 - 1085, ...
def test_split_identical_to_s3prl_expert_at_iemocap_size(mini_corpus, tmp_path, n):
    wav = "Session2/sentences/wav/Ses02F_impro02/Ses02F_impro02_F000.wav"
    meta = {
        "labels": {"neu": 0, "hap": 1, "ang": 2, "sad": 3},
        "meta_data": [{"path": wav, "label": "neu", "speaker": "Ses02F"}] * n,
    }
    (tmp_path / "meta" / "Session1").mkdir(parents=True)
    for split in ("train", "test"):
        (tmp_path / "meta" / "Session1" / f"{split}_meta_data.json").write_text(json.dumps(meta))
    expert = _s3prl_emotion_expert(mini_corpus, tmp_path / "meta", "fold1", tmp_path)
    train, dev = superb_train_dev_split(n)
    assert len(train) == int(0.8 * n) and len(train) + len(dev) == n
    assert train == list(expert.train_dataset.indices)
    assert dev == list(expert.dev_dataset.indices)


def test_split_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    superb_train_dev_split(100)
    assert torch.equal(torch.rand(3), expected)


def test_split_rejects_bad_ratio():
    with pytest.raises(ValueError, match="valid_ratio"):
        superb_train_dev_split(10, valid_ratio=1.2)
    with pytest.raises(ValueError, match="empty split"):
        superb_train_dev_split(1, valid_ratio=0.2)


def test_fold_names():
    assert fold_session("fold4") == "Session4"
    with pytest.raises(ValueError, match="invalid fold 'Fold1'"):
        check_fold("Fold1")


def test_utterance_speaker_is_not_the_dialog_owner():
    assert utterance_speaker("Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M000.wav") == "Ses01M"
    assert utterance_speaker("Ses03M_script02_1_F012") == "Ses03F"
    with pytest.raises(ValueError, match="not an IEMOCAP utterance name"):
        utterance_speaker("foo.wav")


def test_speaker_disjoint_split_holds_out_one_session():
    paths = [f"Ses0{s}F_impro01_{g}00{i}" for s in (2, 3, 4, 5) for g in "FM" for i in range(3)]
    train, dev = speaker_disjoint_split(paths, "fold1")
    dev_speakers = {utterance_speaker(paths[i]) for i in dev}
    train_speakers = {utterance_speaker(paths[i]) for i in train}
    assert dev_speakers == {"Ses02F", "Ses02M"}
    assert not dev_speakers & train_speakers
    assert sorted(train + dev) == list(range(len(paths)))
    _, dev5 = speaker_disjoint_split([p.replace("Ses05", "Ses01") for p in paths], "fold5")
    assert {utterance_speaker(paths[i].replace("Ses05", "Ses01")) for i in dev5} == {"Ses01F", "Ses01M"}
    with pytest.raises(ValueError, match="contains Session2"):
        speaker_disjoint_split(paths, "fold2")


def test_resolve_fold_prefers_what_is_given_and_refuses_a_conflict():
    assert resolve_fold(None, None) == "fold1"
    assert resolve_fold("fold2", None) == "fold2" and resolve_fold(None, "fold3") == "fold3"
    assert resolve_fold("fold4", "fold4") == "fold4"
    with pytest.raises(ValueError, match=r"-v fold3 conflicts with config.downstream_expert.datarc.test_fold=fold1"):
        resolve_fold("fold1", "fold3")


def test_a_run_reads_its_fold_once(mini_corpus, mini_meta, tmp_path, monkeypatch):
    """The runner builds the fold's data once, for the fine-tuned-upstream guard and for the
    expert, which takes it as it is: the fold's meta data are read once per run, not twice."""
    from helpers import overrides, train_args
    from s3prl_ser.cli.run_downstream import main as run_downstream
    from s3prl_ser.data import fold_data

    read, reads = fold_data.read_fold_lists, []

    def counted(meta_dir, fold, *args, **kwargs):
        reads.append(fold)
        return read(meta_dir, fold, *args, **kwargs)

    monkeypatch.setattr(fold_data, "read_fold_lists", counted)
    expdir = tmp_path / "exp"
    run_downstream(train_args(expdir, overrides(mini_corpus, mini_meta, steps=2, every=2, k=1), extra=("-v", "fold2")))
    assert reads == ["fold2"]
    assert json.loads((expdir / "test_fold2_metrics.json").read_text())["num_utterances"] == 5  # Session2
