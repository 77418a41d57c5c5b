from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kardlite.errors import ArtifactError, InputError
from kardlite.kb import KBConfig, KnowledgeBase, Passage
from kardlite.kb.config import BM25Config


def test_build_bm25_only_layout_manifest_and_reading(tmp_path: Path, facts: list[Passage],
                                                    bm25_config: KBConfig) -> None:
    kb = KnowledgeBase.build(facts, tmp_path / "kb", config=bm25_config, progress=False)
    assert len(kb) == len(facts) and kb.path == tmp_path / "kb" and not kb.has_dense
    m = kb.manifest
    assert m["schema_version"] == 1 and m["counts"] == {"passages": len(facts)} and m["retrievers"] == ["bm25"]
    assert m["config"]["bm25"] == {"k1": 0.9, "b": 0.4, "stemmer": "english", "stopwords": "en"}
    assert m["config"]["dense"] is None and m["kardlite_version"] and m["created"]
    assert set(m["files"]) >= {"passages.sqlite", "bm25/params.index.json", "bm25/data.csc.index.npy"}
    # Storage is SQLite plus bm25s's own .npy/.json: nothing pickled.
    for rel in m["files"]:
        assert rel == "passages.sqlite" or rel.endswith((".npy", ".json"))
        if rel.endswith(".npy"):
            np.load(tmp_path / "kb" / rel, allow_pickle=False)
    assert (tmp_path / "kb" / "passages.sqlite").read_bytes()[:16] == b"SQLite format 3\x00"
    # Reading back: iteration order, get() in the order asked, unknown ids named.
    assert [p.id for p in kb] == [p.id for p in facts]
    got = kb.get(["owl", "bee"])
    assert [p.id for p in got] == ["owl", "bee"] and got[1].text == facts[0].text
    with pytest.raises(InputError, match="'nope'"):
        kb.get(["bee", "nope"])


def test_bm25_search_and_free_text_scores_agree(tmp_path: Path, facts: list[Passage], bm25_config: KBConfig) -> None:
    kb = KnowledgeBase.build(facts, tmp_path / "kb", config=bm25_config, progress=False)
    hits = kb.search("Which metal conducts electricity in wires?", k=3, retriever="bm25")
    assert hits[0]["id"] == "copper" and hits[0]["rank"] == 1
    assert set(hits[0]) == {"id", "title", "text", "score", "rank", "scores"}
    assert hits[0]["scores"] == {"bm25": hits[0]["score"]}
    # Only passages that share a word are returned, best first.
    assert all(h["score"] > 0 for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    # A rationale-like free text: bm25_scores must reproduce exactly what search reports, for any passage.
    rationale = "Bees carry pollen between flowers, and flowers need pollinating animals. Pollen pollen."
    ranked = kb.search(rationale, k=len(facts), retriever="bm25")
    got = kb.bm25_scores(rationale, [h["id"] for h in ranked] + ["moon"])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got[:-1], np.array([h["score"] for h in ranked], dtype=np.float32))
    assert got[-1] == 0.0  # shares no word: score 0 (and not returned by search)
    assert "moon" not in [h["id"] for h in ranked]
    # Stemming: "pollinating"/"pollinate" and "flowers"/"flower" match.
    assert kb.bm25_scores("pollinate flower", ["bee"])[0] > 0
    # A passage of stop words only is stored and counted, and never matches.
    stop = KnowledgeBase.build([*facts, Passage("stop", "", "the of and")], tmp_path / "stop", config=bm25_config,
                               progress=False)
    assert len(stop) == len(facts) + 1 and stop.bm25_scores("the magnet", ["stop", "magnet"])[0] == 0.0
    assert stop.search("magnet", retriever="bm25")[0]["id"] == "magnet"
    # A query made only of stop words or unknown words scores zero everywhere and finds nothing.
    assert kb.search("the of and zzzqqq", retriever="bm25") == []
    np.testing.assert_array_equal(kb.bm25_scores("the zzzqqq", ["bee", "owl"]), [0.0, 0.0])


def test_bm25_parameters_change_scores(tmp_path: Path, facts: list[Passage]) -> None:
    a = KnowledgeBase.build(facts, tmp_path / "a", config=KBConfig(dense=None), progress=False)
    b = KnowledgeBase.build(facts, tmp_path / "b", config=KBConfig(bm25=BM25Config(k1=1.5, b=0.9), dense=None),
                            progress=False)
    q = "magnet iron steel"
    assert not np.allclose(a.bm25_scores(q, ["magnet"]), b.bm25_scores(q, ["magnet"]))
    assert KnowledgeBase.load(tmp_path / "b").config.bm25.k1 == 1.5


def test_search_many_matches_search(tmp_path: Path, facts: list[Passage], bm25_config: KBConfig) -> None:
    kb = KnowledgeBase.build(facts, tmp_path / "kb", config=bm25_config, progress=False)
    queries = ["ice water freezing", "night hunting birds", "sun energy plants"]
    assert kb.search_many(queries, k=2, retriever="bm25") == [kb.search(q, k=2, retriever="bm25") for q in queries]
    assert kb.search_many([], retriever="bm25") == []


def test_bad_search_arguments(tmp_path: Path, facts: list[Passage], bm25_config: KBConfig) -> None:
    kb = KnowledgeBase.build(facts, tmp_path / "kb", config=bm25_config, progress=False)
    with pytest.raises(InputError, match="unknown retriever"):
        kb.search("x", retriever="sparse")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="positive integer"):
        kb.search("x", k=0, retriever="bm25")
    with pytest.raises(InputError, match="without a dense index"):
        kb.search("x")  # hybrid is the default; this KB has no dense index
    with pytest.raises(InputError, match="one string"):
        kb.search_many("a query", retriever="bm25")  # type: ignore[arg-type]


def test_rebuild_over_existing_kb(tmp_path: Path, facts: list[Passage], bm25_config: KBConfig) -> None:
    out = tmp_path / "kb"
    KnowledgeBase.build(facts, out, config=bm25_config, progress=False)
    kb = KnowledgeBase.build(facts[:3], out, config=bm25_config, progress=False)
    assert len(kb) == 3 and len(KnowledgeBase.load(out)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb"]  # no temp or old folders left behind


def test_crash_mid_build_keeps_previous_kb(tmp_path: Path, facts: list[Passage], bm25_config: KBConfig) -> None:
    out = tmp_path / "kb"
    KnowledgeBase.build(facts, out, config=bm25_config, progress=False)
    before = (out / "manifest.json").read_bytes()

    def crashing() -> Iterator[Passage]:
        yield from facts[:4]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        KnowledgeBase.build(crashing(), out, config=bm25_config, progress=False)
    assert (out / "manifest.json").read_bytes() == before
    kb = KnowledgeBase.load(out)  # verifies every checksum
    assert len(kb) == len(facts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb"]


def test_bad_corpora(tmp_path: Path, facts: list[Passage], bm25_config: KBConfig) -> None:
    with pytest.raises(InputError, match="empty corpus"):
        KnowledgeBase.build([], tmp_path / "kb", config=bm25_config, progress=False)
    with pytest.raises(InputError, match="duplicate passage id 'bee'"):
        KnowledgeBase.build([*facts, facts[0]], tmp_path / "kb", config=bm25_config, progress=False)
    with pytest.raises(InputError, match="empty text"):
        KnowledgeBase.build([Passage("x", "", "  ")], tmp_path / "kb", config=bm25_config, progress=False)
    with pytest.raises(InputError, match="not JSON-serialisable"):
        KnowledgeBase.build([Passage("x", "", "t", meta={"a": object()})], tmp_path / "kb", config=bm25_config,
                            progress=False)
    assert not (tmp_path / "kb").exists()
    # Never replace a folder that is not a knowledge base (it could be the user's corpus).
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("mine")
    with pytest.raises(InputError, match="not a knowledge base"):
        KnowledgeBase.build(facts, docs, config=bm25_config, progress=False)
    assert (docs / "notes.md").read_text() == "mine"
    with pytest.raises(InputError, match=r"bm25\.b"):
        KnowledgeBase.build(facts, tmp_path / "kb", config=KBConfig(bm25=BM25Config(b=2.0), dense=None))


def test_load_verifies_checksums(tmp_path: Path, facts: list[Passage], bm25_config: KBConfig) -> None:
    out = tmp_path / "kb"
    KnowledgeBase.build(facts, out, config=bm25_config, progress=False)
    target = out / "bm25" / "data.csc.index.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte flipped
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"data\.csc\.index\.npy: sha256 differs"):
        KnowledgeBase.load(out)
    KnowledgeBase.load(out, verify=False)  # still opens when asked not to verify
    target.unlink()
    with pytest.raises(ArtifactError, match=r"data\.csc\.index\.npy: missing"):
        KnowledgeBase.load(out)


def test_load_rejects_non_kbs(tmp_path: Path, facts: list[Passage], bm25_config: KBConfig) -> None:
    with pytest.raises(ArtifactError, match="not a folder"):
        KnowledgeBase.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"manifest\.json is missing"):
        KnowledgeBase.load(tmp_path / "empty")
    out = tmp_path / "kb"
    KnowledgeBase.build(facts, out, config=bm25_config, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="schema version 99"):
        KnowledgeBase.load(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable"):
        KnowledgeBase.load(out)


# --- dense and hybrid (reuse the session's exported encoder) ------------------------------------------------


@pytest.mark.slow
def test_dense_finds_a_paraphrase_and_hybrid_fuses(tmp_path: Path, facts: list[Passage],
                                                    dense_config: KBConfig) -> None:
    kb = KnowledgeBase.build(facts, tmp_path / "kb", config=dense_config, progress=False)
    assert kb.has_dense and kb.manifest["models"]["encoder"]["quantized"] is True
    assert (tmp_path / "kb" / "encoder" / "model_quantized.onnx").is_file()
    assert (tmp_path / "kb" / "encoder" / "tokenizer.json").is_file() and (tmp_path / "kb" / "hnsw.bin").is_file()
    # No word in common with the owl fact (after stop words and stemming), so BM25 cannot find it.
    query = "Which nocturnal birds of prey catch rodents in the dark?"
    assert kb.bm25_scores(query, ["owl"])[0] == 0.0
    dense = kb.search(query, k=3, retriever="dense")
    assert dense[0]["id"] == "owl" and 0 < dense[0]["score"] <= 1.0001
    assert dense[0]["scores"] == {"dense": dense[0]["score"]}
    # dense_scores gives any text's cosine with any passages: the dense search's own scores
    np.testing.assert_allclose(kb.dense_scores(query, [h["id"] for h in dense]), [h["score"] for h in dense],
                               atol=1e-4)
    with pytest.raises(InputError, match="no dense index"):
        KnowledgeBase.build(facts, tmp_path / "bm25", config=KBConfig(dense=None), progress=False).dense_scores(
            query, ["owl"])

    hybrid = kb.search(query, k=len(facts), retriever="hybrid")
    assert hybrid[0]["id"] == "owl"
    assert [h["rank"] for h in hybrid] == list(range(1, len(facts) + 1))
    for h in hybrid:
        assert set(h["scores"]) == {"bm25", "dense", "rrf"} and h["score"] == h["scores"]["rrf"]
    # Scores reported by hybrid equal each retriever's own scores.
    by_id = {h["id"]: h for h in hybrid}
    for d in dense:
        assert by_id[d["id"]]["scores"]["dense"] == pytest.approx(d["score"], abs=1e-5)
    bm = kb.search("pollen flowers", k=len(facts), retriever="bm25")
    hyb = {h["id"]: h for h in kb.search("pollen flowers", k=len(facts), retriever="hybrid")}
    for h in bm:
        assert hyb[h["id"]]["scores"]["bm25"] == h["score"]
    # RRF: a passage first in both lists wins.
    assert kb.search("pollen flowers bees", k=1)[0]["id"] == "bee"

    # search_many embeds in batches. int8 activations are quantised per batch, so dense scores move slightly
    # (~1e-2) with the batch; the best hit and the BM25 scores do not.
    queries = [query, "frozen water", "electric cable metal"]
    many = kb.search_many(queries, k=3, retriever="hybrid")
    for q, hits in zip(queries, many, strict=True):
        single = kb.search(q, k=3, retriever="hybrid")
        assert hits[0]["id"] == single[0]["id"]
        assert hits[0]["scores"]["bm25"] == single[0]["scores"]["bm25"]
        assert hits[0]["scores"]["dense"] == pytest.approx(single[0]["scores"]["dense"], abs=0.03)
    assert [h["id"] for h in many[1]][:1] == ["ice"] and [h["id"] for h in many[2]][:1] == ["copper"]


@pytest.mark.slow
def test_dense_kb_load_verifies_and_queries_without_torch(tmp_path: Path, facts: list[Passage],
                                                         dense_config: KBConfig) -> None:
    out = tmp_path / "kb"
    KnowledgeBase.build(facts, out, config=dense_config, progress=False)
    script = (
        "import sys; from kardlite.kb import KnowledgeBase;"
        f"kb = KnowledgeBase.load({str(out)!r});"
        "hits = kb.search('Which nocturnal birds catch rodents?', k=2, retriever='hybrid');"
        "assert hits[0]['id'] == 'owl', hits;"
        "bad = [m for m in ('torch', 'transformers', 'optimum') if m in sys.modules];"
        "assert not bad, bad; print('ok')"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"

    onnx = out / "encoder" / "model_quantized.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"encoder/model_quantized\.onnx: sha256 differs"):
        KnowledgeBase.load(out)


def test_config_round_trip_and_errors() -> None:
    config = KBConfig(bm25=BM25Config(k1=1.1, stopwords=["foo"]), dense=None)
    assert KBConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InputError, match="unknown setting") as err:
        KBConfig.from_dict({"bm25": {"k3": 1}})
    assert err.value.field == "bm25.k3"
    with pytest.raises(InputError, match="unknown knowledge-base setting"):
        KBConfig.from_dict({"sparse": {}})


def test_unknown_stemmer_is_an_input_error(tmp_path: Path, facts: list[Passage]) -> None:
    with pytest.raises(InputError, match="no stemmer 'klingon'"):
        KnowledgeBase.build(facts, tmp_path / "kb", config=KBConfig(bm25=BM25Config(stemmer="klingon"), dense=None),
                            progress=False)
    assert not (tmp_path / "kb").exists()
