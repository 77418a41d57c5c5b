from __future__ import annotations

import time

import pytest

from kardlite.data import QAItem
from kardlite.errors import InputError
from kardlite.kb.passage import Passage
from kardlite.prompts import (
    PromptTooLongError,
    approx_token_count,
    build_prompt,
    option_verdicts,
    parse_answer,
    render_chat,
    stated_answers,
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
    # Phrasings beyond "Answer: X".
    ("the answer to this question is (B) no", 2, 1),
    ("The correct answer, therefore, is (B).", 4, 1),
    ("Answer: (B) hydrochlorothiazide", 4, 1),
    ("answer is B.", 4, 1),
    ("The final answer is: (c)", 4, 2),
    ("the answer is (b)", 4, 1),
    ("**Answer: B**", 4, 1),
    ('the answer is "C".', 4, 2),
    ("The correct answer is still (C), as food breaks down.", 4, 2),
    ("the best option would be C", 4, 2),
    ("The answer is A because it is red.", 4, 0),
    ("Answer: A cell", 4, 0),  # today's "Answer: X" form keeps reading the letter
    ("so option (D) is the correct answer", 4, 3),
    ("making option (A) the correct answer.", 4, 0),
    ("Therefore, option (C) is correct.", 4, 2),
    ("Option (C) is the most likely answer.", 4, 2),
    ("Option (D), plants sprouting, blooming and wilting, is the correct answer.", 4, 3),
    ("This explains why option (B) is the correct answer.", 4, 1),
    # Not statements.
    ("Option (A) is correct because it is red.", 4, None),  # discussion, no connective
    ("the answer is A or B", 4, None),
    ("(A) and (B) are the correct answers", 4, None),
    ("If option (A) is the correct answer, then B is not.", 4, None),
    ("The correct answer is not (A).", 4, None),
    ("Answer choice (A) is incorrect.", 4, None),
    ("Option (A) is not specific enough to be the correct answer", 4, None),
    ("To answer this question, we need A", 4, None),
    ("The answer is A cell", 4, None),
    ("Answer (B), television signals, does not change the environment.", 4, None),  # a subject, not a verdict
    ("Answer (A) is incorrect.", 4, None),
    ("The best fit is answer (C).", 4, 2),
    ("So, the answer is (E).", 4, None),
    ("Therefore, the answer is no.", 2, None),  # text answers need the option texts
])
def test_parse_answer(text: str, n: int, expected: int | None) -> None:
    assert parse_answer(text, n) == expected


def test_stated_answers_keeps_every_statement_in_order() -> None:
    text = "Option (A) is the correct answer. Wait, no: the answer is (C). Answer: C"
    assert stated_answers(text, 4) == [0, 2, 2]
    assert parse_answer(text, 4) == 2
    assert stated_answers("No verdict here. A is wrong.", 4) == []


@pytest.mark.parametrize("text,expected", [
    ("Option (A) is incorrect. Options (B) and (C) are also wrong. Option (D) is correct.", ({3}, {0, 1, 2})),
    ("Options (A), (B), and (D) are not the correct answer.", (set(), {0, 1, 3})),
    ('Option (C), "stayed the same," is incorrect because earnings fell.', (set(), {2})),
    ("Option (B) is unlikely, and option (D) would be correct.", ({3}, {1})),
    ("If option (C) is wrong, then D is right.", (set(), set())),  # hedged; a bare D is no option reference
    ("Option (E) is incorrect.", (set(), set())),  # no such option
    ("Option (A) is red. A is wrong.", (set(), set())),
    # Only D is "incorrect" here: a singular verb belongs to the last letter of a list.
    ("Option (A) is similar but not as specific as option (B), and option (D) is incorrect.", (set(), {3})),
    ("Option (D), a giraffe, is not an insect.", (set(), set())),  # a property, not a verdict
    ("Option (B) is not the correct answer.", (set(), {1})),
    ("Option (C) is correct, but it is not the best answer.", (set(), set())),  # a caveat
    ("Option (C) is correct in the sense that heat is energy.", (set(), set())),
    ("Option (B) is also correct.", (set(), set())),  # "also": not the one answer
])
def test_option_verdicts(text: str, expected: tuple[set[int], set[int]]) -> None:
    assert option_verdicts(text, 4) == expected


YES_NO = ["yes", "no"]


@pytest.mark.parametrize("text,expected", [
    ("Therefore, the answer is no.", 1),
    ("The answer is yes, because water is wet.", 0),
    ("Answer: no", 1),
    ("answer is No", 1),
    ('So the answer is "yes".', 0),
    ("The answer is not clear.", None),
    ("The answer is noted", None),  # a longer word is not the option
    ("The answer is (A) no", 0),  # the letter wins over the text after it
    ("The answer is yes. On reflection, the answer is no.", 1),
])
def test_option_text_answers_on_a_yes_no_task(text: str, expected: int | None) -> None:
    assert parse_answer(text, 2, YES_NO) == expected


def test_option_text_is_whole_normalised_and_longest_first() -> None:
    opts = ["plants", "plants sprouting, blooming and wilting", "Flowers wilting in a vase", "the moon"]
    assert parse_answer("Thus, the answer is plants sprouting, blooming and wilting.", 4, opts) == 1
    assert parse_answer("Thus, the answer is PLANTS  sprouting blooming-and wilting!", 4, opts) == 1
    assert parse_answer("The answer is plants.", 4, opts) == 0
    assert parse_answer("The answer is flowers wilting in a vase because", 4, opts) == 2
    assert parse_answer("The answer is the moon.", 4, opts) == 3
    assert parse_answer("The answer is flowers wilting", 4, opts) is None  # part of an option is not the option
    assert parse_answer("Answer: hydrochlorothiazide\nNext", 2, ["aspirin", "Hydrochlorothiazide"]) == 1
    assert parse_answer("Answer: X.", 2, ["x", "X"]) is None  # the same text under two letters is ambiguous


@pytest.mark.parametrize("n", [0, -1])
def test_parse_answer_rejects_non_positive_option_counts(n: int) -> None:
    with pytest.raises(InputError, match="n_options"):
        parse_answer("Answer: A", n)
    with pytest.raises(InputError, match="n_options"):
        stated_answers("Answer: A", n)
    with pytest.raises(InputError, match="option texts"):
        parse_answer("Answer: A", 3, ["a", "b"])


@pytest.mark.parametrize("adversarial", [
    "answer" + " " * 100_000 + "!",
    "the correct answer is" + " " * 100_000 + "!",
    "Answer:" + " " * 100_000 + "B",
    ":" * 100_000,
    "(" * 100_000,
    "answer " * 15_000,
    "answer is " * 10_000,
    "Answer: (" * 11_000,
    "(A" * 50_000,
    "A, " * 33_000,
    "(A), " * 20_000,
    "option (A) is the " * 6_000,
    "Therefore, option " * 6_000,
    "the answer is yes " * 6_000,
    "Options (A), (B) and " * 5_000,
    'Option (A), "' * 14_000,
    "Option (D) is incorrect. " * 4_000,
])
def test_answer_reader_is_linear_on_100k_adversarial_inputs(adversarial: str) -> None:
    # Required by the hardening issue: model output must never make the reader backtrack.
    # CPU time, not wall time: the bound is on the work done, which other processes on a busy machine do not change.
    start = time.process_time()
    stated_answers(adversarial, 4)
    parse_answer(adversarial, 2, ["yes", "yes yes"])
    option_verdicts(adversarial, 4)
    assert time.process_time() - start < 1.0


def test_vote_is_shared_and_breaks_ties_by_first_vote() -> None:
    from kardlite.distill.evaluate import vote as eval_vote
    from kardlite.prompts import vote

    assert eval_vote is vote  # evaluation and the runtime count votes with the same function
    assert vote([None, 2, 1, 1, 2]) == 2
    assert vote([3, 0, 0]) == 0
    assert vote([None]) is None


@pytest.mark.parametrize("answer_format", ["letter", "text", "both"])
@pytest.mark.parametrize("mode", ["ft", "ka-ft", "rd", "kard"])
def test_each_answer_format_round_trips_through_the_target_and_the_reader(mode, answer_format) -> None:
    from kardlite.distill.evaluate import option_continuations
    from kardlite.prompts import answer_string

    item = QAItem("q", "Which diuretic lowers urinary calcium?",
                  ("furosemide", "hydrochlorothiazide", "acetazolamide", "mannitol"), 1)
    rationale = "Thiazides increase calcium reabsorption in the distal tubule." if mode in ("rd", "kard") else None
    p = build_prompt(item, mode, rationale=rationale, with_target=True, answer_format=answer_format)
    written = {"letter": "B", "text": "hydrochlorothiazide", "both": "(B) hydrochlorothiazide"}[answer_format]
    assert p.target.endswith(written) and answer_string(1, " hydrochlorothiazide", answer_format) == written
    # what the reader gets back: the cue plus the target, as a student trained on it would write it
    assert parse_answer("Answer:" + p.target, 4, item.options) == 1
    # the letter format's prompt is unchanged; the others say how to answer
    if answer_format == "letter":
        assert p.text == build_prompt(item, mode).text
    else:
        assert "letter of the correct option" not in p.text and "<letter>'" not in p.text.replace("(<letter>)", "")
    # option-text scoring scores exactly what the target writes after "Answer:" (the text, or "(B) text")
    continuation = option_continuations([item.options], answer_format)[0][1]
    assert p.target.endswith(continuation) if answer_format != "letter" else continuation == " hydrochlorothiazide"


def test_unknown_answer_format_is_an_input_error() -> None:
    item = QAItem("q", "Q?", ("a", "b"), 0)
    with pytest.raises(InputError, match="unknown answer format 'words'") as err:
        build_prompt(item, "ft", answer_format="words")
    assert err.value.field == "answer_format"
