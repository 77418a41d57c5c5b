"""GGUFStudent's kept prompt prefix, on the tiny fixture student's real GGUF (kardlite/gguf_student.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kardlite.errors import InputError
from kardlite.gguf_student import GGUFStudent, shared_prefix
from kardlite.prompts import PROBES
from tests.distill.conftest import ITEMS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(tiny_student: Path, tiny_bundle: Path):
    from kardlite.distill.student import load_student

    gguf = GGUFStudent.load(tiny_bundle / "student.gguf", threads=2, n_ctx=1024)
    yield load_student(tiny_student), gguf
    gguf.close()


def _ids(student, gguf: GGUFStudent, item, mode: str = "ft") -> list[int]:
    return gguf.tokenize_segments(student.prompt(item, mode, max_tokens=256).segments)


def test_shared_prefix_is_the_start_every_prompt_has(pair) -> None:
    student, gguf = pair
    for mode in ("ft", "rd", "kard"):
        prefix = shared_prefix([gguf.tokenize_segments(student.prompt(item, mode, passages=ps, max_tokens=256).segments)
                                for item, ps in PROBES])
        text = gguf.detokenize(prefix)
        # the chat header and the instruction, up to the question: nothing of either probe's own text
        assert len(prefix) > 10 and text.rstrip().endswith("Question") and "plants" not in text and "melts" not in text
        assert all(_ids(student, gguf, it, mode)[:len(prefix)] == prefix for it in ITEMS)
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 3]]) == [1, 2]
    assert shared_prefix([[5, 6], [7, 6]]) == []
    with pytest.raises(InputError, match="at least two"):
        shared_prefix([[1, 2]])


def test_kept_prefix_makes_each_answer_independent_of_the_question_before(pair) -> None:
    """With the prefix kept, a question's scores and greedy text are bit-identical whichever question came before,
    close to those from an empty cache, and the prefix is evaluated once, not per question."""
    student, gguf = pair
    ids = {it.id: _ids(student, gguf, it) for it in ITEMS}
    n_opts = {it.id: len(it.options) for it in ITEMS}
    gguf.set_prefix([])
    cold = {q: gguf.letter_logprobs(ids[q], n_opts[q]) for q in ids}
    prefix = shared_prefix([_ids(student, gguf, item) for item, _ in PROBES])
    gguf.set_prefix(prefix)
    assert gguf.prefix == prefix

    evals: list[int] = []
    real_eval = gguf._llm.eval
    gguf._llm.eval = lambda tokens: (evals.append(len(tokens)), real_eval(tokens))[1]
    try:
        forward = {q: gguf.letter_logprobs(ids[q], n_opts[q]) for q in ids}
        backward = {q: gguf.letter_logprobs(ids[q], n_opts[q]) for q in reversed(list(ids))}
        texts = {q: gguf.generate(ids[q], n_opts[q], max_new_tokens=6) for q in ids}
        texts_back = {q: gguf.generate(ids[q], n_opts[q], max_new_tokens=6) for q in reversed(list(ids))}
    finally:
        gguf._llm.eval = real_eval
    assert forward == backward and texts == texts_back
    assert evals.count(len(prefix)) == 1  # evaluated once, kept for every later question
    for q in ids:
        assert forward[q] == pytest.approx(cold[q], abs=0.05, rel=0.02)
    # a prompt that does not start with the prefix is evaluated from an empty cache
    other = gguf.tokenize_text("Plain text with no chat header at all, then more words.")
    assert gguf.begin(other) == 0 and gguf.begin(ids["q1"]) == len(prefix)
    gguf.set_prefix([])
    assert gguf.begin(ids["q1"]) == 0
