import pytest
import torch

from helpers import randomize_batchnorm
from s3prl_ser.data.sampler import GlobalBatchSampler
from s3prl_ser.models.fusion import EmotionClassifier, align_streams, pool_frames
from s3prl_ser.upstreams.multi_upstream import split_names

SMALL_ECAPA = dict(channels=[16, 16, 16, 16, 48], res2net_scale=4, attention_channels=8, se_channels=8, lin_neurons=12)


def test_pool_frames_hand_computed():
    frames = torch.arange(5, dtype=torch.float32).unsqueeze(1)  # 0 1 2 3 4
    assert pool_frames(frames, 2).squeeze(1).tolist() == [0.5, 2.5, 4.0]  # last run has one frame
    assert torch.equal(pool_frames(frames, 1), frames)


def test_align_fbank_10ms_with_hubert_20ms():
    fbank = [torch.arange(8, dtype=torch.float32).repeat(3, 1).T, torch.ones(5, 3)]  # rate 160
    hubert = [torch.zeros(4, 2), torch.zeros(2, 2)]  # rate 320: 4 and 2 frames
    a_fbank, a_hubert = align_streams([fbank, hubert], [160, 320])
    assert [t.shape for t in a_fbank] == [(4, 3), (2, 3)]
    assert [t.shape for t in a_hubert] == [(4, 2), (2, 2)]
    assert a_fbank[0][:, 0].tolist() == [0.5, 2.5, 4.5, 6.5]  # pairs of 10 ms frames averaged
    # 5 fbank frames -> 3 pooled, cut to hubert's 2
    assert torch.equal(a_fbank[1], torch.ones(2, 3))


def test_align_refuses_inconsistent_rates_and_lengths():
    with pytest.raises(ValueError, match="divide each other"):
        align_streams([[torch.zeros(3, 1)], [torch.zeros(2, 1)]], [160, 240])
    with pytest.raises(ValueError, match="more than 2 apart"):
        align_streams([[torch.zeros(20, 1)], [torch.zeros(4, 1)]], [160, 320])


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_fusion_is_independent_of_batching(fusion):
    torch.manual_seed(0)
    model = EmotionClassifier([6, 4], [160, 320], 4, aggregator="ecapa", ecapa=SMALL_ECAPA, fusion=fusion).eval()
    lengths = [14, 9, 20]
    fbank = [torch.randn(2 * n, 6) for n in lengths]
    hubert = [torch.randn(n, 4) for n in lengths]
    with torch.no_grad():
        batched = model([fbank, hubert])
        alone = torch.cat([model([[f], [h]]) for f, h in zip(fbank, hubert)])
    assert batched.shape == (3, 4)
    assert torch.allclose(batched, alone, atol=1e-5)


def _pool_pairs_by_hand(frames, length):
    """Frame j of the 20 ms stream: the mean of 10 ms frames 2j and 2j+1 (only 2j if 2j+1 is past the end)."""
    out = []
    for j in range(length):
        run = [frames[i] for i in (2 * j, 2 * j + 1) if i < frames.shape[0]]
        out.append(sum(run) / len(run))
    return torch.stack(out)


@pytest.mark.parametrize("aggregator", ["ecapa", "mean"])
def test_early_fusion_is_the_aggregator_over_aligned_concatenated_frames(aggregator):
    torch.manual_seed(0)
    model = EmotionClassifier([6, 4], [160, 320], 4, aggregator=aggregator, ecapa=SMALL_ECAPA, fusion="early")
    randomize_batchnorm(model)
    model.eval()
    # (10 ms frames, 20 ms frames): fbank pools to one frame more (hubert's length kept), the same
    # count with a one-frame trailing run, one frame fewer (hubert cut), two more (fbank cut).
    frame_counts = [(19, 9), (11, 6), (22, 12), (13, 5)]
    fbank = [torch.randn(n_fbank, 6) for n_fbank, _ in frame_counts]
    hubert = [torch.randn(n_hubert, 4) for _, n_hubert in frame_counts]

    lengths = [min(-(-n_fbank // 2), n_hubert) for n_fbank, n_hubert in frame_counts]
    assert lengths == [9, 6, 11, 5]
    padded = torch.zeros(len(lengths), max(lengths), 6 + 4)
    for b, length in enumerate(lengths):
        padded[b, :length, :6] = _pool_pairs_by_hand(fbank[b], length)
        padded[b, :length, 6:] = hubert[b][:length]
    assert torch.equal(padded[1, 5, :6], fbank[1][10])  # the trailing run of one frame is that frame
    with torch.no_grad():
        expected = model.aggregators[0](padded, torch.tensor(lengths))
        embedding = model.embed([fbank, hubert])
        logits = model([fbank, hubert])
    torch.testing.assert_close(embedding, expected)
    torch.testing.assert_close(logits, model.classifier(expected))


def test_late_fusion_concatenates_embeddings():
    model = EmotionClassifier([6, 4], [160, 320], 4, aggregator="mean", fusion="late")
    assert model.classifier.in_features == 10 and len(model.aggregators) == 2
    early = EmotionClassifier([6, 4], [160, 320], 4, aggregator="mean", fusion="early")
    assert early.classifier.in_features == 10 and len(early.aggregators) == 1
    fbank, hubert = [torch.ones(4, 6) * 2], [torch.ones(2, 4) * 3]
    assert torch.allclose(model.embed([fbank, hubert]), torch.tensor([[2.0] * 6 + [3.0] * 4]))


def test_fusion_configuration_errors():
    with pytest.raises(ValueError, match="need fusion 'early' or 'late'"):
        EmotionClassifier([6, 4], [160, 320], 4, fusion=None)
    with pytest.raises(ValueError, match="needs several upstreams"):
        EmotionClassifier([6], [160], 4, fusion="late")
    with pytest.raises(ValueError, match="expected 2 feature streams, got 1"):
        EmotionClassifier([6, 4], [160, 320], 4, aggregator="mean", fusion="late")([[torch.ones(2, 6)]])


def test_split_names():
    assert split_names("fbank,hubert_local", ",/x/tiny.pt") == [("fbank", None), ("hubert_local", "/x/tiny.pt")]
    assert split_names("hubert", None) == [("hubert", None)]
    with pytest.raises(ValueError, match="2 upstreams but -k gives 3"):
        split_names("a,b", "x,y,z")
    with pytest.raises(ValueError, match="empty upstream name"):
        split_names("a,,b", None)


def test_global_batches_are_split_across_processes():
    one = list(GlobalBatchSampler(10, 4, seed=3, epoch=1))
    ranks = [list(GlobalBatchSampler(10, 4, seed=3, epoch=1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(one) == 2 and all(len(b) == 4 for b in one)  # 10 items: 2 full batches, rest dropped
    assert [a + b for a, b in zip(*ranks)] == one
    assert list(GlobalBatchSampler(10, 4, seed=3, epoch=2)) != one  # reshuffled every epoch
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        GlobalBatchSampler(10, 4, world_size=3)


def test_projector_before_the_aggregator_ignores_padding():
    """projector_dim (SUPERB's emotion downstream): a frame-wise linear layer, then the aggregator
    over valid frames only; for mean pooling, the projection of the mean of the valid frames."""
    torch.manual_seed(0)
    model = EmotionClassifier([6], [160], num_classes=4, aggregator="mean", projector_dim=5).eval()
    frames = [torch.randn(9, 6), torch.randn(4, 6)]
    projector = model.aggregators[0].projector
    with torch.no_grad():
        embedding = model.embed([frames])
        expected = torch.stack([projector(f.mean(dim=0)) for f in frames])
        torch.testing.assert_close(embedding, expected, atol=1e-6, rtol=1e-6)
        alone = model.embed([[frames[1]]])  # the 4-frame utterance without 5 frames of padding
        torch.testing.assert_close(alone[0], embedding[1], atol=1e-6, rtol=1e-6)
    assert model.aggregators[0].output_size == 5 and model.classifier.in_features == 5
    with pytest.raises(ValueError, match="projector_dim must be a positive integer"):
        EmotionClassifier([6], [160], num_classes=4, aggregator="mean", projector_dim=0)


def test_projector_with_ecapa_is_independent_of_batching():
    torch.manual_seed(0)
    small = {"channels": (16, 16, 32), "kernel_sizes": (5, 3, 1), "dilations": (1, 2, 1), "lin_neurons": 12}
    model = EmotionClassifier([6], [160], num_classes=4, ecapa=small, projector_dim=5).eval()
    randomize_batchnorm(model)
    frames = [torch.randn(30, 6), torch.randn(11, 6)]
    with torch.no_grad():
        torch.testing.assert_close(model.embed([frames])[1], model.embed([[frames[1]]])[0], atol=1e-5, rtol=1e-5)
