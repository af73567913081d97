"""bertmath.tasks.scores against scikit-learn and scipy (independent implementations), on random and edge cases."""

import pytest
import torch

from bertmath.tasks import scores

metrics = pytest.importorskip("sklearn.metrics")
stats = pytest.importorskip("scipy.stats")

ATOL = 1e-12


def random_classes(n, num_labels, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_labels, (n,), generator=g), torch.randint(0, num_labels, (n,), generator=g)


@pytest.mark.parametrize("num_labels", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_classification_scores_match_sklearn(num_labels, seed):
    predicted, target = random_classes(57, num_labels, seed)
    p, t = predicted.numpy(), target.numpy()
    got = scores.task_scores(predicted, target, num_labels)
    assert got["accuracy"] == pytest.approx(metrics.accuracy_score(t, p), abs=ATOL)
    average = "binary" if num_labels == 2 else "macro"
    assert got["f1"] == pytest.approx(metrics.f1_score(t, p, average=average, zero_division=0), abs=ATOL)
    assert got["matthews"] == pytest.approx(metrics.matthews_corrcoef(t, p), abs=ATOL)


def test_majority_baseline_has_zero_matthews_and_f1():
    target = torch.tensor([0, 1, 0, 0, 1])
    always_zero = torch.zeros(5, dtype=torch.long)
    assert scores.matthews(always_zero, target, 2) == 0.0 == metrics.matthews_corrcoef(target, always_zero)
    assert scores.f1(always_zero, target, 2) == 0.0
    assert scores.accuracy(always_zero, target) == pytest.approx(0.6)


@pytest.mark.parametrize("ties", [False, True])
def test_correlations_match_scipy(ties):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, generator=g, dtype=torch.float64), torch.randn(40, generator=g, dtype=torch.float64)
    if ties:  # STS-B scores come in fifths: many ties
        x, y = (x * 2).round() / 2, (y * 2).round() / 2
    y = y + 0.5 * x
    assert scores.pearson(x, y) == pytest.approx(stats.pearsonr(x.numpy(), y.numpy())[0], abs=1e-10)
    assert scores.spearman(x, y) == pytest.approx(stats.spearmanr(x.numpy(), y.numpy())[0], abs=1e-10)
    assert torch.equal(scores.ranks(x), torch.from_numpy(stats.rankdata(x.numpy())))


def test_constant_series_correlates_zero():
    """The mean baseline of a regression task predicts a constant: its correlation is 0, not NaN."""
    assert scores.pearson(torch.full((5,), 2.5), torch.arange(5.0)) == 0.0
    assert scores.spearman(torch.full((5,), 2.5), torch.arange(5.0)) == 0.0
