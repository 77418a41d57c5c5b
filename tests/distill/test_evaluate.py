from __future__ import annotations

import json

import pytest

from kardlite.distill.evaluate import (
    EvalConfig,
    decode_until_stop,
    evaluate,
    make_retriever,
    vote,
    write_report,
)
from kardlite.distill.student import load_student
from kardlite.errors import ArtifactError, InputError
from kardlite.kb.passage import Passage
from kardlite.prompts import parse_answer
from tests.distill.conftest import ITEMS


def test_vote_majority_and_deterministic_ties():
    assert vote([1, 1, 2]) == 1
    assert vote([None, 2, 1, 1, 2]) == 2  # 2 and 1 tie; 2 voted first
    assert vote([3, None, 0]) == 3
    assert vote([None, None]) is None
    assert vote([]) is None


def test_output_is_cut_at_the_trained_eos(smol_tokenizer):
    # Regression: SmolLM2 students end with <|im_start|> (the tokenizer's eos); text after it must not be glued on.
    tok = smol_tokenizer
    seq = tok("Plants release oxygen.\nAnswer: B", add_special_tokens=False)["input_ids"]
    seq = [*seq, tok.eos_token_id, *tok("user\nAnswer: A", add_special_tokens=False)["input_ids"]]
    glued = tok.decode(seq, skip_special_tokens=True)
    assert parse_answer(glued, 4) != 1
    (text,) = decode_until_stop(tok, [seq], [tok.eos_token_id])
    assert text.endswith("Answer: B") and parse_answer(text, 4) == 1


def test_ft_letter_scoring_and_resume(tmp_path, tiny_llama_dir):
    student = load_student(tiny_llama_dir)
    cfg = EvalConfig(mode="ft", batch_size=4)
    m = evaluate(student, ITEMS, tmp_path / "ev", cfg)
    rows = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert m["n"] == len(ITEMS) == len(rows) and m["invalid"] == 0  # letter scoring is never invalid
    for r in rows:
        probs = r["letter_logprobs"]
        assert len(probs) == 4 and r["prediction"] == "ABCD"[max(range(4), key=probs.__getitem__)]
        assert r["prompt"].endswith("Answer:")
    assert m["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows), abs=1e-4)
    # A crash mid-write leaves a torn last line: the re-run keeps the good rows and only redoes the rest.
    path = tmp_path / "ev" / "predictions.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + lines[3][:20])
    scored: list[int] = []  # rows of each forward pass of the real model: what the re-run recomputes
    hook = student.model.register_forward_pre_hook(lambda _m, _a, kw: scored.append(len(kw["input_ids"])),
                                                   with_kwargs=True)
    try:
        m2 = evaluate(student, ITEMS, tmp_path / "ev", cfg)
    finally:
        hook.remove()
    assert sum(scored) == len(ITEMS) - 3  # only the three rows the crash lost
    new_lines = path.read_text().splitlines(keepends=True)
    assert new_lines[:3] == lines[:3]  # the done rows are kept byte for byte, the torn one dropped
    again = [json.loads(x) for x in new_lines]
    assert [r["id"] for r in again] == [it.id for it in ITEMS] and m2["accuracy"] == m["accuracy"]
    assert new_lines[3:] == lines[3:]  # recomputed the same way (greedy letter scores)
    with pytest.raises(ArtifactError, match="other settings"):
        evaluate(student, ITEMS, tmp_path / "ev", EvalConfig(mode="rd"))
    # an unfinished evaluation still shows up in a report, marked partial
    path.write_text("".join(lines[:3]))
    (tmp_path / "ev" / "metrics.json").unlink()
    text = write_report([tmp_path / "ev"], tmp_path / "r.md").read_text()
    assert "ev (partial: 3/6)" in text and "| 3 |" in text


def test_kard_generation_with_retrieval_hook_and_self_consistency(tmp_path, tiny_llama_dir):
    student = load_student(tiny_llama_dir)
    calls = []

    def retrieve(item, n_docs):  # the reranker hook: any (item, n_docs) -> passages
        calls.append((item.id, n_docs))
        return [Passage(id=f"p{i}", title="", text=f"fact {i} about {item.id}") for i in range(n_docs)]

    cfg = EvalConfig(mode="kard", decoding="sc", samples=3, max_new_tokens=6, n_docs=2, batch_size=3)
    m = evaluate(student, ITEMS[:3], tmp_path / "sc", cfg, retrieve=retrieve)
    assert calls == [("q1", 2), ("q2", 2), ("q3", 2)]
    rows = [json.loads(x) for x in (tmp_path / "sc" / "predictions.jsonl").read_text().splitlines()]
    for r in rows:
        assert len(r["outputs"]) == 3 and len(r["votes"]) == 3
        assert [p["id"] for p in r["passages"]] == ["p0", "p1"] and "fact 0 about" in r["prompt"]
        assert r["invalid"] == (r["prediction"] is None)
    # a random tiny model writes no "Answer: X" in 6 tokens: every answer is forced (read by letter likelihood
    # after "<output>\nAnswer:"), none is invalid, and the forced letter is the likelihood's argmax
    assert m["forced_rate"] == 1.0 and m["invalid_rate"] == 0.0 and m["samples"] == 3
    for r in rows:
        assert r["forced"] and all(v in "ABCD" for v in r["votes"])
    from kardlite.distill.evaluate import score_letters

    row = rows[0]
    prompt_ids = student.encode(row["prompt"])
    cont = prompt_ids + student.encode(row["outputs"][0].rstrip() + "\nAnswer:")
    (scores,) = score_letters(student, [cont], [4])
    assert row["votes"][0] == "ABCD"[max(range(4), key=scores.__getitem__)]


def test_answers_read_as_option_text_and_contradictions_counted(tiny_llama_dir):
    from kardlite.data.records import QAItem
    from kardlite.distill.evaluate import _read_answers

    student = load_student(tiny_llama_dir)
    yes_no = QAItem("s1", "Is the sun a star?", ("yes", "no"), 0)
    outputs = [["The sun is a star. Therefore, the answer is yes.",
                "At first the answer is (B) no, but the sun is a star.\nAnswer: A",
                "The sun shines and shines"]]
    texts = [student.prompt(yes_no, "rd").text]
    ids = [student.encode(texts[0])]
    votes, forced, contradictions = _read_answers(student, [yes_no], ids, outputs, "generated")
    assert votes[0][:2] == [0, 0] and forced[0] == [False, False, True] and votes[0][2] in (0, 1)
    assert contradictions == [1]  # the second output states B, then answers A
    # scoring after the rationale reads every output by likelihood, none counted as forced
    votes, forced, _ = _read_answers(student, [yes_no], ids, outputs, "text")
    assert all(v in (0, 1) for v in votes[0]) and forced[0] == [False, False, False]
    # no_answer="invalid": an output without an answer line stays unanswered, nothing forced
    votes, forced, _ = _read_answers(student, [yes_no], ids, outputs, "generated", "invalid")
    assert votes[0] == [0, 0, None] and forced[0] == [False, False, False]


def test_decoding_budget_and_passages_default_to_the_students(tmp_path, tiny_llama_dir):
    student = load_student(tiny_llama_dir)
    student.info = {"mode": "kard", "max_new_tokens": 5, "n_docs": 2, "max_source_tokens": 300}
    calls = []

    def retrieve(item, n_docs):
        calls.append(n_docs)
        return [Passage(id=f"p{i}", title="", text=f"fact {i}") for i in range(n_docs)]

    evaluate(student, ITEMS[:2], tmp_path / "k", EvalConfig(batch_size=2), retrieve=retrieve)
    settings = json.loads((tmp_path / "k" / "eval.json").read_text())
    assert calls == [2, 2] and settings["max_new_tokens"] == 5 and settings["max_source_tokens"] == 300
    assert settings["samples"] == 1 and settings["temperature"] is None  # greedy records what it did
    rows = [json.loads(x) for x in (tmp_path / "k" / "predictions.jsonl").read_text().splitlines()]
    n_new = [len(student.encode(o)) for r in rows for o in r["outputs"]]
    assert max(n_new) <= 5


def test_ka_ft_scores_with_passages_and_option_text_scoring(tmp_path, tiny_llama_dir):
    from kardlite.distill.evaluate import score_option_texts

    student = load_student(tiny_llama_dir)

    def retrieve(item, n_docs):
        return [Passage(id="p0", title="", text="plants release oxygen")]

    m = evaluate(student, ITEMS[:3], tmp_path / "ka", EvalConfig(mode="ka-ft", n_docs=1), retrieve=retrieve)
    rows = [json.loads(x) for x in (tmp_path / "ka" / "predictions.jsonl").read_text().splitlines()]
    assert m["invalid"] == 0 and all("plants release oxygen" in r["prompt"] for r in rows)
    assert all(r["prompt"].endswith("Answer:") and r["outputs"] == [] for r in rows)
    with pytest.raises(InputError, match="answer_scoring"):
        evaluate(student, ITEMS[:1], tmp_path / "ka2", EvalConfig(mode="ka-ft", answer_scoring="generated"),
                 retrieve=retrieve)
    # option-text scoring: the mean log-likelihood of each option's own tokens after the prompt
    import torch

    prompt = student.encode(student.prompt(ITEMS[0], "ft").text)
    (scores,) = score_option_texts(student, [prompt], [ITEMS[0].options])
    cont = student.encode(" " + ITEMS[0].options[1])
    with torch.no_grad():
        logp = torch.log_softmax(student.model(torch.tensor([prompt + cont])).logits[0].float(), -1)
    expected = float(sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(cont)) / len(cont))
    assert len(scores) == 4 and scores[1] == pytest.approx(expected, abs=1e-4)
    m = evaluate(student, ITEMS[:3], tmp_path / "ft-text", EvalConfig(mode="ft", answer_scoring="text"))
    assert m["answer_scoring"] == "text" and m["invalid"] == 0


def test_kb_retriever_uses_the_linearised_question(tiny_kb):
    retrieve = make_retriever(tiny_kb, "bm25")
    got = retrieve(ITEMS[1], 2)
    expected = tiny_kb.search(ITEMS[1].linearize(), 2, retriever="bm25")
    assert [p.id for p in got] == [h["id"] for h in expected]
    assert got[0].text == "a magnet attracts iron objects"
    with pytest.raises(InputError, match="reranker"):
        make_retriever(tiny_kb, "reranker")


def test_reranker_retriever_reorders_the_first_stage_pool(tiny_kb):
    from kardlite.rerank.model import Reranker

    reranker = Reranker.from_pretrained(num_layers=1)
    query = ITEMS[1].linearize()
    retrieve = make_retriever(tiny_kb, "reranker", reranker=reranker, first_stage="bm25", pool=3)
    got = [p.id for p in retrieve(ITEMS[1], 2)]
    pool = [h["id"] for h in tiny_kb.search(query, 3, retriever="bm25")]
    by_score = [h["id"] for h in reranker.rank(query, tiny_kb.get(pool), top_k=2)]
    assert got == by_score and set(got) <= set(pool)
    with pytest.raises(InputError, match="first_stage"):
        make_retriever(tiny_kb, "reranker", reranker=reranker, first_stage="colbert")


def test_bad_inputs_and_report(tmp_path, tiny_llama_dir):
    student = load_student(tiny_llama_dir)
    with pytest.raises(InputError, match="mode"):
        evaluate(student, ITEMS, tmp_path / "x", EvalConfig())  # a base model has no mode of its own
    with pytest.raises(ArtifactError, match="knowledge base"):
        evaluate(student, ITEMS, tmp_path / "x", EvalConfig(mode="kard"))
    with pytest.raises(ArtifactError, match=r"metrics\.json"):
        write_report([tmp_path / "nothing"], tmp_path / "r.md")
    for name, acc in (("a", 0.25), ("b", 0.5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"name": name, "mode": "rd", "student": "s", "n": 4, "accuracy": acc, "invalid_rate": 0.0}))
    out = write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "r.md")
    text = out.read_text()
    assert "| a | rd |" in text and "50.0%" in text and (tmp_path / "r.csv").read_text().count("\n") == 3
    assert "Warning" not in text
    # runs over different questions are tabulated with a warning, never silently side by side
    for name, items in (("a", ["q1", "q2"]), ("b", ["q1", "q2", "q3"])):
        (tmp_path / name / "eval.json").write_text(json.dumps({"items": items}))
    with pytest.warns(UserWarning, match="not over the same questions"):
        text = write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "r.md").read_text()
    assert "Warning: these runs are not over the same questions" in text
