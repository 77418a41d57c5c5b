from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kardlite.errors import InputError
from kardlite.rerank.data import (
    DENSE_SCALE,
    CandidateConfig,
    build_queries,
    load_queries,
    read_rationales,
    save_queries,
    split_by_item,
)


def test_candidates_and_labels(toy_kb, toy_data) -> None:
    items, rats = toy_data
    queries = build_queries(toy_kb, items, rats, progress=False)
    assert len(queries) == len(rats)
    by_id = {it.id: it for it in items}
    for q, (item_id, index, text) in zip(queries, rats, strict=True):
        assert (q.item_id, q.rationale_index) == (item_id, index)
        assert q.query == by_id[item_id].linearize()
        assert len(q.ids) == 8 and len(set(q.ids)) == 8  # 4 + 4, duplicates removed and refilled
        # a label is exactly the KB's BM25 score of the RATIONALE against that passage
        np.testing.assert_allclose(q.labels, toy_kb.bm25_scores(text, q.ids), rtol=1e-6)
        assert q.texts == [p.contents for p in toy_kb.get(q.ids)]
        r_top = {h["id"] for h in toy_kb.search(text, 32, "bm25")}
        q_top = {h["id"] for h in toy_kb.search(q.query, 32, "bm25")}
        assert set(q.ids) <= r_top | q_top
        assert sum("r" in o for o in q.origin) >= 4 and all(o for o in q.origin)


@pytest.mark.slow
def test_dense_labels(tmp_path: Path, toy_data) -> None:
    from kardlite.kb import KnowledgeBase
    from kardlite.kb.config import HNSWConfig, KBConfig

    from .conftest import toy_passages

    kb = KnowledgeBase.build(toy_passages(), tmp_path / "kb", config=KBConfig(hnsw=HNSWConfig(M=8)), progress=False)
    items, rats = toy_data
    bm25 = build_queries(kb, items, rats[:6], progress=False)
    dense = build_queries(kb, items, rats[:6], CandidateConfig(labels="dense"), progress=False)
    for qb, qd, (_, _, text) in zip(bm25, dense, rats[:6], strict=True):
        assert qd.ids == qb.ids  # the same candidates; only the labels change
        np.testing.assert_allclose(qd.labels, DENSE_SCALE * kb.dense_scores(text, qd.ids), rtol=1e-5)
        assert np.ptp(qd.labels) > 1.0  # on BM25's scale, not cosines in [-1, 1]
    with pytest.raises(InputError) as err:
        build_queries(kb, items, rats, CandidateConfig(labels="tfidf"), progress=False)  # type: ignore[arg-type]
    assert err.value.field == "labels"


def test_sampling_is_seeded_and_order_independent(toy_kb, toy_data) -> None:
    items, rats = toy_data
    a = build_queries(toy_kb, items, rats, progress=False)
    b = build_queries(toy_kb, items, list(reversed(rats)), progress=False)
    c = build_queries(toy_kb, items, rats, CandidateConfig(seed=7), progress=False)
    assert [q.ids for q in a] == [q.ids for q in reversed(b)]
    assert [q.ids for q in a] != [q.ids for q in c]


def test_configurable_counts(toy_kb, toy_data) -> None:
    items, rats = toy_data
    qs = build_queries(toy_kb, items, rats[:3], CandidateConfig(from_rationale=2, from_question=3), progress=False)
    assert all(len(q.ids) == 5 for q in qs)


def test_split_is_question_disjoint_and_seeded(toy_kb, toy_data) -> None:
    items, rats = toy_data
    queries = build_queries(toy_kb, items, rats, progress=False)
    train, dev = split_by_item(queries, 0.25, seed=1)
    assert {q.item_id for q in train}.isdisjoint({q.item_id for q in dev})
    assert len(train) + len(dev) == len(queries) and dev
    assert [q.item_id for q in split_by_item(queries, 0.25, seed=1)[1]] == [q.item_id for q in dev]


def test_queries_round_trip(tmp_path: Path, toy_kb, toy_data) -> None:
    items, rats = toy_data
    queries = build_queries(toy_kb, items, rats[:4], progress=False)
    save_queries(tmp_path / "q.jsonl", queries)
    assert load_queries(tmp_path / "q.jsonl") == queries


def test_bad_inputs(tmp_path: Path, toy_kb, toy_data) -> None:
    items, _rats = toy_data
    with pytest.raises(InputError, match="unknown item"):
        build_queries(toy_kb, items, [("nope", 0, "some text")], progress=False)
    with pytest.raises(InputError, match=f"rationale 0 of item '{items[0].id}' is empty"):
        build_queries(toy_kb, items, [(items[0].id, 0, "   ")], progress=False)
    with pytest.raises(InputError, match="pool must be >= 1, got 0"):
        CandidateConfig(pool=0).validate()
    with pytest.raises(InputError, match=r"dev_fraction must be in \[0, 1\), got 1.5"):
        split_by_item([], 1.5)
    bad = tmp_path / "kept.jsonl"
    bad.write_text(json.dumps({"item_id": "a", "rationale_index": 0, "text": "ok text"}) + "\n"
                   + json.dumps({"item_id": "b", "rationale_index": 1}) + "\n")
    with pytest.raises(InputError) as err:
        read_rationales(bad)
    assert err.value.line == 2 and err.value.field == "text"
    bad.write_text('{"item_id": "a", "rationale_index": 0, "query": "q", "ids": ["x"], "texts": ["t"], '
                   '"labels": [1.0]}\n')
    with pytest.raises(InputError, match="ids, texts and labels must have the same length") as err:
        load_queries(bad)
    assert err.value.line == 1
    bad.write_text("not json\n")
    with pytest.raises(InputError, match="line 1: malformed JSON"):
        load_queries(bad)
