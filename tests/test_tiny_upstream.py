import pytest
import torch

from s3prl_ser.cli.tiny_upstream import main
from s3prl_ser.toy.tiny_upstream import write_tiny_upstream


@pytest.mark.parametrize("arch", ["hubert", "wav2vec2"])
def test_stock_s3prl_hub_loads_tiny_checkpoint(tiny_upstreams, arch):
    from s3prl import hub

    state = torch.load(tiny_upstreams[arch], weights_only=True)
    assert {"task_cfg", "model_cfg", "model_weight", "dictionaries_symbols"} <= set(state)
    upstream = getattr(hub, f"{arch}_local")(ckpt=str(tiny_upstreams[arch])).eval()
    wavs = [torch.randn(16000), torch.randn(12000)]
    with torch.no_grad():
        out = upstream(wavs)
    hidden = out["hidden_states"]
    assert len(hidden) == 3  # CNN output + 2 transformer layers
    assert all(h.shape == (2, 49, 48) for h in hidden)  # 16000 samples / stride 320 -> 49 frames
    assert upstream.get_downsample_rates("hidden_states") == 320


def test_same_seed_same_weights(tmp_path):
    a = torch.load(write_tiny_upstream("hubert", tmp_path / "a.pt", seed=3), weights_only=True)
    b = torch.load(write_tiny_upstream("hubert", tmp_path / "b.pt", seed=3), weights_only=True)
    c = torch.load(write_tiny_upstream("hubert", tmp_path / "c.pt", seed=4), weights_only=True)
    key = "encoder.layers.0.fc1.weight"
    assert torch.equal(a["model_weight"][key], b["model_weight"][key])
    assert not torch.equal(a["model_weight"][key], c["model_weight"][key])


def test_cli_and_validation(tmp_path, capsys):
    main(["wav2vec2", str(tmp_path / "w.pt"), "--layers", "1", "--dim", "32"])
    assert "wav2vec2_local -k" in capsys.readouterr().out
    assert torch.load(tmp_path / "w.pt", weights_only=True)["model_cfg"]["encoder_layers"] == 1
    with pytest.raises(ValueError, match="divisible"):
        write_tiny_upstream("hubert", tmp_path / "x.pt", dim=30, heads=4)
