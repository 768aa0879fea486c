"""Hub entries for fine-tuned upstreams: FT_DIR/<fold> resolution, the fold guard, registration."""

import json
import shutil

import pytest
import torch

from s3prl_ser.hub.ft_hub import (
    FoldMismatchError,
    hubert_ft_avg,
    is_ft_avg_entry,
    make_ft_avg_entry,
    register_ft_avg_entries,
    resolve_ft_checkpoint,
)


@pytest.fixture(scope="module")
def ft_dir(tiny_upstreams, tmp_path_factory):
    """FT_DIR laid out as `python -m upstream_ft` writes it: HuBERT for fold1 and fold2."""
    root = tmp_path_factory.mktemp("ft_dir")
    for fold in ("fold1", "fold2"):
        (root / fold).mkdir()
        shutil.copy(tiny_upstreams["hubert"], root / fold / "upstream.ckpt")
        (root / fold / "upstream.json").write_text(
            json.dumps({"fold": fold, "loader": "hubert_local", "base_upstream": "hubert_local"})
        )
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
    from s3prl_ser.hub.exportable import load_upstream
    from s3prl_ser.hub.upstreams import build_upstream

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
    shutil.copy(ft_dir / "fold1" / "upstream.ckpt", tmp_path / "upstream.ckpt")
    with pytest.raises(FileNotFoundError, match="upstream.json not found"):
        resolve_ft_checkpoint(tmp_path / "upstream.ckpt", "fold1")


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
    with pytest.raises(ValueError, match="not a wav2vec2 upstream.*-u hubert_ft_avg"):
        make_ft_avg_entry("wav2vec2")(ckpt=str(ft_dir), fold="fold1")
    with pytest.raises(ValueError, match="no nosuchmodel_local entry"):
        make_ft_avg_entry("nosuchmodel")
    assert hubert_ft_avg(ckpt=str(ft_dir), fold="fold1").__class__.__name__ == "UpstreamExpert"


def test_is_ft_avg_entry():
    assert is_ft_avg_entry("hubert_ft_avg") and is_ft_avg_entry("wavlm_ft_avg")
    assert not is_ft_avg_entry("hubert") and not is_ft_avg_entry("_ft_avg") and not is_ft_avg_entry("hubert_local")
