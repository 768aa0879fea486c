"""The fold protocol on real stage-1 files: recorded in every checkpoint, refused by stage 2
for another fold, corpus or split, and meta data that say their file order."""

import json
import shutil
import warnings

import pytest
import torch

from helpers import finetune_args, finetune_overrides, overrides, train_args
from s3prl_ser.cli.run_downstream import main as run_downstream
from s3prl_ser.data.corpora.iemocap import prepare
from s3prl_ser.data.fold_data import load_fold_data
from s3prl_ser.data.protocol import PROTOCOL_KEY, ProtocolMismatchError
from s3prl_ser.fileio import safe_torch_load
from s3prl_ser.upstreams.multi_upstream import build_upstreams
from upstream_ft.__main__ import main as upstream_ft

pytestmark = pytest.mark.usefixtures("one_thread")


def stage1_opts(corpus, meta, extra=""):
    return finetune_overrides(
        corpus, meta, extra=",,".join(filter(None, ["config.checkpoint_averaging.export_best=true", extra]))
    )


def datarc(corpus, meta, **extra):
    return {"root": str(corpus), "meta_data": str(meta), **extra}


@pytest.fixture(scope="module")
def stage1(tiny_upstreams, mini_corpus, mini_meta, tmp_path_factory):
    """Tiny HuBERT fine-tuned on fold1 (superb split), averaged export plus the single best."""
    ft_dir = tmp_path_factory.mktemp("protocol") / "ft"
    upstream_ft(
        finetune_args("hubert_local", tiny_upstreams["hubert"], "fold1", ft_dir, stage1_opts(mini_corpus, mini_meta))
    )
    return ft_dir


def test_every_stage1_checkpoint_records_the_protocol(stage1, mini_corpus, mini_meta):
    expected = load_fold_data(datarc(mini_corpus, mini_meta), "fold1", read_audio=False).protocol.to_dict()
    assert expected["split"] == {"rule": "superb", "valid_ratio": 0.2, "seed": 0, "file_order": "sorted"}
    fold_dir = stage1 / "fold1"
    files = sorted(fold_dir.glob("dev-top-step*.ckpt")) + [
        fold_dir / "upstream.ckpt",
        stage1 / "best" / "fold1" / "upstream.ckpt",
    ]
    assert len(files) == 4
    for path in files:
        assert safe_torch_load(path)[PROTOCOL_KEY] == expected, path
    (states,) = fold_dir.glob("states-*.ckpt")
    assert safe_torch_load(states)["Identity"]["protocol"] == expected
    assert json.loads((fold_dir / "upstream.json").read_text())["protocol"] == expected


def test_one_run_gives_both_exports(stage1):
    """export_best: the best export is the run's top dev checkpoint, the main one the average of the k best."""
    fold_dir = stage1 / "fold1"
    kept = json.loads((fold_dir / "dev-top.json").read_text())
    top = safe_torch_load(fold_dir / kept[0]["name"])
    best = safe_torch_load(stage1 / "best" / "fold1" / "upstream.ckpt")
    averaged = safe_torch_load(fold_dir / "upstream.ckpt")
    for section in ("model_weight", "ft_head"):
        assert all(torch.equal(best[section][k], top[section][k]) for k in top[section])
    records = [json.loads((d / "upstream.json").read_text()) for d in (fold_dir, stage1 / "best" / "fold1")]
    assert [r["averaged"] for r in records] == [True, False]
    assert [c["step"] for c in records[1]["checkpoints"]] == [kept[0]["step"]]
    assert [c["step"] for c in records[0]["checkpoints"]] == [e["step"] for e in kept]
    key = "encoder.layers.0.fc1.weight"
    assert not torch.equal(averaged["model_weight"][key], best["model_weight"][key])


def test_stage2_refuses_a_dev_top_file_or_a_copied_export_for_another_fold(stage1, mini_corpus, mini_meta, tmp_path):
    dev_top = sorted((stage1 / "fold1").glob("dev-top-step*.ckpt"))[0]  # never exported, no upstream.json
    copied = tmp_path / "elsewhere" / "model.ckpt"
    copied.parent.mkdir()
    shutil.copy(stage1 / "fold1" / "upstream.ckpt", copied)  # without its upstream.json
    for ckpt in (dev_top, copied):
        expdir = tmp_path / f"exp_{ckpt.stem}"
        opts = overrides(mini_corpus, mini_meta, steps=2, every=2)
        with pytest.raises(SystemExit, match=r"fine-tuned for fold1.*requested for fold2"):
            run_downstream(train_args(expdir, opts, upstream="hubert_local", ckpt=ckpt, extra=("-v", "fold2")))
        assert not list(expdir.glob("*.ckpt"))  # refused before training


def test_stage2_refuses_another_split_or_file_order(stage1, mini_corpus, mini_meta, tmp_path):
    export = str(stage1 / "fold1" / "upstream.ckpt")
    same = load_fold_data(datarc(mini_corpus, mini_meta), "fold1", read_audio=False).protocol
    assert build_upstreams("hubert_local", export, fold=same) is not None
    speaker = load_fold_data(datarc(mini_corpus, mini_meta, split="speaker"), "fold1", read_audio=False).protocol
    with pytest.raises(ProtocolMismatchError, match="split rule: 'superb' vs 'speaker'"):
        build_upstreams("hubert_ft_avg", str(stage1), fold=speaker)
    ratio = load_fold_data(datarc(mini_corpus, mini_meta, valid_ratio=0.3), "fold1", read_audio=False).protocol
    with pytest.raises(ProtocolMismatchError, match="split valid_ratio: 0.2 vs 0.3"):
        build_upstreams("hubert_local", export, fold=ratio)
    # The same meta data in another file order: same corpus, another SUPERB dev set.
    reordered = tmp_path / "meta"
    shutil.copytree(mini_meta, reordered)
    train_json = reordered / "Session1" / "train_meta_data.json"
    data = json.loads(train_json.read_text())
    data["meta_data"].reverse()
    data["file_order"] = "listdir"
    train_json.write_text(json.dumps(data))
    other = load_fold_data(datarc(mini_corpus, reordered), "fold1", read_audio=False).protocol
    assert other.corpus == same.corpus and other.dev != same.dev
    with pytest.raises(ProtocolMismatchError, match="split file_order: 'sorted' vs 'listdir'"):
        build_upstreams("hubert_local", export, fold=other)
    # Through the command line, with the reordered meta data.
    expdir = tmp_path / "exp"
    opts = overrides(mini_corpus, reordered, steps=2, every=2)
    with pytest.raises(SystemExit, match="fine-tuned for fold1 on other data.*file_order"):
        run_downstream(train_args(expdir, opts, upstream="hubert_ft_avg", ckpt=stage1, extra=("-v", "fold1")))
    assert not list(expdir.glob("*.ckpt"))


def test_stage1_refuses_to_start_from_another_folds_export(stage1, mini_corpus, mini_meta, tmp_path):
    with pytest.raises(SystemExit, match=r"fine-tuned for fold1.*requested for fold2"):
        upstream_ft(
            finetune_args(
                "hubert_local",
                stage1 / "fold1" / "upstream.ckpt",
                "fold2",
                tmp_path / "ft",
                stage1_opts(mini_corpus, mini_meta),
            )
        )
    assert not (tmp_path / "ft" / "fold2" / "log.log").exists()


def test_averaging_refuses_files_of_different_folds(stage1, tmp_path):
    from s3prl_ser.training.checkpoint_averaging import CheckpointMismatchError, average_checkpoint_files

    other = safe_torch_load(stage1 / "fold1" / "upstream.ckpt")
    other[PROTOCOL_KEY] = {**other[PROTOCOL_KEY], "fold": "fold2"}
    torch.save(other, tmp_path / "fold2.ckpt")
    with pytest.raises(CheckpointMismatchError, match="ser_protocol differs"):
        average_checkpoint_files([stage1 / "fold1" / "upstream.ckpt", tmp_path / "fold2.ckpt"])


def test_prepared_meta_data_record_their_file_order(mini_corpus, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(mini_corpus, tmp_path / "listdir", order="listdir")
    for split in ("train", "test"):
        data = json.loads((tmp_path / "listdir" / "Session2" / f"{split}_meta_data.json").read_text())
        assert data["file_order"] == "listdir"
    protocol = load_fold_data(datarc(mini_corpus, tmp_path / "listdir"), "fold2", read_audio=False).protocol
    assert protocol.split["file_order"] == "listdir"
    speaker = load_fold_data(datarc(mini_corpus, tmp_path / "listdir", split="speaker"), "fold2", read_audio=False)
    assert speaker.protocol.split == {"rule": "speaker", "dev_sessions": ["Ses03"], "file_order": "listdir"}
    assert speaker.protocol.sizes == {"train": len(speaker.train), "dev": len(speaker.dev), "test": len(speaker.test)}
