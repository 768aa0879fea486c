"""The shortest clip an upstream gives finite features for, applied before the fold's audio check."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from s3prl_ser.data.audio import AudioError
from s3prl_ser.data.fold_data import load_fold_data
from s3prl_ser.data.manifest import Manifest, ManifestFold
from s3prl_ser.upstreams import multi_upstream
from s3prl_ser.upstreams.build import build_upstream
from s3prl_ser.upstreams.multi_upstream import raise_min_samples, shortest_input


def test_fbank_with_cmvn_needs_two_frames(monkeypatch):
    fbank = build_upstream("fbank").eval()
    with torch.no_grad():  # the bound is s3prl's behaviour: one frame (400-559 samples) is NaN, two are not
        with pytest.warns(UserWarning, match="degrees of freedom"):  # std over one frame
            assert torch.isnan(fbank([torch.rand(559) - 0.5])["hidden_states"][-1]).all()
        assert torch.isfinite(fbank([torch.rand(560) - 0.5])["hidden_states"][-1]).all()
    assert shortest_input(fbank) == 560 and shortest_input(build_upstream("mfcc")) == 560
    assert shortest_input(multi_upstream.MultiUpstream([build_upstream("fbank_no_cmvn"), fbank])) == 560

    datarc = {"min_samples": 400}
    assert raise_min_samples(datarc, "fbank_no_cmvn") == 400 and datarc == {"min_samples": 400}
    assert raise_min_samples(datarc, "fbank_no_cmvn,fbank") == 560 and datarc == {"min_samples": 560}
    assert raise_min_samples({"min_samples": 8000}, "fbank") == 8000  # a larger setting stays
    built = []
    monkeypatch.setattr(multi_upstream, "build_upstream", lambda name, **_: built.append(name))
    assert raise_min_samples({"min_samples": 400}, "wav2vec2") == 400 and built == []  # no weights loaded


def test_the_fold_check_refuses_a_one_frame_clip_for_fbank(tmp_path):
    """A 500-sample segment: accepted at min_samples 400, where fbank would give NaN features
    (a NaN loss); refused, naming it, once the runner has raised min_samples for fbank."""
    audio = 0.1 * np.random.default_rng(0).standard_normal(32000).astype("float32")
    soundfile.write(tmp_path / "talk.wav", audio, 16000)
    rows = [
        {
            "id": f"t{s}",
            "path": "talk.wav",
            "label": "ab"[s % 2],
            "speaker": "x",
            "start": s * 0.25,
            "end": s * 0.25 + 0.25,
        }
        for s in range(8)
    ]
    rows[7]["end"] = rows[7]["start"] + 500 / 16000
    manifest = Manifest(
        "talks", ["a", "b"], rows, {"fold1": ManifestFold(tuple(f"t{s}" for s in range(6)), ("t6", "t7"))}
    )
    manifest.write(tmp_path / "meta")
    datarc = {"root": str(tmp_path), "meta_data": str(tmp_path / "meta"), "min_samples": 400}
    assert load_fold_data(dict(datarc), "fold1").test[1][0].shape == (500,)
    raise_min_samples(datarc, "fbank")
    with pytest.raises(
        AudioError, match=r"1 of the 8 audio files of fold1 cannot be used: talk.wav: clip is 500 samples"
    ):
        load_fold_data(datarc, "fold1")


def test_raising_min_samples_leaves_the_random_stream_alone() -> None:
    # The runner calls it after seeding and before building the downstream: a draw here would
    # change every categorical run's initial weights (it did, by building fbank).
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    datarc = {"min_samples": 400}
    assert multi_upstream.raise_min_samples(datarc, "fbank") == 560 and datarc["min_samples"] == 560
    assert torch.equal(torch.rand(4), expected)
