"""s3prl 0.4.18 on current stacks: the compat layer (s3prl_ser.compat)."""

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from s3prl_ser import compat


def test_s3prl_hub_and_runner_import():
    from s3prl import hub
    from s3prl.downstream.runner import Runner  # noqa: F401

    options = hub.options()
    for name in ("hubert_local", "wav2vec2_local", "fbank", "hubert", "wav2vec2"):
        assert name in options


def test_removed_apis_raise_only_when_called():
    import huggingface_hub
    from torchaudio.sox_effects import apply_effects_tensor

    torchaudio.set_audio_backend("sox_io")  # called by s3prl at import time: must be harmless
    with pytest.raises(compat.RemovedAPIError, match="sox_effects.apply_effects_tensor was removed"):
        apply_effects_tensor(torch.zeros(1, 10), 16000, [])
    with pytest.raises(compat.RemovedAPIError, match="HfFolder"):
        huggingface_hub.HfFolder.get_token()
    with pytest.raises(compat.RemovedAPIError, match="Repository"):
        huggingface_hub.Repository(local_dir="x")


def test_torchaudio_load_reads_with_soundfile(tmp_path):
    data = (np.random.default_rng(0).uniform(-0.5, 0.5, size=(300, 2))).astype("float32")
    sf.write(tmp_path / "x.wav", data, 8000, subtype="FLOAT")
    wav, sr = torchaudio.load(str(tmp_path / "x.wav"))
    assert sr == 8000 and wav.shape == (2, 300)
    assert torch.allclose(wav, torch.from_numpy(data).T)


def test_install_refuses_forced_full_unpickling(monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(RuntimeError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set.*execute code"):
        compat.install()
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0")
    compat.install()
