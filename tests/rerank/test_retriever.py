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
    with pytest.raises(InputError, match="first_stage must be bm25, dense or hybrid, got 'sparse'"):
        RerankRetriever(toy_kb, rr, first_stage="sparse")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="pool must be >= 1, got 0"):
        RerankRetriever(toy_kb, rr, pool=0)
    ret = RerankRetriever(toy_kb, rr, first_stage="bm25")
    with pytest.raises(InputError, match="n_docs must be >= 1, got 0"):
        ret("where?", 0)
    with pytest.raises(InputError, match="the query is empty"):
        ret("  ", 1)
    with pytest.raises(InputError, match="was built without a dense index"):  # this toy KB has none
        RerankRetriever(toy_kb, rr, first_stage="hybrid")("where does a camel live?", 1)


def test_cli_search_and_export(toy_kb, toy_reranker_dir: Path, tmp_path: Path) -> None:
    import json

    from kardlite.cli import app

    runner = CliRunner()
    search = ["rerank", "search", "Where would you find a camel?", "--kb", str(toy_kb.path), "-k", "2",
              "--first-stage", "bm25", "--json"]
    res = runner.invoke(app, [*search, "--reranker", str(toy_reranker_dir)])
    assert res.exit_code == 0, res.output
    torch_hits = [json.loads(x) for x in res.stdout.splitlines() if x.strip()]
    assert [h["rank"] for h in torch_hits] == [1, 2]
    # export (fp32: the same function as torch), then search through the export on the ONNX backend
    out = tmp_path / "onnx"
    res = runner.invoke(app, ["rerank", "export", str(toy_reranker_dir), str(out), "--no-quantize"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    assert {"model.onnx", "head.npz", "tokenizer.json", "reranker.json"} <= {f.name for f in out.iterdir()}
    assert json.loads((out / "reranker.json").read_text())["onnx"]["quantized"] is False
    res = runner.invoke(app, [*search, "--reranker", str(out)])  # auto: the folder has an ONNX model
    assert res.exit_code == 0, res.output
    onnx_hits = [json.loads(x) for x in res.stdout.splitlines() if x.strip()]
    assert [h["id"] for h in onnx_hits] == [h["id"] for h in torch_hits]
    for a, b in zip(onnx_hits, torch_hits, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_cli_train_reranker_names_a_missing_tasks_file(toy_kb, tmp_path: Path) -> None:
    from kardlite.cli import app

    missing = tmp_path / "q.jsonl"
    res = CliRunner().invoke(app, ["train", "reranker", "--kb", str(toy_kb.path), "--out", str(tmp_path / "r"),
                                   "--tasks", str(missing)])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0], res.stderr
    assert "does not exist" in lines[0] and not (tmp_path / "r").exists()
