"""kardlite.answers: the stop rule, the rationale cut and the letter token, shared by eval and the runtime."""

from __future__ import annotations

from kardlite.answers import FORCE_CUE, answer_done, forced_context, letter_prefix, parse_answer, rationale


def test_parsing_and_early_stop_rule() -> None:
    assert parse_answer("Plants release oxygen.\nAnswer: A", 4) == 0
    assert parse_answer("Answer: E", 4) is None
    assert parse_answer("the answer is a cell", 4) is None
    assert not answer_done("... Answer: A", 4)  # "A" might still grow into "Apples"
    assert answer_done("... Answer: A\n", 4)
    assert not answer_done("Answer: Z.", 4)


def test_rationale_cut_and_forced_context() -> None:
    out = " Plants make oxygen.\nAnswer: A\n"
    assert rationale(out) == "Plants make oxygen."
    assert forced_context(out) == " Plants make oxygen." + FORCE_CUE  # model text kept as generated
    assert rationale("no answer line here ") == "no answer line here"
    assert forced_context(" ran out of tok") == " ran out of tok\nAnswer:"
    # the last answer line is the one cut at, whatever its spelling
    assert rationale("First, Answer: B. Then the answer is: C") == "First, Answer: B. Then the"


def test_letter_prefix_is_the_space_the_letter_token_carries() -> None:
    assert letter_prefix("...\nAnswer:") == " "
    assert letter_prefix("...\nAnswer: ") == ""
