"""Fuzzed prompts and model outputs: build_prompt keeps every option and the question whole, inside the budget,
with user text only in the plain segment; parse_answer never leaves its range; both fast, only kardlite errors."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kardlite.data.records import QAItem
from kardlite.kb.passage import Passage
from kardlite.prompts import CUES, MODES, build_prompt, parse_answer
from tests.fuzz import Tally, attempt, fuzz_settings, text

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
nonblank = text.filter(lambda s: s.strip() != "")


def _words(segments) -> int:
    return sum(len(t.split()) + (5 if special else 0) for t, special in segments)


def test_build_prompt() -> None:
    tally = Tally()

    @fuzz_settings()
    @given(nonblank, st.lists(nonblank, min_size=2, max_size=10), st.sampled_from(MODES),
           st.lists(st.tuples(text, nonblank), max_size=4), st.integers(1, 300), st.booleans(),
           st.one_of(st.none(), text))
    def case(question: str, options: list[str], mode: str, passages: list[tuple[str, str]], budget: int,
             chat: bool, rationale: str | None) -> None:
        item = QAItem("q", question, tuple(options), 0)
        ps = [Passage(f"p{i}", title, body) for i, (title, body) in enumerate(passages)]
        prompt, err = tally.attempt(build_prompt, item, mode, passages=ps, rationale=rationale,
                                    with_target=rationale is not None, max_tokens=budget, count_segments=_words,
                                    chat_template=CHATML if chat else None, eos_token="<|im_end|>")
        if err:
            return
        assert prompt.text == "".join(t for t, _ in prompt.segments) and prompt.n_tokens == _words(prompt.segments)
        assert prompt.n_tokens <= budget and prompt.text.endswith(CUES[mode])
        plain = [t for t, special in prompt.segments if not special]
        assert len(plain) == 1 and item.linearize() in plain[0]  # question and every option, whole, as plain text
        assert set(prompt.passage_ids) <= {p.id for p in ps}
        if prompt.target is not None:
            assert prompt.target == "".join(t for t, _ in prompt.target_segments)
            assert [t for t, special in prompt.target_segments if special] == (["<|im_end|>"] if chat else [])

    case()
    tally.require(0.4)  # 144 of 200 accepted when written


@fuzz_settings()
@given(st.lists(st.one_of(text, st.sampled_from(["Answer: ", "answer is (", "B", "c)", "the answer is", "option",
                                                 " " * 500, "\n", "Answer: D", "not A"])), max_size=12).map("".join),
       st.integers(1, 10), st.booleans())
def test_parse_answer(output: str, n: int, with_options: bool) -> None:
    options = [f"option {i}" for i in range(n)] if with_options else None
    found, err = attempt(parse_answer, output, n, options)
    assert err is None and (found is None or 0 <= found < n)
