"""The one reader of kept-rationale files, shared by student distillation and reranker training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kardlite._io import iter_jsonl
from kardlite.errors import InputError

# Field names accepted in a kept-rationales file (the filter stage's output, or a hand-made file).
ID_FIELDS = ("item_id", "id", "qid")
INDEX_FIELDS = ("rationale_index", "sample", "index", "rationale_id", "idx")
TEXT_FIELDS = ("text", "rationale")


def _first(obj: dict[str, Any], names: Sequence[str]) -> tuple[str | None, Any]:
    for name in names:
        if name in obj:
            return name, obj[name]
    return None, None


def read_kept_rationales(path: str | Path) -> dict[str, list[tuple[int, str]]]:
    """Read a kept-rationales JSONL: one line per kept rationale with an item id, a rationale index and text.

    Also accepts ``.jsonl.gz``. Lines with ``"kept": false`` are skipped (a filter log may hold both), so no
    stage ever trains on a rejected rationale.

    Args:
        path: the file.

    Returns:
        item id -> [(rationale index, text)] in index order.

    Raises:
        InputError: unreadable file, missing field, empty text, duplicate (item, index), or no kept rationale.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("kept-rationales file not found", path=path)
    kept: dict[str, list[tuple[int, str]]] = {}
    seen: set[tuple[str, int]] = set()
    for line, obj in iter_jsonl(path):  # plain or .gz
        if obj.get("kept") is False:
            continue
        _, item_id = _first(obj, ID_FIELDS)
        if not isinstance(item_id, str | int) or str(item_id) == "":
            raise InputError(f"missing item id (one of {ID_FIELDS})", path=path, line=line, field="item_id")
        name, index = _first(obj, INDEX_FIELDS)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise InputError(f"missing or invalid rationale index (one of {INDEX_FIELDS})", path=path, line=line,
                             field=name or "rationale_index")
        name, text = _first(obj, TEXT_FIELDS)
        if not isinstance(text, str) or not text.strip():
            raise InputError("missing or empty rationale text", path=path, line=line, field=name or "text")
        key = (str(item_id), index)
        if key in seen:
            raise InputError(f"duplicate rationale {index} of item {item_id!r}", path=path, line=line)
        seen.add(key)
        kept.setdefault(str(item_id), []).append((index, text.strip()))
    if not kept:
        raise InputError("no kept rationales in file", path=path)
    return {k: sorted(v) for k, v in kept.items()}
