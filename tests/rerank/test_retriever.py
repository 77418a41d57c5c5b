from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kardlite.errors import InputError
from kardlite.kb.passage import Passage
from kardlite.rerank.model import Reranker
from kardlite.rerank.retriever import RerankRetriever

pytestmark = pytest.mark.slow


def test_retriever_pool_rerank_keep(toy_kb, toy_data, toy_reranker_dir: Path) -> None:
    items, _ = toy_data
    rr = RerankRetriever(toy_kb, Reranker.load(toy_reranker_dir), first_stage="bm25", pool=12)
    item = items[0]
    hits = rr(item, n_docs=3)
    pool_ids = {h["id"] for h in toy_kb.search(item.linearize(), 12, "bm25")}
    assert len(hits) == 3 and {h["id"] for h in hits} <= pool_ids
    assert all("rerank" in h["scores"] and "bm25" in h["scores"] for h in hits)
    assert rr(item.linearize(), 3) == hits  # a QAItem is linearised exactly as at training time
    assert rr.search_many([item, items[1]], 3)[0] == hits
    passages = rr.passages(item, 2)
    assert all(isinstance(p, Passage) for p in passages) and [p.id for p in passages] == [h["id"] for h in hits[:2]]


def test_retriever_bad_inputs(toy_kb, toy_reranker_dir: Path) -> None:
    rr = Reranker.load(toy_reranker_dir)
    with pytest.raises(InputError):
        RerankRetriever(toy_kb, rr, first_stage="sparse")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        RerankRetriever(toy_kb, rr, pool=0)
    ret = RerankRetriever(toy_kb, rr, first_stage="bm25")
    with pytest.raises(InputError):
        ret("where?", 0)
    with pytest.raises(InputError):
        ret("  ", 1)
    with pytest.raises(InputError):  # this toy KB has no dense index
        RerankRetriever(toy_kb, rr, first_stage="hybrid")("where does a camel live?", 1)


def test_cli_search_and_export(toy_kb, toy_reranker_dir: Path, tmp_path: Path) -> None:
    from kardlite.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["rerank", "search", "Where would you find a camel?", "--kb", str(toy_kb.path),
                              "--reranker", str(toy_reranker_dir), "-k", "2", "--first-stage", "bm25"])
    assert res.exit_code == 0, res.output
    assert len([x for x in res.output.splitlines() if x.strip()]) == 2
    res = runner.invoke(app, ["train", "reranker", "--kb", str(toy_kb.path), "--out", str(tmp_path / "r"),
                              "--tasks", "q.jsonl"])
    assert res.exit_code != 0
