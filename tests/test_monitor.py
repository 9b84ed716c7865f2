"""Frozen-feature classifiers against independent computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mec.monitor import (
    Features,
    effective_rank,
    few_shot_accuracy,
    few_shot_subset,
    knn_accuracy,
    linear_accuracy,
)


def _blobs(n_per_class: int, classes: int, dim: int, spread: float, seed: int) -> Features:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99))
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    feats = centres[labels] + spread * torch.randn(len(labels), dim, generator=gen)
    return Features(F.normalize(feats, dim=1), labels)


def _knn_reference(train: Features, test: Features, k: int, t: float) -> float:
    """Plain loops over numpy arrays: vote weights exp(cos / t) of the k most similar training points."""
    a, b = train.features.numpy().astype(np.float64), test.features.numpy().astype(np.float64)
    correct = 0
    for x, y in zip(b, test.labels.numpy(), strict=True):
        sims = a @ x
        order = np.argsort(-sims)[:k]
        votes: dict[int, float] = {}
        for i in order:
            votes[int(train.labels[i])] = votes.get(int(train.labels[i]), 0.0) + np.exp(sims[i] / t)
        correct += max(votes, key=votes.get) == y
    return correct / len(b)


@pytest.mark.parametrize(("k", "t"), [(1, 0.07), (5, 0.07), (20, 0.5)])
def test_weighted_knn_matches_reference(k, t):
    train, test = _blobs(30, 4, 8, 1.2, 0), _blobs(20, 4, 8, 1.2, 1)
    ours = knn_accuracy(train, test, k=k, temperature=t, chunk=7)  # chunking must not change the result
    assert ours == pytest.approx(_knn_reference(train, test, k, t))
    assert 0.3 < ours < 1.0  # neither trivial nor chance: the comparison means something


def test_linear_and_few_shot_separate_clean_blobs_and_not_noise():
    train, test = _blobs(30, 3, 16, 0.1, 0), _blobs(10, 3, 16, 0.1, 1)
    assert linear_accuracy(train, test) == 1.0
    assert few_shot_accuracy(train, test, shots=2, draws=3) == 1.0
    shuffled = Features(train.features, train.labels[torch.randperm(len(train.labels))])
    assert linear_accuracy(shuffled, test) < 0.8


def test_few_shot_subset_takes_exactly_shots_per_class():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 4)
    idx = few_shot_subset(labels, 3, np.random.default_rng(0))
    assert sorted(np.bincount(labels[idx].numpy()).tolist()) == [3, 3, 3]
    assert len(set(idx.tolist())) == 9
    with pytest.raises(ValueError, match="class 1 has 3 training images, fewer than few_shot=4"):
        few_shot_subset(labels, 4, np.random.default_rng(0))


def test_effective_rank_tells_a_flat_spectrum_from_a_collapsed_one():
    torch.manual_seed(0)
    basis = torch.eye(8)
    spread = torch.cat([basis, -basis])  # 16 rows on 8 orthogonal axes, centred: a flat spectrum
    assert effective_rank(spread) == pytest.approx(8.0, rel=1e-4)
    line = torch.randn(32, 1) @ torch.randn(1, 8)  # every row on one line (both signs): rank 1
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-3)
    # A few dominant directions plus noise sits in between, and the value does not depend on row scale.
    few = torch.randn(64, 3) @ torch.randn(3, 32) + 0.05 * torch.randn(64, 32)
    assert 2.0 < effective_rank(few) < 6.0
    assert effective_rank(few * 10.0) == pytest.approx(effective_rank(few), rel=1e-4)
    with pytest.raises(ValueError, match=r"\[n, d\] with n, d >= 2"):
        effective_rank(torch.randn(5))
