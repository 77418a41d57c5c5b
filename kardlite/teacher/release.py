"""Existing rationales as a teacher: KARD's release folder, the compact JSONL(.gz), or another kardlite store.

Alignment with the task file is checked, never assumed: a count or id mismatch is an InputError, because a
silent shift would pair every question with another question's rationales.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kardlite._io import iter_jsonl, read_json
from kardlite.data.records import QAItem
from kardlite.errors import ArtifactError, InputError
from kardlite.rationales.store import RationaleStore, is_store, now, read_store
from kardlite.teacher.base import Sample, Teacher, TeachSummary

_RELEASE_NAME = re.compile(r"^(\d+)\.json$")
CHUNK = 2000  # samples per store append when importing (one write + fsync each)


def _read_compact(path: Path, items: Sequence[QAItem]) -> Iterator[tuple[QAItem, str, list[Sample]]]:
    """``{"id", "teacher_model", "rationales": [..]}`` per line, in task order."""
    count = 0
    for lineno, row in iter_jsonl(path):  # plain or .gz
        if count >= len(items):
            raise InputError(f"more rows than the task's {len(items)} questions", path=path, line=lineno)
        item = items[count]
        if str(row.get("id")) != item.id:
            raise InputError(f"id {row.get('id')!r} where the task file has {item.id!r} at position {count + 1}: "
                             "rationales are not aligned with the task", path=path, line=lineno, field="id")
        texts = row.get("rationales")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise InputError("expected a list of strings", path=path, line=lineno, field="rationales")
        count += 1
        yield item, str(row.get("teacher_model") or "unknown"), [Sample(t.strip()) for t in texts]
    if count != len(items):
        raise InputError(f"{count} rows for {len(items)} task questions: rationales are not aligned", path=path)


def _read_release(folder: Path, items: Sequence[QAItem]) -> Iterator[tuple[QAItem, str, list[Sample]]]:
    """KARD's release layout: ``00000.json``, ``00001.json``, ... one raw chat completion per task row."""
    numbered = {}
    for p in folder.iterdir():
        if m := _RELEASE_NAME.match(p.name):
            numbered[int(m.group(1))] = p
    if len(numbered) != len(items) or (numbered and max(numbered) != len(items) - 1):
        raise InputError(f"{len(numbered)} numbered .json files (highest {max(numbered, default=-1)}) for "
                         f"{len(items)} task questions: the folder does not align with the task file", path=folder)
    for i, item in enumerate(items):
        path = numbered[i]
        resp = read_json(path)
        choices = resp.get("choices") if isinstance(resp, dict) else None
        if not isinstance(choices, list) or not choices:
            raise InputError("no 'choices' list: not a chat completion", path=path, field="choices")
        samples = []
        for j, choice in enumerate(choices):
            content = (choice.get("message") or {}).get("content") if isinstance(choice, dict) else None
            if not isinstance(content, str):
                raise InputError(f"choice {j} has no message content", path=path, field="choices")
            samples.append(Sample(content.strip(), choice.get("finish_reason")))
        usage = resp.get("usage") or {}
        if samples:
            samples[0] = Sample(samples[0].text, samples[0].finish_reason, int(usage.get("prompt_tokens", 0) or 0),
                                int(usage.get("completion_tokens", 0) or 0))
        yield item, str(resp.get("model") or "unknown"), samples


def _read_store(path: Path, items: Sequence[QAItem]) -> Iterator[tuple[QAItem, str, list[Sample]]]:
    by_item = read_store(path).by_item()
    known = {item.id for item in items}
    unknown = [i for i in by_item if i not in known]
    if unknown:
        raise InputError(f"{len(unknown)} item ids not in the task file (first: {unknown[0]!r})", path=path,
                         field="item_id")
    for item in items:
        rows = by_item.get(item.id, [])
        # Sample indices are kept dense from 0 in the new store, in the old order.
        yield item, str(rows[0].get("model") if rows else "unknown"), [
            Sample(r["text"], r.get("finish_reason"), (r.get("usage") or {}).get("prompt_tokens", 0),
                   (r.get("usage") or {}).get("completion_tokens", 0)) for r in rows]


def read_source(source: str | Path, items: Sequence[QAItem]) -> Iterator[tuple[QAItem, str, list[Sample]]]:
    """(item, teacher model, samples) for each task item, from any supported rationale source.

    Raises:
        InputError: missing source, unknown layout, or rationales that do not align with ``items``.
    """
    path = Path(source)
    if path.is_dir():
        return _read_release(path, items)
    if not path.is_file():
        raise InputError("rationale source not found", path=path)
    if path.suffix != ".gz" and is_store(path):
        return _read_store(path, items)
    return _read_compact(path, items)


class ImportTeacher(Teacher):
    """Replays existing rationales into a store, as if a teacher had just written them.

    Args:
        source: a KARD release folder (``NNNNN.json`` chat completions), a compact JSONL(.gz)
            (``{"id", "teacher_model", "rationales"}``) or a kardlite store.
    """

    backend = "import"

    def __init__(self, source: str | Path) -> None:
        super().__init__(model="unknown", temperature=float("nan"), max_tokens=0)
        self.source = Path(source)

    def sampling(self) -> dict[str, Any]:
        return {"source": str(self.source)}

    def generate(self, items: Sequence[QAItem], n: int | None = None, *, store: str | Path, progress: bool = True,
                 **_: Any) -> TeachSummary:
        """Copy up to ``n`` samples per item (all when None) from the source into ``store``; resumable.

        Raises:
            InputError: the source does not align with ``items`` (checked before anything is written).
        """
        start = time.monotonic()
        summary = TeachSummary(items=len(items))
        # Read everything first so a mis-aligned source writes nothing.
        rows = list(read_source(self.source, items))
        with RationaleStore(store) as st:
            for rec in st.contents.samples[:1]:
                if rec.get("backend") != self.backend:
                    raise ArtifactError(f"{st.path} holds samples from backend {rec.get('backend')!r}; import into "
                                        "another store so sample numbers do not collide")
            pending: list[dict[str, Any]] = []
            bar = tqdm(total=sum(len(s[:n] if n else s) for _, _, s in rows), disable=not progress, unit="sample",
                       desc="import", dynamic_ncols=True)
            for item, model, samples in rows:
                for idx, sample in enumerate(samples[:n] if n else samples):
                    summary.wanted += 1
                    if (item.id, idx) in st.done:
                        summary.skipped += 1
                        continue
                    pending.append({"item_id": item.id, "sample": idx, "backend": self.backend, "model": model,
                                    "sampling": self.sampling(), "prompt_kind": None, "prompt_name": None,
                                    "prompt_hash": None, "text": sample.text, "finish_reason": sample.finish_reason,
                                    "usage": {"prompt_tokens": sample.prompt_tokens,
                                              "completion_tokens": sample.completion_tokens},
                                    "time": now()})
                    summary.prompt_tokens += sample.prompt_tokens
                    summary.completion_tokens += sample.completion_tokens
                if len(pending) >= CHUNK:
                    summary.written += st.append(pending)
                    bar.update(len(pending))
                    pending = []
            summary.written += st.append(pending)
            bar.update(len(pending))
            bar.close()
        summary.seconds = time.monotonic() - start
        return summary
