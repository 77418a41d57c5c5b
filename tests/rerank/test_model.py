from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kardlite.errors import ArtifactError, InputError
from kardlite.kb.passage import Passage
from kardlite.rerank.model import CrossEncoderReranker, Reranker
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
    # the saved format: encoder + head as safetensors, no pickles
    files = {f.name for f in (tmp_path / "copy").iterdir()}
    assert {"head.safetensors", "model.safetensors", "config.json", "tokenizer.json", "reranker.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    cfg = json.loads((tmp_path / "copy" / "reranker.json").read_text())
    assert cfg["head"] == "mean_linear" and cfg["format_version"] == 2


def test_folder_without_kind_loads_as_cross_encoder(trained: Reranker, toy_reranker_dir: Path, tmp_path: Path) -> None:
    # folders saved before late interaction existed have no "kind" in reranker.json
    old = tmp_path / "old"
    shutil.copytree(toy_reranker_dir, old)
    cfg = json.loads((old / "reranker.json").read_text())
    assert cfg.pop("kind") == "cross-encoder"
    (old / "reranker.json").write_text(json.dumps(cfg))
    again = Reranker.load(old)
    assert type(again) is CrossEncoderReranker and again.kind == "cross-encoder" and again.warm(["x"]) == 0
    texts = ["the camel lives in the desert", "the frog eats flies for energy"]
    np.testing.assert_allclose(again.score(QUERY, texts), trained.score(QUERY, texts), atol=1e-5)


def test_fresh_head_scores_differ_between_passages() -> None:
    # the reason for mean pooling: a fresh [CLS] head gave the same logit (to 1e-5) for every passage
    fresh = Reranker.from_pretrained(num_layers=3, max_length=64, seed=0)
    s = fresh.score(QUERY, ["the camel lives in the desert", "the frog eats flies for energy", "the bee has wings"])
    assert np.ptp(s) > 1e-3, s


def test_onnx_round_trip_matches_torch(toy_reranker_dir: Path, trained: Reranker, int8_dir: Path, toy_kb,
                                       tmp_path: Path) -> None:
    fp32_dir = export_reranker_onnx(toy_reranker_dir, tmp_path / "fp32", quantize=False)
    texts = [p.contents for p in toy_kb.get([h["id"] for h in toy_kb.search(QUERY, 20, "bm25")])]
    ref = trained.score(QUERY, texts)
    # fp32 ONNX is the same function: same scores, hence the same ranking up to ties within 1e-4
    fp32 = Reranker.load(fp32_dir, backend="onnx").score(QUERY, texts)
    np.testing.assert_allclose(fp32, ref, atol=1e-4)
    # int8 (encoder only; pooling and head in numpy) stays close relative to the score spread and keeps the top
    # of the ranking; bench/rerank.py measures top-5 overlap and NDCG@10 on a real model.
    q = Reranker.load(int8_dir, backend="onnx").score(QUERY, texts)
    assert np.max(np.abs(q - ref)) < 0.25 * np.ptp(ref), (q, ref)
    assert list(np.argsort(-q)[:3]) == list(np.argsort(-ref)[:3]), (q, ref)
    assert {f.name for f in int8_dir.iterdir()} >= {"head.npz", "model_quantized.onnx", "tokenizer.json"}


def test_int8_export_leaves_attention_products_and_feed_forward_fp32(int8_dir: Path, toy_reranker_dir: Path,
                                                                     tmp_path: Path) -> None:
    import onnx

    def ops(folder: Path) -> tuple[int, list[str]]:
        graph = onnx.load(str(folder / "model_quantized.onnx")).graph
        return (sum(n.op_type == "MatMulInteger" for n in graph.node),
                [n.name for n in graph.node if n.op_type == "MatMul"])

    # 3 layers: Q, K, V and the attention output in int8; 2 feed-forward and 2 activation products per layer fp32
    n_int8, fp32 = ops(int8_dir)
    assert n_int8 == 12 and len(fp32) == 12, (n_int8, fp32)
    assert sum("intermediate" in n or ("/output/dense" in n and "attention" not in n) for n in fp32) == 6
    meta = json.loads((int8_dir / "reranker.json").read_text())
    assert meta["onnx"]["quantized"] and "feed-forward kept fp32" in meta["onnx"]["quantization"]
    # --quantize-ffn: the feed-forward matmuls too; attention's activation products stay fp32 either way
    all_dir = export_reranker_onnx(toy_reranker_dir, tmp_path / "all", quantize_ffn=True)
    n_int8, fp32 = ops(all_dir)
    assert n_int8 == 18 and len(fp32) == 6 and all("attention/self/MatMul" in n for n in fp32), fp32
    texts = ["the camel lives in the desert", "the frog eats flies for energy", "the bee has wings"]
    assert np.isfinite(Reranker.load(all_dir, backend="onnx").score(QUERY, texts)).all()


def test_onnx_backend_never_imports_torch(int8_dir: Path) -> None:
    code = ("import sys; from kardlite.rerank import Reranker; "
            f"r = Reranker.load({str(int8_dir)!r}, backend='onnx'); "
            "h = r.rank('where does a camel live?', ['the camel lives in the desert', 'the bee has wings']); "
            "assert h[0]['rank'] == 1; assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_bad_inputs(trained: Reranker, int8_dir: Path, tmp_path: Path, toy_reranker_dir: Path) -> None:
    with pytest.raises(InputError, match="the query is empty"):
        trained.rank("   ", ["x"])
    with pytest.raises(InputError, match="passage 0 is a int"):
        trained.rank(QUERY, [42])  # type: ignore[list-item]
    with pytest.raises(InputError, match="top_k must be >= 0, got -1"):
        trained.rank(QUERY, ["x"], top_k=-1)
    with pytest.raises(InputError, match="batch_size must be >= 1, got 0"):
        trained.score(QUERY, ["x"], batch_size=0)
    with pytest.raises(InputError, match="missing: reranker folder not found"):
        Reranker.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"empty is not a reranker folder: reranker\.json is missing"):
        Reranker.load(tmp_path / "empty")
    with pytest.raises(InputError, match="unknown backend 'tensorflow'"):
        Reranker.load(toy_reranker_dir, backend="tensorflow")  # type: ignore[arg-type]
    with pytest.raises(ArtifactError, match="has no ONNX model"):
        Reranker.load(toy_reranker_dir, backend="onnx")  # a torch folder has no ONNX model
    with pytest.raises(ArtifactError, match=r"has no torch weights \(config\.json\)"):
        Reranker.load(int8_dir, backend="torch")  # an export has no torch weights
    with pytest.raises(ArtifactError, match="empty is not a saved torch reranker"):
        export_reranker_onnx(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(InputError, match=r"num_layers must be in 1\.\.6, got 99"):
        Reranker.from_pretrained(num_layers=99)
    # an export without its head, and an old-format ([CLS] head) folder, are refused with a clear error
    headless = tmp_path / "headless"
    shutil.copytree(int8_dir, headless)
    (headless / "head.npz").unlink()
    with pytest.raises(ArtifactError, match=r"head\.npz"):
        Reranker.load(headless, backend="onnx")
    old = tmp_path / "old"
    old.mkdir()
    (old / "reranker.json").write_text(json.dumps({"format_version": 1, "max_length": 64}))
    with pytest.raises(ArtifactError, match="format-1"):
        Reranker.load(old)
    one = Reranker.load(int8_dir, backend="onnx")
    with pytest.raises(InputError, match="only a torch reranker can be saved"):
        one.save(tmp_path / "nope")
    assert isinstance(Passage(id="a", title="t", text="x").contents, str)
