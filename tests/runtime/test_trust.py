"""Trust signals through the runtime on real bundles: confidence and abstention, the calibrator stored in a bundle,
the audit log under concurrent asks, and knowledge-base updates of a bundle."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kardlite._io import sha256_file
from kardlite.errors import ArtifactError, InputError
from kardlite.kb import Passage
from kardlite.runtime.confidence import FEATURES, Calibrator, install_calibrator, raw_confidence

pytestmark = pytest.mark.slow

Q = ("What does digoxin inhibit in cardiac myocytes?", ["sodium-potassium ATPase", "carbonic anhydrase",
                                                       "beta-1 receptors", "calcium channels"])


@pytest.fixture(scope="module")
def pipe(tiny_bundle: Path) -> Iterator:
    from kardlite.runtime import load

    with load(tiny_bundle, threads=1) as p:
        yield p


def test_every_answer_carries_confidence_and_its_signals(pipe) -> None:
    ans = pipe.ask(*Q, max_new_tokens=8)
    assert 0.0 <= ans["confidence"] <= 1.0 and ans["confidence"] == ans["confidence_raw"]  # no calibrator
    assert set(ans["signals"]) == set(FEATURES) and ans["abstention"] is None
    assert ans["signals"]["top_score"] == pytest.approx(ans["passages"][0]["rerank_score"], abs=1e-5)
    assert ans["confidence"] == raw_confidence(ans["signals"], valid=ans["valid"], samples=1)
    free = pipe.ask("What can prolonged nitroprusside infusion cause?", max_new_tokens=8)
    assert set(free["signals"]) == {"top_score", "score_margin", "claim_support", "option_support"}
    assert 0.0 <= free["confidence"] <= 1.0


def _judged(pipe, text: str, abstain_below: float | None = None) -> dict:
    """What the pipeline makes of a generated ``text`` for Q: parsed, then judged (signals, confidence, abstention)
    over the passages a real ask of Q shows. A tiny random student never writes an answer line of its own, so the
    valid case is built from a written text; both cases then go through the pipeline's own steps."""
    shown = pipe.ask(*Q, max_new_tokens=1)["passages"]
    item, opts = pipe._validate_question(*Q)
    answer = pipe._answer(item, opts, [text], 1)
    answer.update(passages=shown)
    pipe._judge(answer, [], 1, abstain_below)
    return answer


VALID = "Digoxin binds the sodium pump of the myocyte.\nAnswer: A"
INVALID = "Digoxin binds the sodium pump of the myocyte."


def test_valid_and_invalid_answers_get_their_confidence(pipe) -> None:
    good = _judged(pipe, VALID)
    assert good["valid"] and good["letter"] == "A" and good["answer"] == Q[1][0]
    assert good["signals"]["letter_prob"] == 0.5 and good["signals"]["vote_share"] == 1.0  # no letter distribution
    assert good["confidence"] == good["confidence_raw"] == 0.5 and good["abstention"] is None
    bad = _judged(pipe, INVALID)
    assert not bad["valid"] and bad["letter"] is None
    assert bad["confidence"] == bad["confidence_raw"] == 0.0 and bad["signals"]["letter_prob"] == 0.0


def test_abstain_below_withholds_the_letter_with_a_reason(pipe) -> None:
    kept = _judged(pipe, VALID, abstain_below=0.0)
    assert kept["abstention"] is None and kept["letter"] == "A"
    low = _judged(pipe, VALID, abstain_below=1.0)
    assert low["letter"] is None and low["index"] is None and low["answer"] is None
    assert low["abstention"] == {"reason": "confidence 0.50 is below the threshold 1.00", "threshold": 1.0,
                                 "withheld": "A"}
    for threshold in (0.0, 1.0):  # an invalid answer is withheld at any threshold, for that reason
        none = _judged(pipe, INVALID, abstain_below=threshold)
        assert none["abstention"] == {"reason": "the student wrote no valid answer", "threshold": threshold,
                                      "withheld": None}
    # end to end through ask: the same question with and without a threshold of 1
    plain = pipe.ask(*Q, max_new_tokens=8)
    ans = pipe.ask(*Q, max_new_tokens=8, abstain_below=1.0)
    assert ans["confidence"] == plain["confidence"] < 1.0
    assert ans["abstention"] is not None and ans["abstention"]["threshold"] == 1.0
    assert ans["letter"] is None and ans["index"] is None and ans["answer"] is None
    assert ans["abstention"]["withheld"] == plain["letter"]
    for bad in (-0.1, 1.5, "0.5", True):
        with pytest.raises(InputError, match="abstain_below must be a number between 0 and 1") as info:
            pipe.ask(*Q, abstain_below=bad)
        assert info.value.field == "abstain_below"


def test_calibrator_in_the_bundle_is_verified_and_used(tiny_bundle: Path, tmp_path: Path) -> None:
    from kardlite.export.bundle import verify_bundle
    from kardlite.runtime import load

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    rows = [{f: 0.1 * ((i * 7 + j) % 10) for j, f in enumerate(FEATURES)} for i in range(20)]
    cal = Calibrator.fit(rows, [r["letter_prob"] > 0.4 for r in rows], note={"split": "synthetic"})
    install_calibrator(bundle, cal)
    verify_bundle(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["calibration"] == "calibration.json" and "calibration.json" in manifest["files"]
    with load(bundle, threads=1) as p:
        assert p.calibrator is not None
        good = _judged(p, VALID)
        assert good["confidence"] == pytest.approx(cal.predict(good["signals"]), abs=1e-6)
        assert good["confidence_raw"] == 0.5 and good["confidence"] != 0.5  # the calibrator, not the raw value
        bad = _judged(p, INVALID)
        assert bad["confidence"] == 0.0  # an invalid answer is not calibrated
    # the calibrator is a listed file like any other: altering it is caught at load
    data = json.loads((bundle / "calibration.json").read_text())
    data["bias"] += 1.0
    (bundle / "calibration.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"calibration\.json"):
        load(bundle, threads=1)


def test_audit_log_80_concurrent_asks_make_80_lines(tiny_bundle: Path, tmp_path: Path) -> None:
    from kardlite.runtime import load

    log = tmp_path / "audit.jsonl"
    log.write_bytes(b'{"earlier": 1}\n{"torn": "by a kil')  # a previous process died mid-line
    answers: list[dict] = []
    lock = threading.Lock()
    with load(tiny_bundle, threads=1, audit_log=log) as p:
        def work(t: int) -> None:
            for i in range(10):
                a = p.ask(f"Question {t}-{i}: what does digoxin inhibit?", Q[1][:2 + (i % 3)], max_new_tokens=3)
                with lock:
                    answers.append(a)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    lines = log.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"earlier": 1}
    rows = [json.loads(line) for line in lines[1:]]
    assert len(rows) == 80
    digest = sha256_file(tiny_bundle / "manifest.json")
    by_question = {a["question"]: a for a in answers}
    assert sorted(by_question) == sorted(r["question"] for r in rows)
    for r in rows:
        a = by_question[r["question"]]
        assert r["manifest_sha256"] == digest and r["time"].endswith("+00:00")
        assert r["options"] == a["options"] and r["rationale"] == a["rationale"] and r["letter"] == a["letter"]
        assert [x["id"] for x in r["passages"]] == [x["id"] for x in a["passages"]]
        assert [x["rerank_score"] for x in r["passages"]] == [x["rerank_score"] for x in a["passages"]]
        assert r["decoding"]["max_new_tokens"] == 3 and r["decoding"]["temperature"] == 0.0
        assert r["confidence"] == a["confidence"] and r["abstention"] is None


def test_cli_ask_abstains_and_audits(tiny_bundle: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kardlite.cli import app

    log = tmp_path / "audit.jsonl"
    result = CliRunner().invoke(app, ["ask", str(tiny_bundle), Q[0], "-o", Q[1][0], "-o", Q[1][1],
                                      "--max-new-tokens", "6", "--abstain-below", "1.0", "--audit-log", str(log)])
    assert result.exit_code == 0, result.output
    assert "Abstained: " in result.stdout and "Confidence: " in result.stdout
    row = json.loads(log.read_text())
    assert row["abstention"]["threshold"] == 1.0 and row["decoding"]["abstain_below"] == 1.0


def test_kb_add_to_a_late_interaction_bundle_extends_its_passage_cache(tiny_bundle: Path, tmp_path: Path) -> None:
    """A bundle with a late-interaction reranker: ``kb add`` embeds the new passage, appends it to the cache file
    (the old entries copied), re-seals the manifest; the runtime then loads every passage's matrix from the file."""
    from kardlite.export.bundle import export_bundle, verify_bundle
    from kardlite.kb.update import add_passages, remove_passages
    from kardlite.rerank.model import Reranker
    from kardlite.runtime import load

    li = Reranker.from_pretrained(kind="late-interaction", num_layers=2, max_length=64, seed=0)
    li.save(tmp_path / "li-reranker")
    out = export_bundle(tiny_bundle / "student.gguf", tiny_bundle / "kb", tmp_path, name="li",
                        reranker_dir=tmp_path / "li-reranker", pool=8, n_docs=2, decoding={"max_new_tokens": 4})
    gguf_inode = (out / "student.gguf").stat().st_ino
    new = Passage("zz-new", "Ouabain", "Ouabain is a cardiac glycoside that blocks the sodium pump like digoxin")
    report = add_passages(out, [new])
    assert report["added"] == 1 and report["encoded"] == 1
    verify_bundle(out)
    assert (out / "student.gguf").stat().st_ino == gguf_inode  # unchanged files are hard links, not copies
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kb_updates"][-1]["added"] == 1
    with load(out, threads=1) as p:
        info = p.reranker.cache_info()
        assert info["size"] == len(p.kb) and info["encoded_passages"] == 0  # the new one came from the file too
        hits = p.kb.search("Which cardiac glycoside blocks the sodium pump like digoxin?", k=3, retriever="bm25")
        assert hits[0]["id"] == "zz-new"
        ans = p.ask("Which cardiac glycoside blocks the sodium pump like digoxin?", ["ouabain", "heparin"])
        assert "zz-new" in [x["id"] for x in ans["candidates"]]  # retrieved for the reranker (untrained here)
    remove_passages(out, ["zz-new"])
    verify_bundle(out)
    with load(out, threads=1) as p:
        assert "zz-new" not in {x.id for x in p.kb}
        assert p.reranker.cache_info()["size"] == len(p.kb) and p.reranker.cache_info()["encoded_passages"] == 0
