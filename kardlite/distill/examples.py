"""Training examples for the three students of the paper: FT, RD and KARD (docs/method.md §5).

An example file holds the raw ingredients (question, rationale, passages) and their provenance, not a
rendered prompt: the prompt is built at training time with the student's own tokenizer and chat template
through ``kardlite.prompts.build_prompt``, so one example file serves any student and the token budget is
exact. One JSONL row per example::

    {"mode": "kard", "item_id": "7-980", "rationale_index": 3, "item": {...QAItem...},
     "rationale": "...", "passages": [{"id", "title", "text", "score"}],
     "retrieval": {"query": "rationale", "retriever": "bm25", "k": 5, "kb": "/path/to/kb"}}

KARD retrieves with the rationale text alone as the query (never with an appended ``Answer: X`` line, a
defect of the reference code, §8), one example per kept rationale, so different rationales of one question
get different passages.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from kardlite._io import atomic_write_json, iter_jsonl, sha256_file, write_jsonl
from kardlite.data.rationales import read_kept_rationales  # noqa: F401 (re-exported; its home is kardlite.data)
from kardlite.data.records import LETTERS, MAX_OPTIONS, QAItem
from kardlite.errors import ArtifactError, InputError
from kardlite.prompts import KNOWLEDGE_MODES, MODES, Mode
from kardlite.settings import FIRST_STAGES, KBRetriever

Retriever = KBRetriever
RETRIEVERS: tuple[str, ...] = FIRST_STAGES
Select = Literal["first", "shortest", "random"]
SELECTS: tuple[str, ...] = ("first", "shortest", "random")


def select_rationales(kept: Sequence[tuple[int, str]], n: int | None, how: Select = "first", *, seed: int = 42,
                      key: str = "") -> list[tuple[int, str]]:
    """Choose which kept rationales of one question train the student.

    Args:
        kept: (rationale index, text) pairs, index order.
        n: how many to keep; None keeps all.
        how: ``first`` (lowest index: the teacher's sampling order), ``shortest`` (fewest characters: shorter
            targets train faster and are cut less; ties by index) or ``random`` (seeded by ``seed`` and ``key``,
            so the choice does not change when other questions are added).
        seed, key: for ``random``; pass the question id as ``key``.

    Returns:
        The chosen pairs, in index order.

    Example:
        >>> select_rationales([(0, "a long one"), (1, "short"), (2, "mid size")], 2, "shortest")
        [(1, 'short'), (2, 'mid size')]
    """
    if how not in SELECTS:
        raise InputError(f"unknown selection {how!r}; choose from {SELECTS}", field="select")
    if n is None or n >= len(kept):
        return list(kept)
    if how == "first":
        chosen = list(kept[:n])
    elif how == "shortest":
        chosen = sorted(kept, key=lambda pair: (len(pair[1]), pair[0]))[:n]
    else:
        import hashlib
        import random

        rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big"))
        chosen = rng.sample(list(kept), n)
    return sorted(chosen)

def _passage_row(hit: Any) -> dict[str, Any]:
    # A kb Hit is a dict; a Passage is a dataclass. Keep what the prompt and an audit need.
    if isinstance(hit, dict):
        return {"id": str(hit["id"]), "title": hit.get("title", ""), "text": hit["text"],
                "score": float(hit.get("score", 0.0))}
    return {"id": str(hit.id), "title": hit.title, "text": hit.text, "score": None}


def build_examples(
    items: Sequence[QAItem],
    rationales: dict[str, list[tuple[int, str]]],
    mode: Mode,
    *,
    kb: Any = None,
    k: int = 5,
    retriever: Retriever = "bm25",
    max_items: int | None = None,
    per_item: int | None = None,
    select: Select = "first",
    seed: int = 42,
    kb_path: str | Path | None = None,
    query: Literal["rationale", "question"] = "rationale",
) -> list[dict[str, Any]]:
    """Build FT, RD, KARD or KA-FT training examples from questions and their kept rationales.

    Questions without a kept rationale drop out (for FT too, so every student sees the same questions).
    FT gives one example per question; RD, KARD and KA-FT one per chosen rationale. KA-FT rows are KARD rows
    (passages retrieved with the rationale) whose target is the answer alone: the two differ only by the
    rationale, so comparing them shows what the rationale adds to the passages.

    Args:
        items: the training questions (with gold labels).
        rationales: item id -> [(rationale index, text)], as from ``read_kept_rationales``.
        mode: ``ft``, ``rd`` or ``kard``.
        kb: a loaded ``kardlite.kb.KnowledgeBase`` (needed for ``kard`` only).
        k: passages kept per rationale (``kard``).
        retriever: ``bm25`` (the paper's), ``dense`` or ``hybrid``.
        max_items: keep only the first N questions (task order) that have a kept rationale.
        per_item: keep M kept rationales of each question (None: all), chosen by ``select``.
        select: ``first``, ``shortest`` or ``random`` (see ``select_rationales``).
        seed: for ``select="random"``.
        kb_path: recorded in the provenance.
        query: what retrieves the training passages: the ``rationale`` (KARD's way) or the linearised
            ``question`` (what a plain retrieve-then-answer system sees; an ablation of what the rationale buys).

    Returns:
        Example rows (see the module docstring).

    Raises:
        InputError: unknown mode/retriever, no question with a kept rationale, an item without a label or with
            a wrong option count.
        ArtifactError: ``kard`` without a knowledge base.
    """
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose from {MODES}", field="mode")
    if retriever not in RETRIEVERS:
        raise InputError(f"unknown retriever {retriever!r}; choose from {RETRIEVERS}", field="retriever")
    if mode in KNOWLEDGE_MODES and kb is None:
        raise ArtifactError(f"mode {mode!r} needs a knowledge base (build one with `kardlite kb build`)")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}", field="k")
    if query not in ("rationale", "question"):
        raise InputError(f"unknown query {query!r}; choose rationale or question", field="query")

    chosen: list[tuple[QAItem, list[tuple[int, str]]]] = []
    for item in items:
        if item.id not in rationales:
            continue
        _check_item(item)
        kept = select_rationales(rationales[item.id], per_item, select, seed=seed, key=item.id)
        chosen.append((item, kept))
        if max_items and len(chosen) >= max_items:
            break
    if not chosen:
        raise InputError(f"none of the {len(items)} questions has a kept rationale (are the ids the same?)",
                         field="rationales")

    rows: list[dict[str, Any]] = []
    if mode == "ft":
        for item, _ in chosen:
            rows.append({"mode": mode, "item_id": item.id, "rationale_index": None, "item": item.to_dict(),
                         "rationale": None, "passages": [], "retrieval": None})
        return rows

    pairs = [(item, index, text) for item, kept in chosen for index, text in kept]
    hits_per_pair: list[list[Any]] = [[] for _ in pairs]
    if mode in KNOWLEDGE_MODES:
        # The query is the rationale text only: the answer line is not part of it.
        queries = [text if query == "rationale" else item.linearize() for item, _, text in pairs]
        hits_per_pair = kb.search_many(queries, k, retriever=retriever)
    provenance = {"query": query, "retriever": retriever, "k": k,
                  "kb": str(kb_path) if kb_path is not None else None} if mode in KNOWLEDGE_MODES else None
    for (item, index, text), hits in zip(pairs, hits_per_pair, strict=True):
        rows.append({"mode": mode, "item_id": item.id, "rationale_index": index, "item": item.to_dict(),
                     "rationale": text, "passages": [_passage_row(h) for h in hits], "retrieval": provenance})
    return rows


def _check_item(item: QAItem, path: str | Path | None = None, line: int | None = None) -> None:
    if not 2 <= len(item.options) <= MAX_OPTIONS:
        raise InputError(f"item {item.id!r}: {len(item.options)} options, expected 2 to {MAX_OPTIONS}",
                         path=path, line=line, field="options")
    if item.label is None or not 0 <= item.label < len(item.options):
        raise InputError(f"item {item.id!r}: no valid gold label for {len(item.options)} options "
                         f"({LETTERS[:len(item.options)]})", path=path, line=line, field="label")


def save_examples(rows: Sequence[dict[str, Any]], out_path: str | Path, *, sources: dict[str, Any] | None = None
                  ) -> Path:
    """Write examples as JSONL (atomically) plus ``<out>.meta.json`` with counts and input hashes.

    Args:
        rows: from ``build_examples``.
        out_path: the JSONL to write.
        sources: input files (name -> path) whose sha256 goes into the meta file, e.g. tasks, rationales.

    Returns:
        The JSONL path.
    """
    out_path = Path(out_path)
    n = write_jsonl(out_path, rows)
    modes = sorted({r["mode"] for r in rows})
    meta = {
        "examples": n,
        "questions": len({r["item_id"] for r in rows}),
        "modes": modes,
        "retrieval": rows[0]["retrieval"] if rows else None,
        "sha256": sha256_file(out_path),
        "sources": {name: {"path": str(p), "sha256": sha256_file(p) if Path(p).is_file() else None}
                    for name, p in (sources or {}).items()},
    }
    atomic_write_json(out_path.with_name(out_path.name + ".meta.json"), meta)
    return out_path


def read_examples(path: str | Path) -> list[dict[str, Any]]:
    """Read and check an example file written by ``save_examples``.

    Returns:
        The rows, each with ``item`` turned into a QAItem.

    Raises:
        InputError: missing file, unknown mode, mixed modes, bad item (wrong option count, no label), an
            rd/kard row without rationale, or no rows at all.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("examples file not found (build it with `kardlite distill build`)", path=path)
    rows = []
    for line, obj in iter_jsonl(path):
        mode = obj.get("mode")
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}", path=path, line=line, field="mode")
        raw = obj.get("item")
        if not isinstance(raw, dict) or not isinstance(raw.get("options"), list):
            raise InputError("missing item with an options list", path=path, line=line, field="item")
        n = len(raw["options"])
        if not 2 <= n <= MAX_OPTIONS:
            raise InputError(f"{n} options, expected 2 to {MAX_OPTIONS}", path=path, line=line, field="item.options")
        label = raw.get("label")
        if not isinstance(label, int) or not 0 <= label < n:
            raise InputError(f"label {label!r} is not an option index below {n}", path=path, line=line,
                             field="item.label")
        obj["item"] = QAItem.from_dict(raw)
        if mode != "ft" and not (obj.get("rationale") or "").strip():
            raise InputError(f"mode {mode!r} needs a rationale", path=path, line=line, field="rationale")
        rows.append(obj)
    if not rows:
        raise InputError("no examples in file", path=path)
    if len({r["mode"] for r in rows}) > 1:
        raise InputError("examples of several modes in one file; train one student per mode", path=path,
                         field="mode")
    return rows
