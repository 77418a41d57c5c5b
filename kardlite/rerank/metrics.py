"""Candidate-level metrics of a reranker on labelled queries (docs/method.md §6): best-candidate top-1 / top-3,
NDCG with the labels as gains, and the KL the training objective minimises."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from kardlite.rerank.base import Reranker
from kardlite.rerank.data import RerankQuery


def evaluate_queries(reranker: Reranker, queries: Sequence[RerankQuery], *, batch_size: int = 64,
                     tau1: float = 2.0, tau2: float = 1.0, progress: bool = False) -> dict[str, float]:
    """Candidate-level metrics of a reranker on labelled queries (docs/method.md §6 metric).

    Args:
        reranker: any backend.
        queries: labelled queries (normally the question-disjoint dev split).
        batch_size: pairs per forward pass.
        tau1: label temperature for the reported KL.
        tau2: logit temperature for the reported KL.
        progress: show a progress bar.

    Returns:
        ``top1``/``top3``: share of queries whose rationale-best candidate (highest label; ties all count) the
        reranker ranks first / in its top 3; ``ndcg``: NDCG over the candidates with the labels as gains;
        ``kl``: mean KL(softmax(s/τ1) ‖ softmax(f/τ2)); ``n``: number of queries.
    """
    if not queries:
        return {"n": 0, "top1": float("nan"), "top3": float("nan"), "ndcg": float("nan"), "kl": float("nan")}
    pairs = [(q.query, t) for q in queries for t in q.texts]
    flat = reranker.score_pairs(pairs, batch_size=batch_size) if not progress else _score_progress(
        reranker, pairs, batch_size)
    pos, top1, top3, ndcgs, kls = 0, 0, 0, [], []
    for q in queries:
        f = flat[pos:pos + len(q.ids)].astype(np.float64)
        pos += len(q.ids)
        s = np.asarray(q.labels, dtype=np.float64)
        top1 += candidate_hit(f, s, 1)
        top3 += candidate_hit(f, s, 3)
        ndcgs.append(ndcg(f, s))
        p = _softmax(s / tau1)
        kls.append(float(np.sum(p * (np.log(np.maximum(p, 1e-300)) - _log_softmax(f / tau2)))))
    n = len(queries)
    return {"n": n, "top1": top1 / n, "top3": top3 / n, "ndcg": float(np.mean(ndcgs)), "kl": float(np.mean(kls))}


def candidate_hit(scores: np.ndarray, labels: np.ndarray, k: int) -> bool:
    """True when a best-labelled candidate (ties count) is among the k highest scores (stable order)."""
    best = set(np.flatnonzero(labels == labels.max()).tolist())
    order = np.argsort(-scores, kind="stable")[:k]
    return bool(best & set(order.tolist()))


def ndcg(scores: np.ndarray, gains: np.ndarray, k: int | None = None) -> float:
    """NDCG@k of the ranking by ``scores`` with non-negative ``gains`` (1.0 when all gains are 0)."""
    g = np.maximum(np.asarray(gains, dtype=np.float64), 0)
    k = len(g) if k is None else min(k, len(g))
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = float(np.sum(np.sort(g)[::-1][:k] * disc))
    if ideal == 0:
        return 1.0
    got = float(np.sum(g[np.argsort(-np.asarray(scores), kind="stable")[:k]] * disc))
    return got / ideal


def _softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(x))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x)
    return x - m - np.log(np.sum(np.exp(x - m)))


def _score_progress(reranker: Reranker, pairs: list[tuple[str, str]], batch_size: int) -> np.ndarray:
    out = np.empty(len(pairs), dtype=np.float32)
    for start in tqdm(range(0, len(pairs), batch_size), desc="scoring", unit="batch"):
        out[start:start + batch_size] = reranker.score_pairs(pairs[start:start + batch_size], batch_size=batch_size)
    return out
