from __future__ import annotations

import pytest

from kardlite.data import QAItem
from kardlite.kb.passage import Passage
from kardlite.prompts import (
    PromptTooLongError,
    approx_token_count,
    build_prompt,
    parse_answer,
    render_chat,
)

ITEM = QAItem("q1", "Which drug class ends in -olol?", ("beta blockers", "ACE inhibitors", "statins", "diuretics"), 0)
PASSAGES = [Passage(f"p{i}", f"Title {i}", " ".join(f"word{i}_{j}" for j in range(60))) for i in range(6)]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("mode", ["ft", "rd", "kard"])
def test_train_and_inference_prompts_identical_up_to_target(mode: str) -> None:
    train = build_prompt(ITEM, mode, passages=PASSAGES[:2], rationale="Beta blockers end in -olol.", with_target=True,
                         chat_template=CHATML, eos_token="<|im_end|>")
    infer = build_prompt(ITEM, mode, passages=PASSAGES[:2], chat_template=CHATML, eos_token="<|im_end|>")
    assert train.text == infer.text and infer.target is None
    assert train.target.removesuffix("<|im_end|>").endswith("A")
    assert "Answer: A" in train.target or mode == "ft"


def test_options_are_never_cut_and_budget_is_respected() -> None:
    for budget in (70, 90, 120, 200, 400):
        p = build_prompt(ITEM, "kard", passages=PASSAGES, max_tokens=budget, count_tokens=words)
        assert words(p.text) == p.n_tokens <= budget
        for letter, option in zip("ABCD", ITEM.options, strict=True):
            assert f"{letter}. {option}" in p.text
        assert p.text.endswith("Explanation:")
    small = build_prompt(ITEM, "kard", passages=PASSAGES, max_tokens=120, count_tokens=words)
    big = build_prompt(ITEM, "kard", passages=PASSAGES, max_tokens=400, count_tokens=words)
    assert small.trimmed and len(small.passage_ids) < len(big.passage_ids)
    assert small.passage_ids == big.passage_ids[: len(small.passage_ids)]  # best passages are kept first


def test_passage_is_trimmed_at_word_boundary_or_dropped() -> None:
    full = build_prompt(ITEM, "kard", passages=PASSAGES[:1], max_tokens=1000, count_tokens=words)
    partial = build_prompt(ITEM, "kard", passages=PASSAGES[:1], max_tokens=full.n_tokens - 20, count_tokens=words)
    assert partial.passage_ids == ("p0",) and partial.trimmed and "word0_0" in partial.text
    assert "word0_59" not in partial.text and partial.text.count(" ...") == 1
    too_small = build_prompt(ITEM, "kard", passages=PASSAGES[:1], max_tokens=full.n_tokens - 55, count_tokens=words)
    assert too_small.passage_ids == () and "word0" not in too_small.text


def test_question_over_budget_is_an_error_not_a_cut() -> None:
    with pytest.raises(PromptTooLongError, match="never cut"):
        build_prompt(ITEM, "rd", max_tokens=10, count_tokens=words)


def test_modes_differ_as_the_method_says() -> None:
    ft = build_prompt(ITEM, "ft", passages=PASSAGES, with_target=True)
    rd = build_prompt(ITEM, "rd", passages=PASSAGES, rationale="r", with_target=True)
    kard = build_prompt(ITEM, "kard", passages=PASSAGES[:1], rationale="r", with_target=True)
    assert ft.target == " A" and ft.text.endswith("Answer:") and "Knowledge" not in ft.text
    assert rd.target == " r\nAnswer: A" and "Knowledge" not in rd.text and rd.passage_ids == ()
    assert "Knowledge:\n[1] Title 0: word0_0" in kard.text and kard.passage_ids == ("p0",)
    with pytest.raises(ValueError, match="needs a rationale"):
        build_prompt(ITEM, "rd", with_target=True)


def test_chat_template_rendering() -> None:
    out = render_chat("hi", CHATML)
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    p = build_prompt(ITEM, "rd", chat_template=CHATML)
    assert p.text.startswith("<|im_start|>user\n") and p.text.endswith("<|im_start|>assistant\nExplanation:")
    assert approx_token_count("abcdefg") == 2


@pytest.mark.parametrize("text,n,expected", [
    ("Beta blockers... Answer: A", 4, 0),
    ("Answer: B\nWait. Answer: D", 4, 3),
    ("The answer is (C).", 4, 2),
    ("answer: d", 4, 3),
    ("Answer: E", 4, None),
    ("Answer: E", 5, 4),
    ("A is wrong and B is wrong", 4, None),
    ("the answer is a cell", 4, None),
    ("Answer: Apples", 4, None),
    ("", 4, None),
    ("Answer: B. Answer: Z", 4, 1),
])
def test_parse_answer(text: str, n: int, expected: int | None) -> None:
    assert parse_answer(text, n) == expected
