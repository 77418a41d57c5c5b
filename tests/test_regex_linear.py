"""Every regular expression in kardlite runs in linear time: each one meets 100,000-character adversarial inputs and
must finish each in under a second (a backtracking pattern takes minutes on them). An audit finds every ``re`` call
with a literal pattern in the package, so a new pattern without adversarial inputs here fails the suite."""

from __future__ import annotations

import ast
import functools
import re
import time
from pathlib import Path

import pytest

import kardlite

PACKAGE = Path(kardlite.__file__).parent
N = 100_000
# Not audited here: the rationale filter has its own 100,000-character tests (tests/rationales/test_filter.py).
EXEMPT_FILES = {"rationales/filter.py"}
_FUNCS = {"compile": 1, "search": 2, "match": 2, "fullmatch": 2, "findall": 2, "finditer": 2, "split": 3, "sub": 4}


@functools.lru_cache(maxsize=1)
def _patterns() -> dict[tuple[str, str], int]:
    """(file, pattern) -> flags of every ``re.<func>("literal", ...)`` call in the package."""
    found: dict[tuple[str, str], int] = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        if file.relative_to(PACKAGE).as_posix() in EXEMPT_FILES:
            continue
        tree = ast.parse(file.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "re"
                    and node.func.attr in _FUNCS and node.args):
                continue
            pattern = node.args[0]
            rel = file.relative_to(PACKAGE).as_posix()
            assert isinstance(pattern, ast.Constant) and isinstance(pattern.value, str), \
                f"{rel}:{node.lineno}: a pattern built at run time cannot be audited; use a literal"
            flag_node = next((k.value for k in node.keywords if k.arg == "flags"), None)
            if flag_node is None and len(node.args) > _FUNCS[node.func.attr]:
                flag_node = node.args[_FUNCS[node.func.attr]]
            flags = eval(compile(ast.Expression(flag_node), rel, "eval"), {"re": re}) if flag_node else 0
            found[(rel, pattern.value)] = int(flags)
    return found


# Inputs shaped against each pattern (the text a pattern nearly matches, repeated or followed by a long run), plus
# generic runs that every pattern meets.
GENERIC = [" " * N, "\n" * N, " \t\r\n" * (N // 4), "a" * N, "a " * (N // 2), "#" * N, "A. " * (N // 3),
           "\u2028\x85\x0c" * (N // 3)]
SHAPED: dict[str, list[str]] = {
    "kb/ingest.py": ["a" + " " * N + "b", "a\n" + " \r" * (N // 2), "x \n \t" * (N // 5), "a\r" * (N // 2),
                     "# a" + " " * N + "x", "\r\n" * (N // 2)],
    "kb/bm25.py": ["ab_" * (N // 3), "é" * N],
    "distill/evaluate.py": ["answer" + " " * N, "answer is" + " " * N + ":" + " " * 10 + "(", "answer: B" + " " * N,
                            "answer: (" + " " * N + "B" + " " * N, "answer " * (N // 7)],
    "teacher/fewshot.py": ["So, the answer is (" * (N // 19), "### " + " " * N, "### a" + " \t" * (N // 2) + "x",
                           "A. " + "x" * N, "\n### a" * (N // 6)],
    "data/loaders.py": ["1" * N, "12a" * (N // 3)],
    "answers.py": ["answer" + " " * N + "x", "answer is" + " " * N + ":" + " " * N + "(" + " " * N,
                   "answer " * (N // 7), "answer: (" + " " * N + "b" + " " * N + "x", "Answer" + " " * N + "x",
                   "Answer is" + " " * N, " " * N + "Answer"],
    "runtime/pipeline.py": ["\n" * N, "a\u2028" * (N // 2), "\x1c\x1d\x1e" * (N // 3)],
    "runtime/confidence.py": ["a" * N + ".", "word " * (N // 5), ". " * (N // 2)],
    "teacher/release.py": ["1" * N + ".jso", "1" * N],
    "rerank/train.py": ["cuda:" + "1" * N + "x", "cuda" * (N // 4)],
    "demo/view.py": ["A." + " " * N + "x", "(A)" + " " * N],
    "demo/adapter.py": ["a" * N + "g", "0" * N, ".lora_A" * (N // 7), ".lora_B.default" * (N // 15) + ".weigh",
                        "x.lora_A.default.weight" + "x" * N],
    "errors.py": ["\x1b[31m" * (N // 5), "x\u202e" * (N // 2), "é\x85" * (N // 2)],
}


def test_every_pattern_is_covered() -> None:
    files = {rel for rel, _ in _patterns()}
    assert files <= set(SHAPED), f"patterns without adversarial inputs in: {sorted(files - set(SHAPED))}"
    assert len(_patterns()) >= 10


@pytest.mark.parametrize(("rel", "pattern"), sorted(_patterns()),
                         ids=lambda v: v[:40])
def test_pattern_is_linear_on_adversarial_input(rel: str, pattern: str) -> None:
    regex = re.compile(pattern, _patterns()[(rel, pattern)])
    worst = 0.0
    for text in GENERIC + SHAPED[rel]:
        assert len(text) >= N - 20
        start = time.process_time()  # CPU time: other processes on a shared machine do not count
        sum(1 for _ in regex.finditer(text))
        regex.split(text, maxsplit=1000)
        regex.fullmatch(text)
        worst = max(worst, time.process_time() - start)
    assert worst < 1.0, f"{rel}: {pattern!r} took {worst:.2f} s on a 100,000-character input"


def test_markdown_title_and_chunks_are_linear() -> None:
    """The Markdown heading parser (no regex) and the chunker on the inputs that hung the old heading pattern."""
    from kardlite.kb.ingest import _md_title, chunk_spans

    for text in ["# a" + " " * N + "x", "#" * N, "# " + "#" * N + " x", "   # " * (N // 5), "# a\n" * (N // 4)]:
        start = time.process_time()
        _md_title(text)
        chunk_spans(text, 200, 40)
        assert time.process_time() - start < 1.0
    assert _md_title("# a" + " " * 2000 + "x") == "a" + " " * 2000 + "x"
    assert _md_title("## Title ##") == "Title" and _md_title("# C#") == "C#" and _md_title("#tag\n# Real") == "Real"
