"""Hub entries for fine-tuned upstreams: FT_DIR/<fold> resolution, the fold guard, registration.

The guard's end-to-end behaviour on real stage-1 files is in test_protocol.py; here its rules
on checkpoints stamped by hand.
"""

import json
import shutil
from dataclasses import replace

import pytest
import torch

from s3prl_ser.data.protocol import (
    PROTOCOL_KEY,
    FoldMismatchError,
    FoldProtocol,
    ProtocolMismatchError,
    check_fine_tuned,
    recorded_protocol,
)
from s3prl_ser.finetuning.hub_entries import (
    LOADER_KEY,
    hubert_ft_avg,
    is_ft_avg_entry,
    make_ft_avg_entry,
    register_ft_avg_entries,
    resolve_ft_checkpoint,
)


def protocol(fold: str) -> FoldProtocol:
    split = {"rule": "superb", "valid_ratio": 0.2, "seed": 0, "file_order": "sorted"}
    return FoldProtocol(fold, "corpus-digest", split, "dev-digest", {"train": 8, "dev": 2, "test": 5})


def stamp(src, dst, fold=None, loader="hubert_local"):
    """A copy of the converted checkpoint ``src`` as stage 1 writes it: head, loader and (for
    ``fold``) the fold protocol; ``fold=None`` leaves the protocol out (an older export)."""
    state = torch.load(src, weights_only=True)
    state.update({"ft_head": {"linear.weight": torch.zeros(4, 2)}, LOADER_KEY: loader})
    if fold is not None:
        state[PROTOCOL_KEY] = protocol(fold).to_dict()
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dst)
    return dst


@pytest.fixture(scope="module")
def ft_dir(tiny_upstreams, tmp_path_factory):
    """FT_DIR laid out as `python -m upstream_ft` writes it: HuBERT for fold1 and fold2."""
    root = tmp_path_factory.mktemp("ft_dir")
    for fold in ("fold1", "fold2"):
        stamp(tiny_upstreams["hubert"], root / fold / "upstream.ckpt", fold)
        (root / fold / "upstream.json").write_text(json.dumps({"fold": fold, "base_upstream": "hubert_local"}))
    return root


def test_resolves_the_fold_directory_or_a_file(ft_dir):
    assert resolve_ft_checkpoint(ft_dir, "fold2") == ft_dir / "fold2" / "upstream.ckpt"
    assert resolve_ft_checkpoint(ft_dir / "fold1" / "upstream.ckpt", "fold1") == ft_dir / "fold1" / "upstream.ckpt"


def test_fold_guard_names_both_folds(ft_dir, tmp_path):
    with pytest.raises(FoldMismatchError, match=r"fine-tuned for fold1.*requested for fold2.*leak fold2's test set"):
        resolve_ft_checkpoint(ft_dir / "fold1" / "upstream.ckpt", "fold2")
    shutil.copytree(ft_dir / "fold1", tmp_path / "fold3")  # an export moved under the wrong fold
    with pytest.raises(FoldMismatchError, match="fold1.*fold3"):
        resolve_ft_checkpoint(tmp_path, "fold3")
    assert issubclass(FoldMismatchError, ValueError)


def test_local_entries_given_an_export_get_the_fold_guard(ft_dir, tiny_upstreams):
    from s3prl_ser.upstreams.build import build_upstream
    from s3prl_ser.upstreams.exportable import load_upstream

    export = str(ft_dir / "fold1" / "upstream.ckpt")
    with pytest.raises(FoldMismatchError, match=r"fine-tuned for fold1.*requested for fold3"):
        build_upstream("hubert_local", export, fold="fold3")
    with pytest.raises(FoldMismatchError, match=r"fine-tuned for fold1.*requested for fold2"):
        load_upstream("hubert_local", export, fold="fold2")  # as the start of another fold's fine-tuning
    assert build_upstream("hubert_local", export, fold="fold1") is not None
    assert build_upstream("hubert_local", export) is not None  # no fold: inference, no test set
    assert build_upstream("hubert_local", str(tiny_upstreams["hubert"]), fold="fold3") is not None  # not an export


def test_missing_inputs_are_clear_errors(ft_dir, tmp_path):
    with pytest.raises(ValueError, match="needs the fold"):
        resolve_ft_checkpoint(ft_dir, None)
    with pytest.raises(ValueError, match="needs -k FT_DIR"):
        resolve_ft_checkpoint(None, "fold1")
    with pytest.raises(FileNotFoundError, match=r"no fine-tuned upstream for fold4.*exported folds: fold1, fold2"):
        resolve_ft_checkpoint(ft_dir, "fold4")
    with pytest.raises(ValueError, match="invalid fold"):
        resolve_ft_checkpoint(ft_dir, "Session1")


def test_the_guard_travels_inside_the_checkpoint(ft_dir, tmp_path):
    """A fine-tuned upstream.ckpt copied without its upstream.json keeps its fold."""
    alone = tmp_path / "copied.ckpt"
    shutil.copy(ft_dir / "fold1" / "upstream.ckpt", alone)
    assert recorded_protocol(alone) == (protocol("fold1").to_dict(), True)
    with pytest.raises(FoldMismatchError, match=r"fine-tuned for fold1.*requested for fold3"):
        resolve_ft_checkpoint(alone, "fold3")
    with pytest.raises(FoldMismatchError, match=r"fine-tuned for fold1.*requested for fold3"):
        check_fine_tuned(alone, "fold3")
    assert resolve_ft_checkpoint(alone, "fold1") == alone


def test_fine_tuned_without_a_record_is_refused(tiny_upstreams, tmp_path):
    """An older export (head, no protocol) could hold any fold's test session: refused for every fold."""
    old = stamp(tiny_upstreams["hubert"], tmp_path / "old.ckpt")
    for fold in ("fold1", "fold4"):
        with pytest.raises(FoldMismatchError, match="fine-tuned checkpoint .* records no fold"):
            check_fine_tuned(old, fold)
    check_fine_tuned(old, None)  # inference: no test set to leak
    plain = tmp_path / "sub" / "pretrained.ckpt"
    plain.parent.mkdir()
    shutil.copy(tiny_upstreams["hubert"], plain)
    check_fine_tuned(plain, "fold4")  # pretrained weights: nothing recorded, nothing claimed
    (plain.parent / "upstream.json").write_text("{}")  # ...unless upstream_ft metadata lies beside it
    with pytest.raises(FoldMismatchError, match="records no fold"):
        check_fine_tuned(plain, "fold4")
    with pytest.raises(FoldMismatchError, match="not an export of `python -m upstream_ft`"):
        resolve_ft_checkpoint(tiny_upstreams["hubert"], "fold1")


def test_another_split_or_corpus_is_refused(ft_dir):
    export = ft_dir / "fold1" / "upstream.ckpt"
    same = protocol("fold1")
    check_fine_tuned(export, same)
    speaker = replace(same, split={"rule": "speaker", "dev_sessions": ["Ses02"], "file_order": "sorted"})
    with pytest.raises(
        ProtocolMismatchError, match=r"split rule: 'superb' vs 'speaker'.*split valid_ratio: 0.2 vs None"
    ):
        check_fine_tuned(export, speaker)
    listdir = replace(same, split={**same.split, "file_order": "listdir"}, dev="other-dev")
    with pytest.raises(ProtocolMismatchError, match="split file_order: 'sorted' vs 'listdir'"):
        check_fine_tuned(export, listdir)
    with pytest.raises(ProtocolMismatchError, match="another dev set with the same settings"):
        check_fine_tuned(export, replace(same, dev="other-dev"))
    with pytest.raises(ProtocolMismatchError, match="other meta data"):
        check_fine_tuned(export, replace(same, corpus="other-corpus"))
    with pytest.raises(FoldMismatchError):  # the fold is checked first
        check_fine_tuned(export, replace(speaker, fold="fold2"))


def test_registered_entries_load_through_the_hub(ft_dir):
    import s3prl.hub as hub

    assert register_ft_avg_entries() == ["hubert_ft_avg", "wav2vec2_ft_avg"]
    assert {"hubert_ft_avg", "wav2vec2_ft_avg"} <= set(hub.options())
    # keyword arguments s3prl's runner passes go through to hubert_local
    upstream = hub.hubert_ft_avg(ckpt=str(ft_dir), fold="fold2", model_config=None, refresh=False)
    with torch.no_grad():
        hidden = upstream.eval()([torch.randn(8000)])["hidden_states"]
    assert hidden[-1].shape == (1, 24, 48)
    with pytest.raises(FoldMismatchError):
        hub.hubert_ft_avg(ckpt=str(ft_dir / "fold2" / "upstream.ckpt"), fold="fold1")
    with pytest.raises(ValueError, match="needs the fold"):
        hub.hubert_ft_avg(ckpt=str(ft_dir))  # how s3prl's runner would call it, unwired


def test_entry_refuses_another_family_and_unknown_bases(ft_dir):
    with pytest.raises(ValueError, match="loaded by hubert_local, not a wav2vec2 upstream.*-u hubert_ft_avg"):
        make_ft_avg_entry("wav2vec2")(ckpt=str(ft_dir), fold="fold1")
    with pytest.raises(ValueError, match="no nosuchmodel_local entry"):
        make_ft_avg_entry("nosuchmodel")
    assert hubert_ft_avg(ckpt=str(ft_dir), fold="fold1").__class__.__name__ == "UpstreamExpert"


def test_is_ft_avg_entry():
    assert is_ft_avg_entry("hubert_ft_avg") and is_ft_avg_entry("wavlm_ft_avg")
    assert not is_ft_avg_entry("hubert") and not is_ft_avg_entry("_ft_avg") and not is_ft_avg_entry("hubert_local")
