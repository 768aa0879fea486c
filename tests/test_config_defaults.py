"""The expert's defaults are written once, in ``downstream/emotion_ecapa/config.yaml``: code that
meets a section without the key reads them from there (``s3prl_ser.config.expert_default``)."""

import pytest
import torch

import s3prl_ser.config as config
from s3prl_ser.data.audio import AudioError
from s3prl_ser.data.emotion_dataset import EmotionDataset
from s3prl_ser.data.fold_data import load_fold_data
from s3prl_ser.models.classifier import build_aggregator
from s3prl_ser.models.fusion import EmotionClassifier


@pytest.fixture
def edited_defaults(tmp_path, monkeypatch):
    """A copy of the task's config.yaml with other min_samples, aggregator and batch size."""
    text = (config.DOWNSTREAM_DIR / "emotion_ecapa" / "config.yaml").read_text()
    for old, new in (("min_samples: 400 ", "min_samples: 4000000 "), ("aggregator: ecapa ", "aggregator: mean  ")):
        assert old in text
        text = text.replace(old, new)
    text = text.replace("train_batch_size: 4\n", "train_batch_size: 3\n", 1)
    (tmp_path / "emotion_ecapa").mkdir()
    (tmp_path / "emotion_ecapa" / "config.yaml").write_text(text)
    monkeypatch.setattr(config, "DOWNSTREAM_DIR", tmp_path)
    config._expert_defaults.cache_clear()
    yield
    config._expert_defaults.cache_clear()  # the next reader sees the real file again


def test_code_defaults_follow_the_config_file(edited_defaults, mini_corpus, mini_meta):
    assert config.expert_default("datarc", "train_batch_size") == 3
    assert type(build_aggregator(None, 8)).__name__ == "_Mean"  # not ECAPA-TDNN
    assert EmotionClassifier([8], [160], num_classes=4).embed([[torch.ones(5, 8)]]).shape == (1, 8)  # mean: D, not 192
    dataset = EmotionDataset(mini_corpus, mini_meta / "Session1" / "test_meta_data.json")
    with pytest.raises(AudioError, match="shorter than the required 4000000 samples"):
        dataset[0]
    with pytest.raises(AudioError, match="4000000"):  # every clip of the fold is now too short
        load_fold_data({"root": str(mini_corpus), "meta_data": str(mini_meta)}, "fold1")
