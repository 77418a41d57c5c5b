from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from kardlite.data.records import QAItem
from kardlite.errors import InputError
from kardlite.rationales.filter import Judge, check_answer, degenerate_reason, filter_rationales, stated_answer
from kardlite.rationales.store import RationaleStore

SUN = QAItem("7-980", "The sun is responsible for",
             ("puppies learning new tricks", "children growing up and getting old", "flowers wilting in a vase",
              "plants sprouting, blooming and wilting"), 3)
GOOD = ("The sun provides the energy for photosynthesis, which lets plants sprout, bloom and eventually wilt. "
        "Option (A) is incorrect because puppies learn tricks from training.")


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"), ("   ", "empty"), ("Plants need sun.", "too short"),
    ("This question is a repeat of the first question. Please refer to the previous explanation for details.",
     "refers to another question"),
    ("This is the same question as the previous one and has the same explanation. The sun gives energy.",
     "refers to another question"),
    ("I'm sorry, but I can't generate a response to that specific question.", "refusal"),
    (GOOD, None),
    ("This question is a duplicate. Please refer to the explanation provided for the previous question.",
     "refers to another question"),
    ("Please see the explanation provided for question 1, which covers plants and the sun.",
     "refers to another question"),
    ("This question has already been answered, and the sun makes plants grow.", "refers to another question"),
    ("This question is inappropriate. As an AI language model, I cannot provide an answer to this question.",
     "refusal"),
    # Not defects: the rationale's own earlier text, a sub-question, "as an AI" without refusing.
    (GOOD + " Option (C) is incorrect because, as mentioned above, vases cut flowers off from their roots.", None),
    ("The first question is whether the sun gives energy; it does. The second question is whether plants use it. "
     "They do, so the answer is yes.", None),
    ("The first question asks about light. As an AI model trained on science texts, I know plants use light, so "
     "plants sprouting is the effect.", None),
    ("Puppies and a similar one learn tricks in the same environment, one of many things the sun does not do.", None),
])
def test_degenerate(text: str, reason: str | None) -> None:
    assert degenerate_reason(text) == reason


@pytest.mark.parametrize(("text", "expected"), [
    (GOOD, None),  # discusses a wrong option, states no final answer
    ("Option (C) is incorrect. Therefore, option (D) is the correct answer.", 3),
    ("The correct answer is (C) flowers wilting in a vase.", 2),
    ("Option (A) is correct because ... Option (C) is also correct ... so option (D) is the best answer.", 3),
    ("so option (D) is plausible, but option (B) is the best answer in this context.", 1),
    ("Sunlight drives growth. Answer: D", 3),
    ("Thus, the answer is plants sprouting, blooming and wilting.", 3),
    ("The answer is a process of growth.", None),  # "a" is an article, not option A
    ("So, the answer is (E).", None),  # no option E
    ("The answer to this question is (D) plants sprouting, blooming and wilting.", 3),
    ("The correct answer, therefore, is (B).", 1),
    ("Sunlight drives growth. Answer: (A) puppies learning new tricks", 0),
    ("Thus, the answer is flowers wilting in a vase.", 2),
])
def test_stated_answer(text: str, expected: int | None) -> None:
    assert stated_answer(text, SUN) == expected


@pytest.mark.parametrize(("text", "expected"), [
    (GOOD, ("none stated", None)),
    ("The sun drives photosynthesis. Options (A), (B) and (C) are incorrect because they do not need it.",
     ("implied", None)),
    ("The sun drives photosynthesis. Option (D) is correct because plants need light.", ("implied", None)),
    ("Option (D) is incorrect because plants grow in the dark.", ("fail", "rules out the gold answer (D)")),
    ("Option (B) is correct because children grow. Option (A) is wrong.", ("fail", "calls (B) correct, gold is (D)")),
    ("Option (D) is incorrect at first sight, but the correct answer is (D).", ("pass", None)),  # a statement wins
    ("So, the answer is (B).", ("fail", "states (B), gold is (D)")),
])
def test_check_answer(text: str, expected: tuple[str, str | None]) -> None:
    assert check_answer(text, SUN) == expected


def test_check_answer_reads_only_statements_in_a_negated_question() -> None:
    false_one = QAItem("q", "Which of these is false about the greenhouse effect?",
                       ("it warms the air", "it makes the air green", "it melts ice", "it raises temperatures"), 1)
    text = "Options (A), (C) and (D) are true. Option (B) is false because air does not turn green."
    assert check_answer(text, false_one) == ("none stated", None)  # "(B) is false" is the verdict here
    assert check_answer(text + " So, the answer is (B).", false_one) == ("pass", None)
    assert check_answer("Therefore, the correct answer is (A).", false_one) == ("fail", "states (A), gold is (B)")


@pytest.mark.parametrize("adversarial", [
    "the correct answer is" + " " * 100_000 + "!",
    "question" + " " * 100_000 + "!",
    "previous" + " " * 100_000 + "!",
    "refer to" + " " * 100_000 + "!",
    "explanation provided for" + " " * 100_000 + "!",
    "identical" + " " * 100_000 + "!",
    "I" + " " * 100_000 + "!",
    "I cannot" + " " * 100_000 + "!",
    " " * 100_000 + "Sorry",
    "same question as the " * 5_000,
    "This question is a " * 5_000,
    "Option (A), " * 8_000,
    "Options (A), (B) and " * 5_000,
    "Option (D) is incorrect. " * 4_000,
])
def test_filter_rules_are_linear_on_100k_adversarial_inputs(adversarial: str) -> None:
    # Required by the hardening issue: rationale text is matched by linear-time rules only.
    # CPU time, not wall time: the bound is on the work done, which other processes on a busy machine do not change.
    start = time.process_time()
    degenerate_reason(adversarial)
    check_answer(adversarial, SUN)
    assert time.process_time() - start < 1.0


def _store(path: Path, texts: list[str], item_id: str = SUN.id) -> Path:
    with RationaleStore(path) as st:
        st.append([{"item_id": item_id, "sample": i, "text": t} for i, t in enumerate(texts)])
    return path


def test_filter_without_judge_writes_kept_dropped_stats(tmp_path: Path) -> None:
    store = _store(tmp_path / "s.jsonl", [GOOD, "Too short.", GOOD + " So, the answer is (B).", GOOD + " Answer: D"])
    other = QAItem("q2", "?", ("a", "b"), 0)
    stats = filter_rationales(store, [SUN, other], tmp_path / "out", judge=None, progress=False)
    kept = [json.loads(x) for x in (tmp_path / "out" / "kept.jsonl").read_text().splitlines()]
    dropped = [json.loads(x) for x in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert [(k["sample"], k["filters"]) for k in kept] == [
        (0, {"degenerate": "pass", "stated": "none stated"}), (3, {"degenerate": "pass", "stated": "pass"})]
    assert [(d["sample"], d["filter"]) for d in dropped] == [(1, "degenerate"), (2, "stated")]
    assert dropped[1]["reason"] == "states (B), gold is (D)"
    assert stats["kept"] == 2 and stats["keep_rate"] == 0.5 and stats["kept_per_question_histogram"] == {"2": 1}
    assert stats["questions_without_rationales_in_store"] == 1
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["kept"] == 2
    assert stats["filters"]["stated"]["seen"] == 3
    assert stats["kept_by_answer_check"] == {"none stated": 1, "pass": 1}


def test_filter_rejects_store_items_missing_from_task(tmp_path: Path) -> None:
    store = _store(tmp_path / "s.jsonl", [GOOD], item_id="elsewhere")
    with pytest.raises(InputError, match="not in the task"):
        filter_rationales(store, [SUN], None, judge=None, progress=False)


@pytest.mark.slow
def test_judge_scores_are_normalised_and_batch_invariant(tmp_path: Path) -> None:
    judge = Judge("smollm2", batch_size=1)
    two = QAItem("q2", "Which is hot?", ("fire", "ice"), 0)
    pairs = [(SUN, GOOD), (two, "Fire is hot because it burns."), (SUN, GOOD + " " + GOOD + " More text here."),
             (two, "Ice is cold.")]
    alone = judge.scores(pairs)
    judge.batch_size = 4  # left padding must not change any score
    batched = judge.scores(pairs)
    for a, b, (item, _) in zip(alone, batched, pairs, strict=True):
        assert len(a) == len(item.options)
        assert math.isclose(sum(math.exp(x) for x in a), 1.0, rel_tol=1e-4)
        assert a == pytest.approx(b, abs=2e-3)
    store = _store(tmp_path / "s.jsonl", [GOOD, GOOD + " Answer: D"])
    stats = filter_rationales(store, [SUN], tmp_path / "out", judge=judge, progress=False)
    assert stats["judge_model"] == "smollm2" and stats["filters"]["judge"]["seen"] == 2
    rows = [json.loads(x) for f in ("kept", "dropped")
            for x in (tmp_path / "out" / f"{f}.jsonl").read_text().splitlines()]
    assert all(r["judge"]["letter"] in "ABCD" and 0 <= r["judge"]["p_gold"] <= 1 for r in rows)


def test_cli_filter_without_judge(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kardlite.cli import app

    store = _store(tmp_path / "s.jsonl", [GOOD, "Too short."])
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"id": SUN.id, "question": SUN.question, "options": list(SUN.options),
                                "answer": "D"}) + "\n")
    out = CliRunner().invoke(app, ["rationales", "filter", str(store), "--tasks", str(task), "--out",
                                   str(tmp_path / "f"), "--judge", "none", "--quiet"])
    assert out.exit_code == 0, out.output
    assert "kept 1/2 (50.0%)" in out.stdout and (tmp_path / "f" / "dropped.jsonl").is_file()
    bad = CliRunner().invoke(app, ["rationales", "filter", str(tmp_path / "missing.jsonl"), "--tasks", str(task),
                                   "--out", str(tmp_path / "g"), "--judge", "none"])
    assert bad.exit_code == 2 and "missing.jsonl" in bad.stderr and "does not exist" in bad.stderr


@pytest.mark.slow
def test_packaged_judge_model_is_cached_as_safetensors_with_the_gguf_tokenizer() -> None:
    from transformers import AutoTokenizer

    from kardlite._hf import resolve
    from kardlite._llama import packaged_smollm2

    folder = Path(resolve("smollm2"))
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    gguf = packaged_smollm2()
    direct = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    cached = AutoTokenizer.from_pretrained(str(folder))
    text = "Question: The sun is responsible for\nA. puppies\nExplanation: Photosynthesis — 42 µm. So, the answer is"
    assert cached.encode(text, add_special_tokens=False) == direct.encode(text, add_special_tokens=False)


@pytest.mark.slow
def test_cached_tokenizer_special_tokens_follow_the_gguf() -> None:
    from transformers import AutoTokenizer

    from kardlite._hf import resolve

    tok = AutoTokenizer.from_pretrained(resolve("smollm2"))
    # GGUF metadata: eos 2 (<|im_end|>), pad 2, add_bos_token False; llama.cpp stops at <|im_end|>.
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|im_end|>", 2, 2)
    assert tok("Hi")["input_ids"] == tok("Hi", add_special_tokens=False)["input_ids"]
