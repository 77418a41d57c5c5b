"""Teacher prompts: KARD's answer-conditioned rationalisation, and plain chain-of-thought.

The worked examples live in editable text files (``kardlite/teacher/prompts/<name>.txt``): a ``### system``
section, then ``### example`` sections, each with the question and its ``X. option`` lines, an ``Answer: X``
line and an ``Explanation:`` paragraph. A prompt is a list of chat messages; its hash (over the exact
messages) is stored with every sample, and the messages themselves once per item in the store.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from kardlite._io import read_text
from kardlite.data.records import LETTERS, QAItem
from kardlite.errors import InputError

PromptKind = Literal["rationalize", "cot"]
PROMPT_KINDS: tuple[PromptKind, ...] = ("rationalize", "cot")
BUILTIN_PROMPTS = ("obqa", "medical", "generic")

RATIONALIZE_ASK = "The correct answer is ({letter}) {option}. Explain step by step why this is the correct answer."
COT_ASK = "Think step by step, then finish with 'So, the answer is (X).' where X is the letter of the correct option."
# Both kinds end rationales with "So, the answer is (X)." so the stated-answer filter can check them.
RATIONALIZE_ASK += " Finish with 'So, the answer is ({letter}).'"

Message = dict[str, str]


@dataclass(frozen=True)
class Example:
    """One worked example: the question, its gold option and the explanation we wrote."""

    item: QAItem
    explanation: str


@dataclass(frozen=True)
class FewShot:
    """A parsed prompt file."""

    name: str
    system: str
    examples: tuple[Example, ...]
    source_hash: str


def _clean_explanation(text: str, answer: str, path: Path, index: int) -> str:
    text = " ".join(text.split())
    # Examples end with the same final sentence the cot prompt asks for; a wrong letter there would teach noise.
    stated = re.findall(r"So, the answer is \(([A-Z])\)", text)
    if stated and stated[-1] != answer:
        raise InputError(f"example {index}: explanation concludes ({stated[-1]}) but Answer is {answer}", path=path)
    if not stated:
        text += f" So, the answer is ({answer})."
    return text


def _parse_example(block: str, path: Path, index: int) -> Example:
    lines = block.strip().splitlines()
    q_lines, options, answer, expl = [], [], None, []
    state = "question"
    for line in lines:
        if state == "question" and line.startswith("Question:"):
            q_lines.append(line[len("Question:"):].strip())
        elif (m := re.match(r"^([A-J])\. (.+)$", line)) and state == "question":
            if m.group(1) != LETTERS[len(options)]:
                raise InputError(f"example {index}: option letters must run A, B, C...", path=path)
            options.append(m.group(2).strip())
        elif line.startswith("Answer:"):
            answer = line[len("Answer:"):].strip()
            state = "answer"
        elif line.startswith("Explanation:"):
            expl.append(line[len("Explanation:"):].strip())
            state = "explanation"
        elif state == "explanation":
            expl.append(line.strip())
        elif state == "question" and not options:
            q_lines.append(line.strip())
        elif line.strip():
            raise InputError(f"example {index}: unexpected line {line!r}", path=path)
    if not q_lines or len(options) < 2 or not answer or answer not in LETTERS[: len(options)] or not expl:
        raise InputError(f"example {index} needs 'Question:', at least two 'X. option' lines, 'Answer: X' "
                         "with a valid letter and 'Explanation:'", path=path)
    item = QAItem(f"example-{index}", " ".join(q_lines), tuple(options), LETTERS.index(answer))
    return Example(item, _clean_explanation(" ".join(expl), answer, path, index))


def load_fewshot(name_or_path: str | Path) -> FewShot:
    """Read a prompt file: a built-in name (``obqa``, ``medical``, ``generic``) or a path to your own.

    Args:
        name_or_path: built-in name or file path.

    Returns:
        The parsed FewShot.

    Raises:
        InputError: unknown name, missing file or a malformed section.
    """
    if str(name_or_path) in BUILTIN_PROMPTS:
        name = str(name_or_path)
        path = Path(str(resources.files("kardlite.teacher").joinpath("prompts", f"{name}.txt")))
    else:
        path = Path(name_or_path)
        if not path.exists() and path.suffix == "":
            raise InputError(f"unknown prompt {str(name_or_path)!r}; use one of {BUILTIN_PROMPTS} or a file path")
        name = path.stem
    text = read_text(path)
    body = "\n".join(line for line in text.splitlines() if line.startswith("###") or not line.startswith("#"))
    sections = re.split(r"^### +(\w+)[ \t]*$", body, flags=re.MULTILINE)
    system, examples = "", []
    for kind, content in zip(sections[1::2], sections[2::2], strict=True):
        if kind == "system":
            system = " ".join(content.split())
        elif kind == "example":
            examples.append(_parse_example(content, path, len(examples) + 1))
        else:
            raise InputError(f"unknown section '### {kind}' (use system or example)", path=path)
    if not system or not examples:
        raise InputError("a prompt file needs a '### system' section and at least one '### example'", path=path)
    return FewShot(name, system, tuple(examples), hashlib.sha256(text.encode("utf-8")).hexdigest())


def _user_turn(item: QAItem, kind: PromptKind) -> str:
    if kind == "rationalize":
        if item.label is None:
            raise InputError(f"item {item.id!r} has no gold label; rationalisation needs one (use --prompt-kind cot)",
                             field="label")
        ask = RATIONALIZE_ASK.format(letter=item.answer_letter, option=item.options[item.label])
    else:
        ask = COT_ASK
    return f"Question: {item.linearize()}\n{ask}"


def build_messages(item: QAItem, fewshot: FewShot, kind: PromptKind = "rationalize") -> list[Message]:
    """The chat messages that ask the teacher for one rationale of ``item``.

    ``rationalize`` (KARD) shows the gold answer and asks why it is right; ``cot`` asks for reasoning and a final
    ``So, the answer is (X).`` without revealing the answer. Worked examples are user/assistant turn pairs.

    Example:
        >>> fs = load_fewshot("generic")
        >>> msgs = build_messages(QAItem("q", "2+2?", ("3", "4"), 1), fs)
        >>> msgs[-1]["content"].splitlines()[-1][:30]
        'The correct answer is (B) 4. E'
    """
    if kind not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; choose from {PROMPT_KINDS}")
    messages: list[Message] = [{"role": "system", "content": fewshot.system}]
    for ex in fewshot.examples:
        messages.append({"role": "user", "content": _user_turn(ex.item, kind)})
        messages.append({"role": "assistant", "content": ex.explanation})
    messages.append({"role": "user", "content": _user_turn(item, kind)})
    return messages


def prompt_hash(messages: list[Message]) -> str:
    """sha256 over the canonical JSON of the messages: the identity of one exact prompt."""
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()
