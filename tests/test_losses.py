"""Losses of issue 22 (attributes and imbalanced categories) against hand computations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from s3prl_ser.training.losses import FocalLoss, ccc_loss, class_weights, masked_mse
from s3prl_ser.training.metrics import concordance_correlation

NAN = float("nan")


def test_ccc_loss_hand_computed_with_population_moments():
    # truth 1, 2, 3, 4 and prediction 2, 2, 4, 5: means 2.5 and 3.25; population (divide by n)
    # variances 5/4 and 27/16, covariance 11/8, so CCC = (11/4) / (5/4 + 27/16 + 9/16) = 11/14.
    # (With n - 1 moments it would be 0.8186: the test pins the convention.)
    truth = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    pred = torch.tensor([[2.0], [2.0], [4.0], [5.0]])
    assert ccc_loss(pred, truth).item() == pytest.approx(1 - 11 / 14, abs=1e-6)


def test_ccc_loss_sums_attributes_and_masks_unknowns():
    truth = torch.tensor([[1.0, 0.0], [2.0, NAN], [3.0, 1.0], [4.0, 1.0]])
    pred = torch.tensor([[2.0, 0.5], [2.0, 100.0], [4.0, 0.0], [5.0, 1.0]])
    # second attribute: only rows 0, 2, 3 count (row 1's 100 is ignored).
    second = concordance_correlation([0.5, 0.0, 1.0], [0.0, 1.0, 1.0])
    assert ccc_loss(pred, truth).item() == pytest.approx((1 - 11 / 14) + (1 - second), abs=1e-6)
    # the same as the metric on random data with a third unknown
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 3))
    y[rng.random(y.shape) < 0.3] = np.nan
    x = y + rng.normal(size=y.shape)
    x[np.isnan(x)] = rng.normal(size=int(np.isnan(x).sum()))
    expected = sum(1 - concordance_correlation(x[~np.isnan(y[:, a]), a], y[~np.isnan(y[:, a]), a]) for a in range(3))
    assert ccc_loss(torch.tensor(x), torch.tensor(y)).item() == pytest.approx(
        expected, abs=1e-7
    )  # the loss adds 1e-8 to the denominator


def test_ccc_loss_gradients_finite_and_zero_where_unknown():
    truth = torch.tensor([[0.2, NAN, NAN], [0.4, NAN, 0.1], [0.9, 0.5, 0.1]])  # attr 1: one known value
    pred = torch.tensor([[0.3, 0.2, 0.7], [0.3, 0.2, 0.1], [0.3, 0.2, 0.1]], requires_grad=True)
    loss = ccc_loss(pred, truth)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    # attr 1 has < 2 known values: contributes 0 and no gradient; unknown cells get none either
    assert pred.grad[:, 1].abs().sum() == 0 and pred.grad[0, 2] == 0
    assert pred.grad[:, 0].abs().sum() > 0
    # constant prediction equal to a constant target: finite (no 0 / 0)
    same = torch.full((4, 1), 0.5, requires_grad=True)
    value = ccc_loss(same, torch.full((4, 1), 0.5))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(same.grad).all()
    assert ccc_loss(torch.zeros(2, 2), torch.full((2, 2), NAN)).item() == 0.0


def test_ccc_loss_training_reaches_concordance():
    """A free prediction vector trained on 1 - CCC matches the targets' mean and scale."""
    truth = torch.tensor([[0.1], [0.5], [0.3], [0.9], [NAN]])
    pred = torch.zeros(5, 1, requires_grad=True)
    with torch.no_grad():
        pred.add_(torch.linspace(-1, 1, 5).unsqueeze(1))
    optimiser = torch.optim.Adam([pred], lr=0.05)
    for _ in range(400):
        optimiser.zero_grad()
        ccc_loss(pred, truth).backward()
        optimiser.step()
    assert ccc_loss(pred, truth).item() < 1e-3


def test_masked_mse():
    pred = torch.tensor([[1.0, 5.0], [3.0, 0.0]], requires_grad=True)
    truth = torch.tensor([[0.0, NAN], [1.0, 0.0]])
    loss = masked_mse(pred, truth)
    assert loss.item() == pytest.approx((1 + 4 + 0) / 3)
    loss.backward()
    assert pred.grad.flatten().tolist() == pytest.approx([2 / 3, 0.0, 4 / 3, 0.0])
    assert masked_mse(pred, torch.full((2, 2), NAN)).item() == 0.0
    with pytest.raises(ValueError, match="batch, attributes"):
        masked_mse(torch.zeros(3), torch.zeros(3))


def test_class_weights_formula():
    # N = 12 over C = 4 classes: 12 / (4 n_c); the empty class weighs 0
    assert class_weights([6, 2, 0, 4]).tolist() == pytest.approx([0.5, 1.5, 0.0, 0.75])
    counts = [30, 5, 15]
    weights = class_weights(counts)
    assert [n * w for n, w in zip(counts, weights.tolist())] == pytest.approx([50 / 3] * 3)  # N / C each
    with pytest.raises(ValueError, match="non-negative"):
        class_weights([3, -1])
    with pytest.raises(ValueError, match="at least one"):
        class_weights([0, 0])


def test_class_weights_balance_the_gradient_of_an_imbalanced_batch():
    """At uniform logits plain cross-entropy pulls the bias toward the majority class; with the
    weights every class weighs the same and the pull vanishes."""
    labels = torch.tensor([0] * 6 + [1] * 2 + [2] * 4)
    counts = torch.bincount(labels).tolist()
    bias = torch.zeros(3, requires_grad=True)
    F.cross_entropy(bias.expand(len(labels), 3), labels).backward()
    assert bias.grad.argmin() == 0 and bias.grad.abs().max() > 0.1
    bias.grad = None
    F.cross_entropy(bias.expand(len(labels), 3), labels, weight=class_weights(counts)).backward()
    assert bias.grad.abs().max() < 1e-6


@pytest.mark.parametrize("weighted", [False, True])
def test_focal_gamma_zero_is_cross_entropy_exactly(weighted):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 4, generator=generator) * 3
    labels = torch.randint(0, 4, (16,), generator=generator)
    weight = class_weights(torch.bincount(labels, minlength=4).tolist()) if weighted else None
    assert torch.equal(FocalLoss(0.0, weight)(logits, labels), F.cross_entropy(logits, labels, weight=weight))


def test_focal_hand_computed_and_focuses_on_hard_examples():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # sample 0 easy (p_y = 0.881), sample 1 hard (0.269)
    labels = torch.tensor([0, 0])
    p = [math.exp(2) / (math.exp(2) + 1), 1 / (1 + math.e)]
    expected = sum(-((1 - q) ** 2) * math.log(q) for q in p) / 2
    assert FocalLoss(2.0)(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    # the easy sample's share of the loss shrinks
    per_sample = [FocalLoss(2.0)(logits[i : i + 1], labels[i : i + 1]).item() for i in range(2)]
    ce = [F.cross_entropy(logits[i : i + 1], labels[i : i + 1]).item() for i in range(2)]
    assert per_sample[0] / per_sample[1] < ce[0] / ce[1] / 10
    # weighted: mean weighted by weight[y], as cross-entropy's
    weight = torch.tensor([2.0, 1.0])
    labels = torch.tensor([0, 1])
    q = [p[0], math.exp(1) / (1 + math.e)]
    expected = (2 * -((1 - q[0]) ** 2) * math.log(q[0]) + -((1 - q[1]) ** 2) * math.log(q[1])) / 3
    assert FocalLoss(2.0, weight)(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_focal_gradients_finite_when_confident():
    logits = torch.tensor([[80.0, -80.0], [0.0, 0.0]], requires_grad=True)
    loss = FocalLoss(0.5)(logits, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(-1.0)


def test_target_objective_combines_the_losses_as_the_spec_says():
    from s3prl_ser.training.objective import TargetObjective, selection_scores, selection_value
    from s3prl_ser.training.targets import LossSpec, TargetSpec

    outputs = torch.tensor([[2.0, 0.0, 0.1, 0.4], [0.0, 2.0, 0.9, 0.2], [1.0, 0.0, 0.5, 0.6], [0.0, 1.0, 0.3, 0.1]])
    values = [[0.0, 0.5], [1.0, NAN], [NAN, 0.25], [0.5, 1.0]]
    labels = [(c, np.array(v)) for c, v in zip([0, 1, 0, 0], values)]
    truth = torch.tensor(values)
    ids = torch.tensor([0, 1, 0, 0])
    both = TargetSpec(attributes=("arousal", "valence"), attribute_weight=0.5)
    expected = F.cross_entropy(outputs[:, :2], ids) + 0.5 * ccc_loss(outputs[:, 2:], truth)
    assert TargetObjective(both, LossSpec(), [3, 1])(outputs, labels).item() == pytest.approx(expected.item())
    # attributes only (C = 0), MSE; class ids of -1 are ignored
    only = TargetSpec(categories=False, attributes=("arousal", "valence"), attribute_loss="mse")
    unlabelled = [(-1, np.array(v)) for v in values]
    got = TargetObjective(only, LossSpec())(outputs[:, 2:], unlabelled)
    assert got.item() == pytest.approx(masked_mse(outputs[:, 2:], truth).item())
    # categories with class weights and focal loss
    weighted = TargetObjective(TargetSpec(), LossSpec(class_weights=True, focal_gamma=2.0), [3, 1])
    assert weighted(outputs[:, :2], [0, 1, 0, 0]).item() == pytest.approx(
        FocalLoss(2.0, class_weights([3, 1]))(outputs[:, :2], ids).item()
    )
    with pytest.raises(ValueError, match="class counts"):
        TargetObjective(TargetSpec(), LossSpec())
    assert selection_value({"ccc_mean": NAN}, "ccc_mean") == -1.0
    assert selection_scores(None, None) == {}


def test_ccc_loss_of_half_precision_inputs_is_computed_in_float32() -> None:
    # Under CUDA AMP the head's outputs are float16: the loss must equal the float32 one (float16
    # moments would drop the epsilon and most digits of the variances) and come back as float32.
    torch.manual_seed(0)
    pred, target = torch.rand(64, 3) * 1e-2 + 0.5, torch.rand(64, 3)
    half = ccc_loss(pred.half(), target.half())
    full = ccc_loss(pred.half().float(), target.half().float())
    assert half.dtype == torch.float32
    assert torch.equal(half, full)
