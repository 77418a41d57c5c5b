"""Reading a student's answer, in one place for training filters, evaluation and the runtime.

- :func:`parse_answer` / :func:`stated_answers` / :func:`option_verdicts`: what a text states, read by a linear
  token scan (model output is untrusted: no backtracking pattern runs over it).
- :func:`answer_done`: the stop rule of generation (a complete ``Answer: X`` has been written).
- :func:`rationale` and :func:`forced_context`: the rationale cut (the text before its last answer line), and what a
  forced answer is scored after (that cut + ``"\nAnswer:"``).
- :func:`letter_token_ids` and :func:`letter_prefix`: which token writes each letter next.
- :func:`vote`: self-consistency's majority.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Literal

from kardlite.data.records import LETTERS
from kardlite.errors import InputError

AnswerFormat = Literal["letter", "text", "both"]  # how a student writes its answer after "Answer:"
ANSWER_FORMATS: tuple[AnswerFormat, ...] = ("letter", "text", "both")
FORCE_CUE = "\nAnswer:"  # after the rationale, where a forced answer's letter is scored
# Linear time on model output: possessive runs of whitespace cannot be split between the two \s (the old
# pattern, with a leading \s* too, took 7.9 s on "Answer" + 10,000 spaces).
ANSWER_LINE = re.compile(r"\bAnswer\s*+(?:is)?\s*+[:：]", re.IGNORECASE)
# The text so far ends with an answer line's prefix: the next token is the letter (checked on a short tail only).
ANSWER_END = re.compile(r"\bAnswer\s*+(?:is)?\s*+[:：]\s*+$", re.IGNORECASE)
ANSWER_END_TAIL = 24


def answer_done(text: str, n_options: int) -> bool:
    """True once the last ``Answer:`` is followed by a valid letter and then a non-letter: safe to stop generating.

    A plain scan (no regular expression), linear in the text: this runs at every generated token.
    """
    at = text.rfind("Answer:")
    if at < 0:
        return False
    rest = text[at + len("Answer:"):].lstrip(" (")
    return len(rest) > 1 and rest[0] in LETTERS[:n_options] and not rest[1].isalpha()


def _before_answer_line(text: str) -> str:
    matches = list(ANSWER_LINE.finditer(text))
    return text[: matches[-1].start()] if matches else text


def rationale(text: str) -> str:
    """The output before its last answer line (the whole text if there is none), stripped: what is shown."""
    return _before_answer_line(text).strip()


def forced_context(text: str) -> str:
    """What a forced (or likelihood-scored) answer is read after: the output up to its last answer line, then
    ``"\nAnswer:"``. Leading space is kept: it is model output, tokenised as generated."""
    return _before_answer_line(text).rstrip() + FORCE_CUE


def check_answer_format(answer_format: str) -> AnswerFormat:
    """``answer_format`` if it is one of ANSWER_FORMATS, else an InputError naming the choices."""
    if answer_format not in ANSWER_FORMATS:
        raise InputError(f"unknown answer format {answer_format!r}; choose {', '.join(ANSWER_FORMATS)}",
                         field="answer_format")
    return answer_format  # type: ignore[return-value]


def answer_string(index: int, option: str, answer_format: AnswerFormat = "letter") -> str:
    """What follows ``Answer:`` for option ``index``: ``B``, its text, or ``(B) text`` (training and scoring alike).

    Example:
        >>> answer_string(1, " hydrochlorothiazide ", "both")
        '(B) hydrochlorothiazide'
    """
    letter = LETTERS[index]
    if answer_format == "letter":
        return letter
    if answer_format == "text":
        return option.strip()
    return f"({letter}) {option.strip()}"


def option_continuations(options: Sequence[Sequence[str]], answer_format: AnswerFormat = "letter"
                         ) -> list[list[str]]:
    """What option-text scoring scores after ``Answer:``: `` <text>``, or `` (X) <text>`` in the ``both`` format."""
    fmt: AnswerFormat = "both" if answer_format == "both" else "text"
    return [[" " + answer_string(i, o, fmt) for i, o in enumerate(opts)] for opts in options]


def letter_prefix(text_before: str) -> str:
    """What precedes the letter token given the text before it: ``" "`` after ``Answer:``, ``""`` after a space."""
    return "" if text_before[-1:].isspace() else " "


def letter_token_ids(encode: Callable[[str], list[int]], n_options: int, *, prefix: str = " ") -> list[int]:
    """The first token of ``prefix + X`` for each of the first ``n_options`` letters: what a model writes next
    when it answers with a letter, for scoring answers by letter likelihood (PyTorch, llama.cpp, the judge).

    Args:
        encode: text -> token ids, without special tokens.
        n_options: how many letters.
        prefix: what precedes the letter (" " after a cue such as ``Answer:``; "" for a seq2seq decoder).

    Raises:
        InputError: a letter gives no token, or two letters share their first token.
    """
    ids = []
    for letter in LETTERS[:n_options]:
        toks = encode(prefix + letter)
        if not toks:
            raise InputError(f"the tokenizer gives no token for {letter!r}", field="tokenizer")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise InputError(f"option letters share a first token ({ids}); letter scoring is impossible with this "
                         "tokenizer", field="tokenizer")
    return ids


# ---------------------------------------------------------------------------------------------------------------
# Reading the stated answer. Model output is untrusted text, so no backtracking pattern runs over it: the text is
# split once into tokens (one regex whose alternatives are single character classes, so each match is found without
# backtracking), and every phrasing below is a bounded look-around over that token list. Work is linear in the text.

_TOKEN_RE = re.compile(r"\w+|\n|[^\w\s]")
_COLONS = frozenset({":", "："})
_QUOTES = frozenset({'"', "'", "“", "”", "‘", "’", "`", "*"})
_OPEN = frozenset({"(", "["})
_CLOSE = frozenset({")", "]"})
_NOUNS = frozenset({"answer", "option", "choice"})
# "the answer to this question is", "the correct answer, therefore, is", "the answer in this case would be"
_PRE_VERB = frozenset({",", "to", "for", "of", "in", "this", "that", "the", "question", "questions", "problem", "case",
                       "above", "given", "here", "therefore", "thus", "then", "hence", "so", "final"})
_VERBS = (("is",), ("would", "be"), ("must", "be"), ("should", "be"), ("will", "be"), ("has", "to", "be"),
          ("seems", "to", "be"), ("appears", "to", "be"), ("remains",), ("=",))
_VERB_STARTS = frozenset(v[0] for v in _VERBS)
# "is clearly (B)", "is therefore option (B)", "is most likely: B"
_POST_VERB = frozenset({",", "still", "clearly", "likely", "most", "probably", "definitely", "certainly", "indeed",
                        "therefore", "thus", "hence", "so", "then", "actually", "option", "choice", "letter"})
# Words that may follow a stated answer without making it part of a longer phrase ("A because", "no, since").
_AFTER = frozenset({"because", "since", "as", "which", "so", "but", "therefore", "thus", "hence", "given", "due",
                    "for", "here", "this", "that", "it", "is", "and"})
# An adjective phrase that makes "the ... answer/option/choice" a verdict.
_VERDICT_ADJ = frozenset({"correct", "right", "best", "final", "true", "only", "most", "likely", "accurate",
                          "appropriate", "plausible", "suitable", "logical", "reasonable", "probable", "possible",
                          "valid", "sensible"})
_CONNECTIVES = frozenset({"so", "thus", "hence", "therefore", "consequently", "conclusion", "overall", "ultimately",
                          "finally", "summary"})
_HEDGES = frozenset({"if", "whether", "not", "assume", "assuming", "suppose", "supposing", "unless", "nor"})
_ADVERBS = frozenset({"therefore", "thus", "clearly", "indeed", "still", "hence", "so", ",", "definitely", "certainly",
                      "undoubtedly", "then"})
_STOPS = frozenset({".", "\n", "!", "?", ";"})
_MAX_FILL = 6


class _Toks:
    """The text's tokens (words, single punctuation marks, line breaks) and their lower-case forms."""

    __slots__ = ("low", "text")

    def __init__(self, text: str) -> None:
        self.text: list[str] = _TOKEN_RE.findall(text)
        self.low: list[str] = [t.lower() for t in self.text]

    def __len__(self) -> int:
        return len(self.text)

    def word(self, i: int) -> bool:
        c = self.text[i][0]
        return c.isalnum() or c == "_"


def _option_words(options: Sequence[str]) -> list[tuple[str, ...]]:
    return [tuple(t for t in _TOKEN_RE.findall(o.lower()) if t[0].isalnum() or t[0] == "_") for o in options]


def _match_option(toks: _Toks, i: int, opts: list[tuple[str, ...]]) -> int | None:
    """The option whose whole (normalised) text starts at token ``i``; the longest wins, a tie is ambiguous."""
    n = len(toks)
    best: list[tuple[int, int]] = []  # (words matched, option index)
    for start in (i, i + 1):
        if start != i and not (i < n and toks.low[i] in ("the", "a", "an")):
            break
        for k, words in enumerate(opts):
            if not words:
                continue
            j, ok = start, True
            for w in words:
                # Punctuation inside an option's text is ignored ("sprouting, blooming"), a line break is not.
                while j < n and not toks.word(j) and toks.text[j] != "\n":
                    j += 1
                if j >= n or toks.low[j] != w:
                    ok = False
                    break
                j += 1
            if ok and (j >= n or not toks.word(j) or toks.low[j] in _AFTER):
                best.append((len(words), k))
        if best:
            break
    if not best:
        return None
    top = max(m for m, _ in best)
    winners = {k for m, k in best if m == top}
    if len(winners) != 1:
        return None
    (k,) = winners
    # The same text under two letters is ambiguous too.
    return None if sum(w == opts[k] for w in opts) > 1 else k


def _letter_at(toks: _Toks, i: int, valid: str, *, lower_ok: bool) -> int | None:
    """The option index if token ``i`` is an option letter standing alone (not an article, not "A or B")."""
    n = len(toks)
    if i >= n:
        return None
    t = toks.text[i]
    if len(t) != 1 or not t.isalpha() or t.upper() not in valid:
        return None
    paren = i > 0 and toks.text[i - 1] in _OPEN and i + 1 < n and toks.text[i + 1] in _CLOSE
    if t.islower() and not (lower_ok or paren):
        return None
    j = i + 1
    if j < n and toks.text[j] in _CLOSE:
        j += 1
    if j < n:
        nxt, low = toks.text[j], toks.low[j]
        if nxt == "/" or low in ("or", "nor"):
            return None  # "A or B", "A/B": no single answer
        if low == "and" and j + 1 < n and (len(toks.text[j + 1]) == 1 or toks.text[j + 1] in _OPEN):
            return None  # "(A) and (B)"
        # "The answer is A cell": an article, not a letter (unless in parentheses or after a colon).
        if not paren and not lower_ok and t in "AI" and toks.word(j) and nxt.islower() and low not in _AFTER:
            return None
    return valid.index(t.upper())


def _verb_at(toks: _Toks, i: int) -> int:
    """Tokens taken by a copula starting at ``i`` (0 if none)."""
    if i >= len(toks) or toks.low[i] not in _VERB_STARTS:
        return 0
    for verb in _VERBS:
        if tuple(toks.low[i:i + len(verb)]) == verb:
            return len(verb)
    return 0


def _target(toks: _Toks, i: int, valid: str, opts: list[tuple[str, ...]] | None, *, colon: bool,
            verbless: bool) -> int | None:
    """The option index stated at token ``i`` (after skipping quotes, "(", "option", "clearly", ...), or None."""
    n = len(toks)
    for _ in range(_MAX_FILL):
        if i >= n:
            return None
        if toks.text[i] in _QUOTES or toks.text[i] in _OPEN or (not verbless and toks.low[i] in _POST_VERB):
            i += 1
        elif toks.text[i] in _COLONS and not colon:
            colon = True
            i += 1
        else:
            break
    letter = _letter_at(toks, i, valid, lower_ok=colon)
    if letter is not None:
        if verbless and not colon:
            # "Answer (A) is incorrect", "Answer (B), television ...": the letter is a subject, not a verdict; the
            # bare form counts only where the statement ends ("Answer B.", "answer (B)" at the end of a line).
            j = i + 1 + (i + 1 < n and toks.text[i + 1] in _CLOSE)
            while j < n and j - i < 4 and toks.text[j] in _QUOTES:
                j += 1
            if j < n and toks.text[j] not in _STOPS:
                return None
        return letter
    if opts is not None and (colon or not verbless):
        return _match_option(toks, i, opts)
    return None


def _forward(toks: _Toks, c: int, valid: str, opts: list[tuple[str, ...]] | None) -> tuple[int, int] | None:
    """A statement that starts at the cue noun ``toks[c]``: "answer is (B)", "answer: B", "the best option is C"."""
    n = len(toks)
    i = c + 1
    if i < n and toks.text[i] in _COLONS:
        k = _target(toks, i + 1, valid, opts, colon=True, verbless=False)
        return None if k is None else (c, k)
    for _ in range(_MAX_FILL + 1):
        v = _verb_at(toks, i)
        if v:
            k = _target(toks, i + v, valid, opts, colon=False, verbless=False)
            return None if k is None else (c, k)
        if i < n and toks.low[i] in _PRE_VERB:
            i += 1
        else:
            break
    if toks.low[c] == "answer":
        # Today's bare form "answer B" / "answer (B)": upper-case letters only.
        k = _target(toks, c + 1, valid, None, colon=False, verbless=True)
        return None if k is None else (c, k)
    return None


def _backward(toks: _Toks, i: int, valid: str) -> tuple[int, int] | None:
    """A verdict whose letter comes first: "option (C) is the correct answer", "making (A) the best choice",
    "Therefore, option (D) is correct"."""
    n = len(toks)
    j = i + 1 + (i + 1 < n and toks.text[i + 1] in _CLOSE)
    if j >= n or not (toks.text[j] == "," or toks.low[j] in _VERB_STARTS or toks.low[j] == "the"):
        return None  # cheap exit: no verdict can follow
    letter = _letter_at(toks, i, valid, lower_ok=False)
    if letter is None:
        return None
    paren = i > 0 and toks.text[i - 1] in _OPEN
    # Look back past "(", "option", "choice" for a hedge ("if option A is the answer") or a connective.
    k = i - 1 - paren
    while k >= 0 and toks.low[k] in ("option", "choice", "answer", "letter"):
        k -= 1
    if not paren and k + 1 == i and k >= 0 and toks.word(k) and toks.low[k] not in _CONNECTIVES:
        return None  # a bare capital inside a sentence ("making A the ...") is too likely a word
    before = toks.low[max(0, k - 3):k + 1]
    if not _HEDGES.isdisjoint(before):
        return None
    connective = not _CONNECTIVES.isdisjoint(before)
    # An appositive: "Option (D), plants sprouting, blooming and wilting, is the correct answer".
    if j < n and toks.text[j] == "," and (paren or k + 1 < i):
        for end in range(j + 1, min(n, j + 16)):
            if toks.text[end] in _STOPS:
                break
            if toks.text[end] == "," and _verb_at(toks, end + 1):
                j = end + 1
                break
    v = _verb_at(toks, j)
    if v == 0 and not (j < n and toks.low[j] == "the"):
        return None
    j += v
    while j < n and toks.low[j] in _ADVERBS:
        j += 1
    the = j < n and toks.low[j] == "the"
    j += the
    adjectives = 0
    while j < n and toks.low[j] in _VERDICT_ADJ and adjectives < 3:
        adjectives += 1
        j += 1
    noun = j < n and (toks.low[j] in _NOUNS or toks.low[j] == "one")
    if the and noun:  # "is the answer", "is the correct option", "the most likely choice"
        return i, letter
    if not the and not noun and connective and toks.low[j - 1] in ("correct", "right"):
        return i, letter  # "Therefore, (D) is correct"
    return None


def _check_n(n_options: int, options: Sequence[str] | None) -> None:
    if not isinstance(n_options, int) or n_options < 1:
        raise InputError(f"n_options must be a positive number of options, got {n_options!r}", field="n_options")
    if options is not None and len(options) != n_options:
        raise InputError(f"{len(options)} option texts for n_options={n_options}", field="options")


_GROUP = frozenset({",", "and", "(", ")", "[", "]", "option", "options", "choice", "choices", "answer", "answers"})
_LINKS = (("is",), ("are",), ("was",), ("were",), ("would", "be"), ("can", "be"), ("could", "be"),
          ("seems", "to", "be"), ("appears", "to", "be"), ("must", "be"))
_LINK_STARTS = frozenset(v[0] for v in _LINKS)
_LINK_ADVERBS = frozenset({"also", "clearly", "therefore", "thus", "all", "both", "simply", "definitely", "obviously",
                           "entirely", "completely", "likely", "then", "hence", "so", ","})
_WRONG = frozenset({"incorrect", "wrong", "false", "unrelated", "irrelevant", "inaccurate", "implausible", "invalid",
                    "eliminated", "untrue", "impossible", "illogical", "nonsensical", "unlikely", "inappropriate"})
# "is not correct", "is not the best answer"; not "is not an insect" (a property of the option, not a verdict).
_NOT_RIGHT = frozenset({"correct", "right", "true", "accurate", "valid", "related", "relevant", "plausible", "likely",
                        "applicable", "supported"})
_NOT_THE = frozenset({"correct", "right", "best", "answer", "most", "only"})
# A caveat after "is correct" ("correct, but not the best", "correct in the sense that") makes it no endorsement.
_CAVEATS = frozenset({"but", "however", "although", "though", "partially", "partly", "somewhat", "extent", "sense",
                      "while", "yet"})


def option_verdicts(text: str, n_options: int) -> tuple[set[int], set[int]]:
    """Options ``text`` calls right and options it rules out, from per-option remarks.

    Weaker evidence than :func:`stated_answers`: "Option (B) is correct because ..." endorses B and "Options (A),
    (C) and (D) are incorrect" rules out three, but such remarks also appear in discussion (an option can be
    "correct" as a fact yet not the answer). Read the same way: letters in parentheses or after "option(s)",
    then a copula, then the verdict; hedged forms ("if option A is ...") are skipped. Linear time.

    Returns:
        (endorsed, ruled_out) option indices.

    Raises:
        InputError: ``n_options`` < 1.

    Example:
        >>> option_verdicts("Option (A) is incorrect. Options (B) and (C) are also wrong. Option (D) is correct.", 4)
        ({3}, {0, 1, 2})
    """
    _check_n(n_options, None)
    valid = LETTERS[:n_options]
    toks = _Toks(text)
    n = len(toks)
    endorsed: set[int] = set()
    ruled_out: set[int] = set()
    i = 0
    while i < n:
        t = toks.text[i]
        opener = i > 0 and (toks.text[i - 1] in _OPEN or toks.low[i - 1] in ("option", "options", "choice", "choices"))
        if not (len(t) == 1 and t.isupper() and t in valid and opener):
            i += 1
            continue
        if not _HEDGES.isdisjoint(toks.low[max(0, i - 5):i]):
            i += 1
            continue
        # The group "(A), (B), and (C)": letters joined by commas, "and", parentheses and "option(s)".
        letters = {valid.index(t)}
        last = valid.index(t)
        j = i + 1
        while j < n and j - i < 24 and (toks.low[j] in _GROUP or (len(toks.text[j]) == 1 and toks.text[j].isupper()
                                                                   and toks.text[j] in valid)):
            if len(toks.text[j]) == 1 and toks.text[j].isupper():
                last = valid.index(toks.text[j])
                letters.add(last)
            j += 1
        if j > i + 1 and toks.text[j - 1] == ",":
            # An appositive: 'Option (C), "stayed the same," is incorrect'.
            for end in range(j, min(n, j + 16)):
                if toks.text[end] in _STOPS:
                    break
                if toks.text[end] == ",":
                    after = end + 1
                    while after < n and after - end < 4 and toks.text[after] in _QUOTES:
                        after += 1
                    if after < n and toks.low[after] in _LINK_STARTS and any(
                            tuple(toks.low[after:after + len(v)]) == v for v in _LINKS):
                        j = after
                        break
        link = next((len(v) for v in _LINKS if tuple(toks.low[j:j + len(v)]) == v), 0) \
            if j < n and toks.low[j] in _LINK_STARTS else 0
        if link:
            if toks.low[j] in ("is", "was"):
                letters = {last}  # "option (B), and option (D) is incorrect": the verb is D's alone
            k = j + link
            while k < n and k - j < 8 and toks.low[k] in _LINK_ADVERBS:
                k += 1
            also = "also" in toks.low[j + link:k]
            word = toks.low[k] if k < n else ""
            nxt = toks.low[k + 1] if k + 1 < n else ""
            nxt2 = toks.low[k + 2] if k + 2 < n else ""
            if word in _WRONG or (word == "not" and (nxt in _NOT_RIGHT or (nxt == "the" and nxt2 in _NOT_THE))):
                ruled_out |= letters
            elif word in ("correct", "right") and not also and nxt not in ("in", "to", "only"):
                end = k + 1
                while end < n and end - k < 40 and toks.text[end] not in _STOPS:
                    end += 1
                if _CAVEATS.isdisjoint(toks.low[k + 1:end]):
                    endorsed |= letters
        i = max(j, i + 1)
    return endorsed, ruled_out


def stated_answers(text: str, n_options: int, options: Sequence[str] | None = None) -> list[int]:
    """Every answer ``text`` states, in order of appearance, as option indices.

    Statements read: ``Answer: X`` (lower-case letters only with the colon, so "the answer is a cell" is not A),
    "the answer is (B)", "the answer to this question is (B) no", "The correct answer, therefore, is (B)", "the best
    option would be C", "option (C) is the correct answer", "making (A) the best choice", "Therefore, option (D) is
    correct"; with ``options`` also an option's whole text after such a cue ("Therefore, the answer is no.",
    "Answer: hydrochlorothiazide"), matched case-, punctuation- and spacing-insensitively, longest option first
    (a tie is ambiguous and reads as nothing). Letters beyond ``n_options``, "A or B", and hedged forms ("if option
    A is the answer") are not statements. Linear time in ``len(text)``.

    Args:
        text: model or teacher output.
        n_options: how many options the question has (letters A.. are valid).
        options: the option texts, in letter order, to also read answers given as text.

    Returns:
        Option indices, one per statement, in text order (a rationale that changes its mind has two).

    Raises:
        InputError: ``n_options`` < 1, or ``options`` has another length.

    Example:
        >>> stated_answers("Option (A) is the correct answer... no wait, the answer is (C).", 4)
        [0, 2]
        >>> stated_answers("Therefore, the answer is no.", 2, ["yes", "no"])
        [1]
    """
    _check_n(n_options, options)
    valid = LETTERS[:n_options]
    opts = _option_words(options) if options is not None else None
    toks = _Toks(text)
    found: dict[int, int] = {}  # token position of the statement -> option index
    for c, low in enumerate(toks.low):
        hit = None
        if low == "answer" or (low in ("option", "choice") and c > 0 and toks.low[c - 1] in _VERDICT_ADJ):
            hit = _forward(toks, c, valid, opts)
        elif len(low) == 1 and low.isalpha():
            hit = _backward(toks, c, valid)
        if hit is not None:
            found.setdefault(hit[0], hit[1])
    return [found[pos] for pos in sorted(found)]


def parse_answer(text: str, n_options: int, options: Sequence[str] | None = None) -> int | None:
    """The option index of the last answer ``text`` states (see :func:`stated_answers`), or None ("invalid").

    Bare letters elsewhere in the text never count.

    Raises:
        InputError: ``n_options`` < 1, or ``options`` has another length.

    Example:
        >>> parse_answer("B looks right... Answer: C", 4)
        2
        >>> parse_answer("Answer: E", 4) is None
        True
        >>> parse_answer("Therefore, the answer is no.", 2, ["yes", "no"])
        1
    """
    said = stated_answers(text, n_options, options)
    return said[-1] if said else None


def vote(answers: Sequence[int | None]) -> int | None:
    """Majority vote over parsed answers (None = invalid output, no vote); used by evaluation and the runtime.

    Ties go to the tied answer whose first vote came earliest in ``answers``.

    Example:
        >>> vote([None, 2, 1, 1, 2])
        2
        >>> vote([None, None]) is None
        True
    """
    valid = [v for v in answers if v is not None]
    if not valid:
        return None
    counts = Counter(valid)
    best = max(counts.values())
    return next(v for v in valid if counts[v] == best)
