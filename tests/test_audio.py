import numpy as np
import pytest
import soundfile as sf
import torch

from s3prl_ser.data.audio import SAMPLE_RATE, AudioError, load_audio, prepare_waveform


def test_stereo_44k_is_downmixed_and_resampled(tmp_path):
    t = np.arange(44100) / 44100
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "a.wav", np.stack([left, -left * 0 + 0.1], axis=1), 44100)
    wav = load_audio(tmp_path / "a.wav")
    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert wav.numel() == SAMPLE_RATE  # 1 s
    # mean of the channels survives resampling: DC offset 0.05 from the right channel
    assert wav.mean().item() == pytest.approx(0.05, abs=5e-3)


def test_int16_pcm_array_scaled():
    pcm = (np.ones(800) * 16384).astype(np.int16)
    wav = prepare_waveform(pcm, 16000)
    assert wav.max().item() == pytest.approx(0.5, abs=1e-3)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00not really audio")
    with pytest.raises(AudioError, match="corrupt.wav: cannot decode"):
        load_audio(tmp_path / "corrupt.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype="float32"), 16000)
    with pytest.raises(AudioError, match="empty.wav: audio is empty"):
        load_audio(tmp_path / "empty.wav")
    sf.write(tmp_path / "nan.wav", np.array([0.0, np.nan, 0.1], dtype="float32"), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: audio contains NaN"):
        load_audio(tmp_path / "nan.wav")
    sf.write(tmp_path / "short.wav", np.zeros(200, dtype="float32"), 16000)
    with pytest.raises(AudioError, match="short.wav: clip is 200 samples.*400"):
        load_audio(tmp_path / "short.wav", min_samples=400)


def test_bad_array_shapes():
    with pytest.raises(AudioError, match="<array>: expected a 1-D or 2-D"):
        prepare_waveform(np.zeros((2, 2, 2)), 16000)
    with pytest.raises(AudioError, match="invalid sample rate"):
        prepare_waveform(np.zeros(10), 0)
