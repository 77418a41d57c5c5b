from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kardlite.errors import ArtifactError, InputError
from kardlite.kb.passage import Passage
from kardlite.rerank.model import Reranker
from kardlite.rerank.onnx import export_reranker_onnx

pytestmark = pytest.mark.slow

QUERY = "Where would you most likely find a camel?\nA. desert\nB. pond\nC. cave\nD. lake"


@pytest.fixture(scope="module")
def trained(toy_reranker_dir: Path) -> Reranker:
    return Reranker.load(toy_reranker_dir)


@pytest.fixture(scope="module")
def int8_dir(toy_reranker_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_reranker_onnx(toy_reranker_dir, tmp_path_factory.mktemp("onnx") / "int8")


def test_rank_shape_and_scores(trained: Reranker, toy_kb) -> None:
    hits = toy_kb.search(QUERY, 10, "bm25")
    ranked = trained.rank(QUERY, hits, top_k=5)
    assert [h["rank"] for h in ranked] == [1, 2, 3, 4, 5]
    scores = [h["score"] for h in ranked]
    assert scores == sorted(scores, reverse=True)
    assert all(h["scores"]["rerank"] == h["score"] and "bm25" in h["scores"] for h in ranked)
    assert {h["id"] for h in ranked} <= {h["id"] for h in hits}
    # Passages and plain strings work too; batching does not change the scores
    passages = toy_kb.get([h["id"] for h in hits])
    a = trained.score(QUERY, [p.contents for p in passages], batch_size=3)
    b = trained.score(QUERY, [p.contents for p in passages], batch_size=64)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert [h["id"] for h in trained.rank(QUERY, passages)][:5] == [h["id"] for h in ranked]
    assert trained.rank(QUERY, []) == []


def test_save_load_round_trip(trained: Reranker, tmp_path: Path) -> None:
    texts = ["the camel lives in the desert", "the frog eats flies for energy"]
    trained.save(tmp_path / "copy")
    again = Reranker.load(tmp_path / "copy")
    np.testing.assert_allclose(again.score(QUERY, texts), trained.score(QUERY, texts), atol=1e-5)
    assert again.meta["num_layers"] == 3 and "transformers" in again.meta["versions"]


def test_onnx_round_trip_matches_torch(toy_reranker_dir: Path, trained: Reranker, int8_dir: Path, toy_kb,
                                       tmp_path: Path) -> None:
    fp32_dir = export_reranker_onnx(toy_reranker_dir, tmp_path / "fp32", quantize=False)
    texts = [p.contents for p in toy_kb.get([h["id"] for h in toy_kb.search(QUERY, 20, "bm25")])]
    ref = trained.score(QUERY, texts)
    # fp32 ONNX is the same function: same scores, hence the same ranking up to ties within 1e-4
    fp32 = Reranker.load(fp32_dir, backend="onnx").score(QUERY, texts)
    np.testing.assert_allclose(fp32, ref, atol=1e-4)
    # int8 stays close in absolute terms. Whether it keeps the ranking depends on the model's score spread;
    # bench/rerank.py measures that (top-5 overlap, NDCG@10) on a real model.
    q = Reranker.load(int8_dir, backend="onnx").score(QUERY, texts)
    assert np.max(np.abs(q - ref)) < 0.05, (q, ref)


def test_onnx_backend_never_imports_torch(int8_dir: Path) -> None:
    code = ("import sys; from kardlite.rerank import Reranker; "
            f"r = Reranker.load({str(int8_dir)!r}, backend='onnx'); "
            "h = r.rank('where does a camel live?', ['the camel lives in the desert', 'the bee has wings']); "
            "assert h[0]['rank'] == 1; assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_bad_inputs(trained: Reranker, int8_dir: Path, tmp_path: Path, toy_reranker_dir: Path) -> None:
    with pytest.raises(InputError):
        trained.rank("   ", ["x"])
    with pytest.raises(InputError):
        trained.rank(QUERY, [42])  # type: ignore[list-item]
    with pytest.raises(InputError):
        trained.rank(QUERY, ["x"], top_k=-1)
    with pytest.raises(InputError):
        trained.score(QUERY, ["x"], batch_size=0)
    with pytest.raises(InputError):
        Reranker.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError):
        Reranker.load(tmp_path / "empty")
    with pytest.raises(InputError):
        Reranker.load(toy_reranker_dir, backend="tensorflow")  # type: ignore[arg-type]
    with pytest.raises(ArtifactError):
        Reranker.load(toy_reranker_dir, backend="onnx")  # a torch folder has no ONNX model
    with pytest.raises(ArtifactError):
        Reranker.load(int8_dir, backend="torch")  # an export has no torch weights
    with pytest.raises(ArtifactError):
        export_reranker_onnx(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(InputError):
        Reranker.from_pretrained(num_layers=99)
    one = Reranker.load(int8_dir, backend="onnx")
    with pytest.raises(InputError):
        one.save(tmp_path / "nope")
    assert isinstance(Passage(id="a", title="t", text="x").contents, str)
