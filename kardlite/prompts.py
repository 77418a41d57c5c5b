"""The one prompt builder, used by training, evaluation and the runtime alike.

Three formats (KARD_METHOD.md §5): ``ft`` (question -> answer), ``rd`` (question -> rationale, answer) and
``kard`` (question + passages -> rationale, answer). The input is an instruction, ``Question:`` with the
linearised question, ``Knowledge:`` with numbered passages (kard only), then a cue (``Explanation:`` or
``Answer:``) that opens the model's turn. The target continues the cue and always ends with ``Answer: <letter>``.

The token budget is explicit and shared by training and inference: the question and its options are never
cut; passages are dropped or trimmed (whole passages first, then the last one at a word boundary) until the
whole input fits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from jinja2.sandbox import ImmutableSandboxedEnvironment

from kardlite.data.records import LETTERS, QAItem
from kardlite.errors import InputError

Mode = Literal["ft", "rd", "kard"]
MODES: tuple[Mode, ...] = ("ft", "rd", "kard")

INSTRUCTIONS: dict[str, str] = {
    "ft": "Answer the following multiple-choice question with the letter of the correct option.",
    "rd": "Answer the following multiple-choice question. Explain your reasoning step by step, then end with "
          "'Answer: <letter>'.",
    "kard": "Answer the following multiple-choice question using the knowledge below where it helps. Explain your "
            "reasoning step by step, then end with 'Answer: <letter>'.",
}
CUES: dict[str, str] = {"ft": "Answer:", "rd": "Explanation:", "kard": "Explanation:"}
MIN_TRIMMED_PASSAGE_TOKENS = 16  # a passage cut shorter than this is noise, so drop it instead


class PassageLike(Protocol):
    """Anything with an id, a title and a text (kb.Passage, a Hit dict wrapped, ...)."""

    @property
    def id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def text(self) -> str: ...


@dataclass(frozen=True)
class Prompt:
    """A built model input.

    Attributes:
        text: the exact string to tokenise (chat template applied when one was given), ending with the cue.
        target: the string the model should write after ``text`` (None when built for inference).
        passage_ids: ids of the passages that made it into ``text``, in order.
        n_tokens: tokens in ``text`` by the counter used.
        trimmed: True if any passage was dropped or cut to fit the budget.
    """

    text: str
    target: str | None
    passage_ids: tuple[str, ...]
    n_tokens: int
    trimmed: bool


class PromptTooLongError(InputError):
    """The question and options alone exceed the token budget (they are never cut)."""


def approx_token_count(text: str) -> int:
    """A tokenizer-free estimate (about 3.5 characters a token for English BPE). Pass a real counter when you can."""
    return math.ceil(len(text) / 3.5)


def render_chat(user_text: str, chat_template: str, *, bos_token: str = "", eos_token: str = "") -> str:
    """Render one user turn with a model's Jinja chat template, adding the generation prompt.

    Rendering here (instead of in transformers or llama.cpp) makes training and the CPU runtime produce
    byte-identical prompts from the same template string.
    """
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise ValueError(f"chat template error: {message}")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(chat_template).render(
        messages=[{"role": "user", "content": user_text}], add_generation_prompt=True,
        bos_token=bos_token, eos_token=eos_token)


def format_passage(index: int, passage: PassageLike) -> str:
    title = (passage.title or "").strip()
    return f"[{index}] {title}: {passage.text.strip()}" if title else f"[{index}] {passage.text.strip()}"


def build_target(item: QAItem, mode: Mode, rationale: str | None = None) -> str:
    """The text after the cue: `` <rationale>\\nAnswer: X`` (rd, kard) or `` X`` (ft)."""
    if item.label is None:
        raise InputError(f"item {item.id!r} has no gold label, so no training target", field="label")
    letter = LETTERS[item.label]
    if mode == "ft":
        return f" {letter}"
    if not rationale or not rationale.strip():
        raise InputError(f"item {item.id!r}: mode {mode!r} needs a rationale", field="rationale")
    return f" {rationale.strip()}\nAnswer: {letter}"


def _user_text(item: QAItem, mode: Mode, passage_blocks: Sequence[str]) -> str:
    parts = [INSTRUCTIONS[mode], f"Question: {item.linearize()}"]
    if mode == "kard":
        parts.append("Knowledge:\n" + ("\n".join(passage_blocks) if passage_blocks else "(none)"))
    return "\n".join(parts)


def _trim_words(text: str, keep_words: int) -> str:
    words = text.split()
    return " ".join(words[:keep_words]) + " ..."


def build_prompt(
    item: QAItem,
    mode: Mode,
    *,
    passages: Sequence[PassageLike] = (),
    rationale: str | None = None,
    with_target: bool = False,
    max_tokens: int = 512,
    count_tokens: Callable[[str], int] = approx_token_count,
    chat_template: str | None = None,
    bos_token: str = "",
    eos_token: str = "",
) -> Prompt:
    """Build the model input (and optionally the target) for one question.

    Args:
        item: the question.
        mode: ``ft``, ``rd`` or ``kard``.
        passages: knowledge for ``kard``, best first; ignored for the other modes.
        rationale: the teacher rationale, needed for the target of ``rd``/``kard`` when ``with_target``.
        with_target: build the training target too.
        max_tokens: budget for the input (not the target), counted with ``count_tokens``.
        count_tokens: text -> token count; pass the student's tokenizer so the budget is exact.
        chat_template: the student's Jinja chat template; None for plain text (base or seq2seq students).
        bos_token, eos_token: values the chat template may refer to.

    Returns:
        A Prompt. The same arguments (less the target) give the same ``text`` in training and inference.

    Raises:
        PromptTooLongError: the question and options alone do not fit in ``max_tokens``.

    Example:
        >>> item = QAItem("q1", "Which gas do plants take in?", ("oxygen", "carbon dioxide"), 1)
        >>> p = build_prompt(item, "rd", rationale="Plants fix CO2.", with_target=True)
        >>> p.text.endswith("Explanation:"), p.target
        (True, ' Plants fix CO2.\\nAnswer: B')
    """
    if mode not in MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; choose from {MODES}")

    def render(blocks: Sequence[str]) -> str:
        user = _user_text(item, mode, blocks)
        if chat_template:
            return render_chat(user, chat_template, bos_token=bos_token, eos_token=eos_token) + CUES[mode]
        return f"{user}\n{CUES[mode]}"

    base = render([])
    base_tokens = count_tokens(base)
    if base_tokens > max_tokens:
        raise PromptTooLongError(
            f"item {item.id!r}: question and options need {base_tokens} tokens, over the budget of {max_tokens}; "
            "options are never cut, so raise max_tokens", field="question")

    blocks: list[str] = []
    used: list[str] = []
    trimmed = False
    text, n_tokens = base, base_tokens
    for passage in passages if mode == "kard" else ():
        block = format_passage(len(blocks) + 1, passage)
        candidate = render([*blocks, block])
        cand_tokens = count_tokens(candidate)
        if cand_tokens <= max_tokens:
            blocks.append(block)
            used.append(passage.id)
            text, n_tokens = candidate, cand_tokens
            continue
        # The passage does not fit whole: keep the longest word prefix that fits, if worth keeping.
        trimmed = True
        words = block.split()
        lo, hi, best = 1, len(words) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            cut = render([*blocks, _trim_words(block, mid)])
            cut_tokens = count_tokens(cut)
            if cut_tokens <= max_tokens:
                best, lo = (mid, cut, cut_tokens), mid + 1
            else:
                hi = mid - 1
        if best and best[2] - n_tokens >= MIN_TRIMMED_PASSAGE_TOKENS:
            used.append(passage.id)
            text, n_tokens = best[1], best[2]
        break
    if mode == "kard" and len(used) < len(passages):
        trimmed = True

    target = None
    if with_target:
        target = build_target(item, mode, rationale)
        if chat_template and eos_token:
            target += eos_token
    return Prompt(text=text, target=target, passage_ids=tuple(used), n_tokens=n_tokens, trimmed=trimmed)


_ANSWER_RE = re.compile(r"answer\s*(?:is)?\s*[:：]?\s*\(?\s*([A-Z])\s*\)?(?![A-Za-z])", re.IGNORECASE)


def parse_answer(text: str, n_options: int) -> int | None:
    """The option index of the last ``Answer: X`` in ``text`` whose letter is one of the first ``n_options``.

    Returns None ("invalid") when there is none. Bare letters elsewhere in the text never count.

    Example:
        >>> parse_answer("B looks right... Answer: C", 4)
        2
        >>> parse_answer("Answer: E", 4) is None
        True
    """
    valid = LETTERS[:n_options]
    found = None
    for match in _ANSWER_RE.finditer(text):
        letter = match.group(1)
        # Lower-case letters are only accepted in "answer: a" form; "answer is a cell" must not read as A.
        if letter.upper() in valid and (letter.isupper() or ":" in match.group(0)):
            found = valid.index(letter.upper())
    return found
