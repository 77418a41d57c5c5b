"""The embedded demo task: a small clinical-pharmacology / physiology knowledge base and questions.

Written by the kardlite authors for teaching; not medical advice. See README.md beside this file.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from kardlite._io import iter_jsonl
from kardlite.data.loaders import load_generic
from kardlite.data.records import QAItem
from kardlite.errors import InputError
from kardlite.kb.passage import Passage

Split = Literal["train", "dev", "test", "all"]
DISCLAIMER = "Educational demo written for kardlite; not medical advice."


def demo_dir() -> Path:
    """The folder holding the demo files inside the installed package."""
    return Path(str(resources.files("kardlite.demo")))


def demo_passages() -> list[Passage]:
    """All demo knowledge-base passages (title + text), in file order."""
    passages = []
    for path in sorted(demo_dir().glob("passages_*.jsonl")):
        for line, row in iter_jsonl(path):
            for key in ("id", "title", "text"):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise InputError("missing or empty", path=path, line=line, field=key)
            passages.append(Passage(row["id"], row["title"], row["text"], source=f"kardlite-demo/{path.name}"))
    return passages


def demo_questions(split: Split = "all") -> list[QAItem]:
    """Demo questions of one split. ``meta`` holds ``split``, ``passage_ids`` (the gold passages) and
    ``rationales`` (two teacher-style rationales for each train question, written by hand)."""
    if split not in ("train", "dev", "test", "all"):
        raise InputError(f"demo split must be train, dev, test or all, got {split!r}", field="split")
    items: list[QAItem] = []
    for path in sorted(demo_dir().glob("questions_*.jsonl")):
        items += load_generic(path)
    return [i for i in items if split == "all" or i.meta.get("split") == split]
