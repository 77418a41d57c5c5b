"""The one prompt builder, used by training, evaluation and the runtime alike.

Four formats: ``ft`` (question -> answer), ``rd`` (question -> rationale, answer), ``kard`` (question + passages
-> rationale, answer) and ``ka-ft`` (question + passages -> answer: what the passages give without a rationale).
The input is an instruction, ``Question:`` with the linearised question, ``Knowledge:`` with numbered passages
(kard, ka-ft), then a cue (``Explanation:`` or ``Answer:``) that opens the model's turn. The target continues
the cue and always ends with ``Answer: <letter>``.

The token budget is explicit and shared by training and inference: the question and its options are never
cut; passages are dropped or trimmed (whole passages first, then the last one at a word boundary) until the
whole input fits.

Text from users, files and models is data. A prompt therefore also comes as segments (``Prompt.segments``):
the chat template's own markup, whose special-token strings (``<|im_start|>`` ...) become control tokens, and
the user turn (instruction, question, options, passages), which is tokenised as plain text, so a question that
contains ``<|im_end|>`` cannot open a new turn. Training, evaluation and the runtime tokenise these segments the
same way, and the budget is counted on them (``count_segments``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from jinja2.sandbox import ImmutableSandboxedEnvironment

# Answer reading lives in kardlite.answers; its names stay importable from here.
from kardlite.answers import (
    ANSWER_FORMATS,
    AnswerFormat,
    answer_string,
    check_answer_format,
    letter_token_ids,
    option_verdicts,
    parse_answer,
    stated_answers,
    vote,
)
from kardlite.data.records import QAItem
from kardlite.errors import InputError

Mode = Literal["ft", "rd", "kard", "ka-ft"]
MODES: tuple[Mode, ...] = ("ft", "rd", "kard", "ka-ft")
KNOWLEDGE_MODES: tuple[Mode, ...] = ("kard", "ka-ft")  # prompts with a Knowledge block
ANSWER_ONLY_MODES: tuple[Mode, ...] = ("ft", "ka-ft")  # targets that are the letter alone

INSTRUCTIONS: dict[str, str] = {
    "ft": "Answer the following multiple-choice question with the letter of the correct option.",
    "rd": "Answer the following multiple-choice question. Explain your reasoning step by step, then end with "
          "'Answer: <letter>'.",
    "kard": "Answer the following multiple-choice question using the knowledge below where it helps. Explain your "
            "reasoning step by step, then end with 'Answer: <letter>'.",
    "ka-ft": "Answer the following multiple-choice question with the letter of the correct option, using the "
             "knowledge below where it helps.",
}
CUES: dict[str, str] = {"ft": "Answer:", "rd": "Explanation:", "kard": "Explanation:", "ka-ft": "Answer:"}

# How the instructions name the answer in each format ("letter" is the wording above, unchanged).
_FORMAT_WORDS: dict[str, tuple[str, str]] = {
    "text": ("the text of the correct option", "'Answer: <option text>'"),
    "both": ("the letter and the text of the correct option", "'Answer: (<letter>) <option text>'"),
}
MIN_TRIMMED_PASSAGE_TOKENS = 16  # a passage cut shorter than this is noise, so drop it instead

Segment = tuple[str, bool]
"""A piece of a prompt and whether special-token strings in it are parsed (True: the template's own markup)
or kept as plain text (False: user, file and model text)."""


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
        segments: ``text`` cut into template markup (True) and plain text (False); joined they are ``text``.
            Tokenise each piece on its own, special tokens parsed only in the True ones.
        target_segments: the same for ``target``: the answer text plain, an appended eos token as markup.
    """

    text: str
    target: str | None
    passage_ids: tuple[str, ...]
    n_tokens: int
    trimmed: bool
    segments: tuple[Segment, ...] = ()
    target_segments: tuple[Segment, ...] = ()


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


# Stands in for the user text while a chat template is rendered: private-use characters no template produces.
_USER_MARK = "\ue000kardlite-user-text\ue001"
_PROBE = "Probe <&> 'quoted' \"text\"\n  with lines."


@functools.lru_cache(maxsize=32)
def chat_frame(chat_template: str, bos_token: str = "", eos_token: str = "") -> tuple[str, str]:
    """The markup a chat template puts around one user turn: ``(before, after)`` such that
    ``render_chat(user, ...) == before + user + after`` for a user text without edge whitespace.

    Raises:
        InputError: the template does not insert the user text exactly once and unchanged (it escapes or
            rewrites it), so the user text cannot be kept apart from the markup.
    """
    rendered = render_chat(_USER_MARK, chat_template, bos_token=bos_token, eos_token=eos_token)
    if rendered.count(_USER_MARK) != 1:
        raise InputError("the chat template does not insert the user text exactly once", field="chat_template")
    before, after = rendered.split(_USER_MARK)
    if render_chat(_PROBE, chat_template, bos_token=bos_token, eos_token=eos_token) != before + _PROBE + after:
        raise InputError("the chat template changes the user text (escapes or rewrites it); kardlite needs it "
                         "inserted as is", field="chat_template")
    return before, after


def format_passage(index: int, passage: PassageLike) -> str:
    title = (passage.title or "").strip()
    return f"[{index}] {title}: {passage.text.strip()}" if title else f"[{index}] {passage.text.strip()}"


def build_target(item: QAItem, mode: Mode, rationale: str | None = None,
                 answer_format: AnswerFormat = "letter") -> str:
    """The text after the cue: `` <rationale>\\nAnswer: X`` (rd, kard) or `` X`` (ft, ka-ft), where X is the
    answer in ``answer_format`` (see ``answer_string``)."""
    if item.label is None:
        raise InputError(f"item {item.id!r} has no gold label, so no training target", field="label")
    answer = answer_string(item.label, item.options[item.label], check_answer_format(answer_format))
    if mode in ANSWER_ONLY_MODES:
        return f" {answer}"
    if not rationale or not rationale.strip():
        raise InputError(f"item {item.id!r}: mode {mode!r} needs a rationale", field="rationale")
    return f" {rationale.strip()}\nAnswer: {answer}"


def instruction(mode: Mode, answer_format: AnswerFormat = "letter") -> str:
    """The instruction line of a prompt, naming the answer as ``answer_format`` writes it."""
    text = INSTRUCTIONS[mode]
    if answer_format == "letter":
        return text
    option, line = _FORMAT_WORDS[check_answer_format(answer_format)]
    return text.replace("the letter of the correct option", option).replace("'Answer: <letter>'", line)


def _user_text(item: QAItem, mode: Mode, passage_blocks: Sequence[str], answer_format: AnswerFormat = "letter"
               ) -> str:
    parts = [instruction(mode, answer_format), f"Question: {item.linearize()}"]
    if mode in KNOWLEDGE_MODES:
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
    count_segments: Callable[[Sequence[Segment]], int] | None = None,
    answer_format: AnswerFormat = "letter",
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
        count_segments: segments -> token count, each segment tokenised on its own with special tokens parsed
            only in template markup; when given it replaces ``count_tokens`` (the exact count of what the
            model reads; the student and the runtime pass one).
        answer_format: how the answer is written after ``Answer:``: ``letter`` (``B``), ``text`` (the option's
            text) or ``both`` (``(B) text``); it sets the instruction's wording and the target.

    Returns:
        A Prompt. The same arguments (less the target) give the same ``text`` in training and inference.

    Raises:
        PromptTooLongError: the question and options alone do not fit in ``max_tokens``.
        InputError: a chat template that does not insert the user text unchanged (see ``chat_frame``).

    Example:
        >>> item = QAItem("q1", "Which gas do plants take in?", ("oxygen", "carbon dioxide"), 1)
        >>> p = build_prompt(item, "rd", rationale="Plants fix CO2.", with_target=True)
        >>> p.text.endswith("Explanation:"), p.target
        (True, ' Plants fix CO2.\\nAnswer: B')
    """
    if mode not in MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; choose from {MODES}")
    check_answer_format(answer_format)
    frame = chat_frame(chat_template, bos_token, eos_token) if chat_template else None

    def render(blocks: Sequence[str]) -> tuple[Segment, ...]:
        user = _user_text(item, mode, blocks, answer_format)
        if frame is not None:
            return (frame[0], True), (user, False), (frame[1] + CUES[mode], True)
        return ((f"{user}\n{CUES[mode]}", False),)

    def count(segments: tuple[Segment, ...]) -> int:
        return count_segments(segments) if count_segments else count_tokens("".join(t for t, _ in segments))

    base = render([])
    base_tokens = count(base)
    if base_tokens > max_tokens:
        raise PromptTooLongError(
            f"item {item.id!r}: question and options need {base_tokens} tokens, over the budget of {max_tokens}; "
            "options are never cut, so raise max_tokens", field="question")

    blocks: list[str] = []
    used: list[str] = []
    trimmed = False
    segments, n_tokens = base, base_tokens
    for passage in passages if mode in KNOWLEDGE_MODES else ():
        block = format_passage(len(blocks) + 1, passage)
        candidate = render([*blocks, block])
        cand_tokens = count(candidate)
        if cand_tokens <= max_tokens:
            blocks.append(block)
            used.append(passage.id)
            segments, n_tokens = candidate, cand_tokens
            continue
        # The passage does not fit whole: keep the longest word prefix that fits, if worth keeping.
        trimmed = True
        words = block.split()
        lo, hi, best = 1, len(words) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            cut = render([*blocks, _trim_words(block, mid)])
            cut_tokens = count(cut)
            if cut_tokens <= max_tokens:
                best, lo = (mid, cut, cut_tokens), mid + 1
            else:
                hi = mid - 1
        if best and best[2] - n_tokens >= MIN_TRIMMED_PASSAGE_TOKENS:
            used.append(passage.id)
            segments, n_tokens = best[1], best[2]
        break
    if mode in KNOWLEDGE_MODES and len(used) < len(passages):
        trimmed = True

    target = None
    target_segments: tuple[Segment, ...] = ()
    if with_target:
        target = build_target(item, mode, rationale, answer_format)
        target_segments = ((target, False),)
        if chat_template and eos_token:
            target += eos_token
            target_segments += ((eos_token, True),)
    return Prompt(text="".join(t for t, _ in segments), target=target, passage_ids=tuple(used), n_tokens=n_tokens,
                  trimmed=trimmed, segments=segments, target_segments=target_segments)


@dataclass(frozen=True)
class _ProbePassage:
    id: str
    title: str
    text: str


# Two questions that share nothing after the instruction: the tokens their prompts start with are the part every
# prompt of a student starts with (``kardlite.gguf_student.shared_prefix``), whose KV cache is kept.
PROBES: tuple[tuple[QAItem, tuple[PassageLike, ...]], ...] = (
    (QAItem("probe-1", "Which gas do plants take in?", ("oxygen", "carbon dioxide"), None),
     (_ProbePassage("p1", "Plants", "Leaves take in carbon dioxide."),)),
    (QAItem("probe-2", "What melts ice?", ("heat", "cold", "salt water"), None),
     (_ProbePassage("p2", "Ice", "Heat melts ice."),)),
)


__all__ = ["ANSWER_FORMATS", "ANSWER_ONLY_MODES", "CUES", "INSTRUCTIONS", "KNOWLEDGE_MODES",
           "MIN_TRIMMED_PASSAGE_TOKENS", "MODES", "PROBES", "AnswerFormat", "Mode", "PassageLike", "Prompt",
           "PromptTooLongError", "Segment", "answer_string", "approx_token_count", "build_prompt", "build_target",
           "chat_frame", "check_answer_format", "format_passage", "instruction", "letter_token_ids",
           "option_verdicts", "parse_answer", "render_chat", "stated_answers", "vote"]
