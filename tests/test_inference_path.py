"""One test-time path: a student trained here, exported with the defaults, answers through `kardlite eval --backend
gguf` exactly as its bundle does through `load(bundle).ask`: the same passages, rationale and letter per question."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kardlite.data.records import QAItem
from tests.distill.conftest import ITEMS, write_rationales

pytestmark = pytest.mark.slow

QUESTIONS = [*ITEMS,
             QAItem("q7", "What orbits the earth once a month?", ("the sun", "the moon", "mars"), 1),
             QAItem("q8", "Which animal lives in the desert?", ("camel", "whale", "penguin", "trout", "seal"), 0)]
N_DOCS = 2  # passages per training example: the student records it, and eval and the bundle both show as many


def _train_and_export(root: Path, tiny_student: Path, tiny_bundle: Path, mode: str,
                      answer_format: str = "letter") -> dict[str, Path]:
    """A ``mode`` student trained for two steps on the tiny base, and its bundle exported with every default."""
    from kardlite.distill.examples import build_examples, read_kept_rationales, save_examples
    from kardlite.distill.train import StudentTrainConfig, train_student
    from kardlite.export.bundle import export_bundle
    from kardlite.kb import KnowledgeBase

    kb_dir = tiny_bundle.parent.parent / "kb"  # the tiny bundle's source KB: 40 demo passages, BM25 + dense
    kb = KnowledgeBase.load(kb_dir)
    rows = build_examples(ITEMS, read_kept_rationales(write_rationales(root / "kept.jsonl")), mode, kb=kb, k=N_DOCS)
    kb.close()
    save_examples(rows, root / "examples.jsonl")
    model = train_student(root / "examples.jsonl", root / "run",
                          StudentTrainConfig(student=str(tiny_student), max_steps=2, batch_size=4, lr=1e-3,
                                             max_source_tokens=256, dev_fraction=0.0, save_every=2,
                                             answer_format=answer_format))
    # the tiny bundle's reranker is already ONNX: copied, not exported again
    bundle = export_bundle(model, kb_dir, root / "bundles", reranker_dir=tiny_bundle / "reranker", quant="f16",
                           name="one", verify=False, threads=2)
    tasks = root / "questions.jsonl"
    tasks.write_text("".join(json.dumps({"id": q.id, "question": q.question, "options": list(q.options),
                                         "answer": "ABCDE"[q.label]}) + "\n" for q in QUESTIONS), encoding="utf-8")
    return {"model": model, "bundle": bundle, "tasks": tasks, "root": root}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, tiny_student: Path, tiny_bundle: Path) -> dict[str, Path]:
    """A KARD student trained for two steps on the tiny base, and its bundle exported with every default."""
    return _train_and_export(tmp_path_factory.mktemp("one-path"), tiny_student, tiny_bundle, "kard")


def _eval_with_the_bundle_s_parts(system: dict[str, Path], out: Path) -> dict[str, dict]:
    """`kardlite eval` of the trained student with the bundle's KB, reranker and GGUF, nothing else given: its
    predictions by question id."""
    from kardlite.cli import app

    bundle = system["bundle"]
    res = CliRunner().invoke(app, ["eval", "--model", str(system["model"]), "--tasks", str(system["tasks"]),
                                   "--out", str(out), "--kb", str(bundle / "kb"), "--reranker",
                                   str(bundle / "reranker"), "--backend", "gguf", "--gguf",
                                   str(bundle / "student.gguf")])
    assert res.exit_code == 0, res.output
    return {json.loads(line)["id"]: json.loads(line)
            for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()}


def test_eval_gguf_and_the_bundle_give_the_same_answers(system: dict[str, Path]) -> None:
    from kardlite.cli import app
    from kardlite.runtime import load

    bundle, out = system["bundle"], system["root"] / "eval"
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    student = json.loads((system["model"] / "kardlite_student.json").read_text(encoding="utf-8"))
    # training wrote the settings, the bundle took them (the passage count from the examples, not a constant)
    assert student["inference"]["n_docs"] == N_DOCS and manifest["inference"]["n_docs"] == N_DOCS
    assert manifest["inference"]["max_new_tokens"] == student["inference"]["max_new_tokens"]
    assert manifest["inference"]["first_stage"] == "hybrid" and manifest["retrieval"]["reranker"]

    # eval with no setting given: the student's settings, the bundle's KB, reranker and GGUF
    rows = _eval_with_the_bundle_s_parts(system, out)
    settings = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    for key in ("n_docs", "pool", "first_stage", "max_new_tokens", "max_source_tokens", "no_answer", "mode"):
        assert settings[key] == manifest["inference"][key], key

    with load(bundle) as pipe:
        assert not pipe.answer_only  # a KARD student writes its rationale
        for q in QUESTIONS:
            ans = pipe.ask(q.question, list(q.options))
            row = rows[q.id]
            assert [p["id"] for p in row["passages"]] == [p["id"] for p in ans["passages"]], q.id
            assert len(ans["passages"]) == N_DOCS
            assert row["outputs"] == [ans["text"]], q.id
            assert row["rationale"] == ans["rationale"], q.id
            assert row["prediction"] == ans["letter"] and ans["letter"] is not None, q.id
            assert row["forced"] == ans["forced"], q.id
    # the random student writes no answer line: every letter was forced, the same way on both sides
    assert all(r["forced"] for r in rows.values())

    # The other rule, no_answer="invalid", is honoured by both as well (the bundle re-sealed with it).
    from kardlite.export.bundle import read_manifest, write_manifest

    strict = read_manifest(bundle)
    strict["inference"]["no_answer"] = "invalid"
    write_manifest(bundle, strict)
    res = CliRunner().invoke(app, ["eval", "--model", str(system["model"]), "--tasks", str(system["tasks"]),
                                   "--out", str(out.with_name("eval-strict")), "--limit", "2", "--kb",
                                   str(bundle / "kb"), "--reranker", str(bundle / "reranker"), "--backend", "gguf",
                                   "--gguf", str(bundle / "student.gguf"), "--no-answer", "invalid"])
    assert res.exit_code == 0, res.output
    assert "invalid 1.000, forced 0.000" in res.output
    with load(bundle) as pipe:
        ans = pipe.ask(QUESTIONS[0].question, list(QUESTIONS[0].options))
    assert ans["letter"] is None and not ans["valid"] and not ans["forced"]


def test_an_answer_only_student_is_read_alike_by_eval_and_its_bundle(
        tmp_path_factory: pytest.TempPathFactory, tiny_student: Path, tiny_bundle: Path) -> None:
    """KA-FT trained on option-text answers: the bundle scores each option's text right after the prompt's cue,
    generating nothing, as eval does (it used to generate first and score after the generated text)."""
    from kardlite.answers import option_continuations
    from kardlite.gguf_student import letter_distribution
    from kardlite.runtime import load
    from kardlite.runtime.pipeline import _PassageView

    system = _train_and_export(tmp_path_factory.mktemp("one-path-ka-ft"), tiny_student, tiny_bundle, "ka-ft",
                               answer_format="text")
    bundle, out = system["bundle"], system["root"] / "eval"
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["inference"]["mode"] == "ka-ft" and manifest["inference"]["answer_scoring"] == "text"
    rows = _eval_with_the_bundle_s_parts(system, out)
    with load(bundle) as pipe:
        assert pipe.answer_only  # what the app and `kardlite demo example` read to say why no rationale is shown
        for q in QUESTIONS:
            ans = pipe.ask(q.question, list(q.options))
            row = rows[q.id]
            assert [p["id"] for p in row["passages"]] == [p["id"] for p in ans["passages"]], q.id
            assert row["prediction"] == ans["letter"] and ans["letter"] is not None, q.id
            assert ans["text"] == "" and ans["rationale"] == "" and ans["tokens"]["generated"] == 0, q.id
            assert ans["valid"] and not ans["forced"], q.id
            # its letter_prob is the softmax of the option scores that chose it: the largest share, not "no opinion"
            conts = option_continuations([list(q.options)], "text")[0]
            prompt = pipe._build(q, [_PassageView(p) for p in ans["passages"]])  # type: ignore[arg-type]
            prompt_ids = pipe._tokenize(prompt.segments)
            pipe.student.begin(prompt_ids)
            means = [c.mean for c in pipe.student.continuation_scores(prompt_ids, conts)]
            share = letter_distribution(means)
            assert ans["signals"]["letter_prob"] == pytest.approx(share.max(), abs=1e-6), q.id
            assert ans["signals"]["letter_prob"] == pytest.approx(share[ans["index"]], abs=1e-6), q.id
        # free text (no options) is still generated: there is nothing to score
        free = pipe.ask(QUESTIONS[0].question, max_new_tokens=4)
        assert free["tokens"]["generated"] >= 1


def test_a_rationale_student_read_by_option_text_takes_its_confidence_from_those_scores(
        tmp_path_factory: pytest.TempPathFactory, tiny_student: Path, tiny_bundle: Path) -> None:
    """KARD trained on option-text answers (the OBQA recipe): eval and the bundle agree, and the bundle's letter_prob
    is the softmax of the option scores after the rationale that chose the answer, not the letter-token
    probabilities at 'Answer:', where such a student writes option text."""
    from kardlite.answers import forced_context, option_continuations
    from kardlite.gguf_student import letter_distribution
    from kardlite.runtime import load
    from kardlite.runtime.pipeline import _PassageView

    system = _train_and_export(tmp_path_factory.mktemp("one-path-kard-text"), tiny_student, tiny_bundle, "kard",
                               answer_format="text")
    bundle = system["bundle"]
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["inference"]["mode"] == "kard" and manifest["inference"]["answer_format"] == "text"
    # the recipe's reading: option text after the rationale (re-sealed, as `export bundle --answer-scoring text`)
    from kardlite.export.bundle import read_manifest, write_manifest

    sealed = read_manifest(bundle)
    sealed["inference"]["answer_scoring"] = "text"
    write_manifest(bundle, sealed)
    with load(bundle) as pipe:
        assert not pipe.answer_only
        for q in QUESTIONS:
            ans = pipe.ask(q.question, list(q.options))
            assert ans["tokens"]["generated"] >= 1 and ans["letter"] is not None, q.id
            conts = option_continuations([list(q.options)], "text")[0]
            prompt_ids = pipe._tokenize(pipe._build(q, [_PassageView(p) for p in ans["passages"]]).segments)
            pipe.student.begin(prompt_ids)
            suffix = pipe.student.tokenize_text(forced_context(ans["text"]))
            means = [c.mean for c in pipe.student.continuation_scores(prompt_ids, conts, suffix=suffix)]
            share = letter_distribution(means)
            assert int(share.argmax()) == ans["index"], q.id
            assert ans["signals"]["letter_prob"] == pytest.approx(share[ans["index"]], abs=1e-6), q.id
