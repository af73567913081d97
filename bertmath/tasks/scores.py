"""Downstream scores of a fine-tuned classifier: accuracy, F1, Matthews correlation, Pearson and Spearman.

Pure functions of (predictions, targets) as 1-D tensors, computed in float64; each docstring is its formula.
A score that is undefined on the data (a constant series has no correlation) is 0, as scikit-learn's
matthews_corrcoef and the GLUE scorer report it, so that a majority-class or mean baseline has a number.
"""

from __future__ import annotations

import torch
from torch import Tensor

CLASSIFICATION_SCORES = ("accuracy", "f1", "matthews")
REGRESSION_SCORES = ("pearson", "spearman")


def accuracy(predicted: Tensor, target: Tensor) -> float:
    """acc = (1/N) Σ_i [ŷ_i = y_i]."""
    return float((predicted == target).double().mean()) if len(target) else 0.0


def f1(predicted: Tensor, target: Tensor, num_labels: int) -> float:
    """F1 = 2·P·R / (P + R) with P = TP/(TP+FP), R = TP/(TP+FN): of class 1 for two labels (GLUE's MRPC/QQP
    convention), else the unweighted mean over classes (macro F1). A class never predicted nor present: 0."""
    classes = [1] if num_labels == 2 else list(range(num_labels))
    values = []
    for c in classes:
        tp = int(((predicted == c) & (target == c)).sum())
        fp = int(((predicted == c) & (target != c)).sum())
        fn = int(((predicted != c) & (target == c)).sum())
        values.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)  # = 2PR/(P+R), without 0/0
    return sum(values) / len(values)


def matthews(predicted: Tensor, target: Tensor, num_labels: int) -> float:
    """MCC = (c·s − Σ_k p_k t_k) / √((s² − Σ_k p_k²)(s² − Σ_k t_k²)), from the confusion matrix C:
    c = Σ_k C_kk correct, s = N samples, p_k = predicted k, t_k = truly k (Gorodkin 2004; for two classes
    (TP·TN − FP·FN)/√((TP+FP)(TP+FN)(TN+FP)(TN+FN))). 0 when a denominator factor is 0."""
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.float64)
    confusion.index_put_((target.long(), predicted.long()), torch.ones(len(target), dtype=torch.float64),
                         accumulate=True)
    t, p = confusion.sum(1), confusion.sum(0)
    c, s = confusion.trace(), confusion.sum()
    denominator = torch.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    return float((c * s - (p * t).sum()) / denominator) if denominator > 0 else 0.0


def pearson(x: Tensor, y: Tensor) -> float:
    """r = Σ (x_i − x̄)(y_i − ȳ) / √(Σ (x_i − x̄)² · Σ (y_i − ȳ)²); 0 when either series is constant."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = torch.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def ranks(x: Tensor) -> Tensor:
    """1-based ranks of x, ties sharing their average rank (what Spearman's ρ correlates)."""
    values, inverse, counts = torch.unique(x.double(), return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0).double()  # the rank of the last element of each group of equal values
    return (last - (counts.double() - 1) / 2)[inverse]


def spearman(x: Tensor, y: Tensor) -> float:
    """ρ = Pearson r of the ranks (ties averaged)."""
    return pearson(ranks(x), ranks(y))


def task_scores(predictions: Tensor, targets: Tensor, num_labels: int) -> dict[str, float]:
    """Every score that applies: accuracy, F1 and MCC of the argmax classes (num_labels ≥ 2), or Pearson
    and Spearman of the predicted values (num_labels = 1). `predictions`: (N,) classes or values."""
    if num_labels == 1:
        return {"pearson": pearson(predictions, targets), "spearman": spearman(predictions, targets)}
    return {"accuracy": accuracy(predictions, targets), "f1": f1(predictions, targets, num_labels),
            "matthews": matthews(predictions, targets, num_labels)}
