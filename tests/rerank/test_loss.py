from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from kardlite.errors import InputError
from kardlite.rerank.train import (
    RerankTrainConfig,
    candidate_hit,
    lr_factor,
    ndcg,
    rerank_loss,
    temperature_at,
)


def _kl_by_hand(s: list[float], f: list[float], tau1: float, tau2: float) -> float:
    p = [math.exp(x / tau1) for x in s]
    p = [x / sum(p) for x in p]
    q = [math.exp(x / tau2) for x in f]
    q = [x / sum(q) for x in q]
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def test_kl_matches_hand_computation() -> None:
    s, f = [10.0, 4.0, 0.0], [1.0, 2.0, -1.0]
    got = rerank_loss(torch.tensor([f]), torch.tensor([s]), torch.ones(1, 3, dtype=torch.bool), tau1=2.0, tau2=1.0)
    assert got.item() == pytest.approx(_kl_by_hand(s, f, 2.0, 1.0), rel=1e-5)


def test_kl_is_zero_when_scores_imitate_labels() -> None:
    s = torch.tensor([[12.0, 6.0, 3.0, 0.0]])
    loss = rerank_loss(s / 4.0, s, torch.ones_like(s, dtype=torch.bool), tau1=4.0, tau2=1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_masked_candidates_are_ignored() -> None:
    s, f = [10.0, 4.0], [1.0, 2.0]
    scores = torch.tensor([[1.0, 2.0, 99.0]])
    labels = torch.tensor([[10.0, 4.0, 50.0]])
    mask = torch.tensor([[True, True, False]])
    got = rerank_loss(scores, labels, mask, tau1=3.0, tau2=1.0)
    assert got.item() == pytest.approx(_kl_by_hand(s, f, 3.0, 1.0), rel=1e-5)
    assert torch.isfinite(got)


def test_ce_is_minus_log_prob_of_best_candidate() -> None:
    scores, labels = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[9.0, 3.0, 1.0]])
    got = rerank_loss(scores, labels, torch.ones(1, 3, dtype=torch.bool), objective="ce", tau2=1.0)
    expected = -math.log(math.exp(0.0) / (math.exp(0.0) + math.exp(1.0) + math.exp(2.0)))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kl_gradient_moves_scores_towards_labels() -> None:
    scores = torch.zeros(1, 3, requires_grad=True)
    rerank_loss(scores, torch.tensor([[9.0, 3.0, 0.0]]), torch.ones(1, 3, dtype=torch.bool)).backward()
    assert scores.grad[0, 0] < 0 < scores.grad[0, 2]  # descent raises the best, lowers the worst


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_non_positive_temperatures_are_rejected(bad: float) -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(InputError, match=f"temperatures must be positive, got tau1={bad}, tau2=1"):
        rerank_loss(x, x, torch.ones(1, 2, dtype=torch.bool), tau1=bad)
    with pytest.raises(InputError, match=rf"temperatures must be positive, got tau1=[0-9.]+, tau2={bad}"):
        rerank_loss(x, x, torch.ones(1, 2, dtype=torch.bool), tau2=bad)
    with pytest.raises(InputError, match=f"field 'tau1_end': temperatures must be positive and finite, got {bad}"):
        RerankTrainConfig(tau1_end=bad).validate()


def test_annealing_stays_positive_and_reaches_end() -> None:
    total = 101
    taus = [temperature_at(5.0, 1.0, s, total) for s in range(-3, total + 10)]
    assert min(taus) == pytest.approx(1.0) and max(taus) == pytest.approx(5.0)
    assert all(t > 0 for t in taus)
    assert temperature_at(5.0, 1.0, total - 1, total) == pytest.approx(1.0)
    assert temperature_at(500.0, 100.0, 50, total) == pytest.approx(300.0)
    assert temperature_at(2.0, None, 77, total) == 2.0


def test_lr_schedule_warms_up_then_decays() -> None:
    total = 100
    f = [lr_factor(s, total, 0.05) for s in range(total)]
    assert f[0] == pytest.approx(0.2) and f[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[4:])) and f[-1] > 0


def test_shape_mismatch_and_bad_objective() -> None:
    with pytest.raises(InputError, match=r"shape mismatch: scores \(1, 3\), labels \(1, 2\)"):
        rerank_loss(torch.zeros(1, 3), torch.zeros(1, 2), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="objective must be 'kl' or 'ce', got 'mse'"):
        rerank_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), objective="mse")
    with pytest.raises(InputError, match="field 'objective': objective must be 'kl' or 'ce', got 'mse'"):
        RerankTrainConfig(objective="mse").validate()  # type: ignore[arg-type]


def test_candidate_metrics() -> None:
    labels = np.array([1.0, 9.0, 3.0, 9.0])
    assert candidate_hit(np.array([0.0, 5.0, 1.0, 0.0]), labels, 1)
    assert candidate_hit(np.array([0.0, 0.0, 1.0, 0.5]), labels, 3)
    assert not candidate_hit(np.array([5.0, 0.0, 4.0, 0.0]), labels, 1)
    assert ndcg(np.array([0.0, 3.0, 2.0, 1.0]), np.array([0.0, 3.0, 2.0, 1.0])) == pytest.approx(1.0)
    assert ndcg(np.array([3.0, 0.0, 1.0, 2.0]), np.array([0.0, 3.0, 2.0, 1.0])) < 1.0
