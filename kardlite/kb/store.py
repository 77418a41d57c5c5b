"""Passages in SQLite: row n (0-based) is document n of every index, so indexes store only integers."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from kardlite.errors import ArtifactError, InputError
from kardlite.kb.passage import Passage

FILENAME = "passages.sqlite"
_SCHEMA = """
CREATE TABLE passages (
    row INTEGER PRIMARY KEY,      -- 0-based document number shared with the BM25 and HNSW indexes
    id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    source TEXT NOT NULL,
    meta TEXT NOT NULL            -- JSON object
);
"""
_BATCH = 900  # stays under SQLite's default limit of host parameters in one IN (...)


def write_store(path: Path, passages: Iterable[Passage], *, batch: int = 2000) -> Iterator[Passage]:
    """Write passages to a new database, yielding each one after it is accepted.

    A generator so that the caller indexes while the store fills: the corpus is read once.

    Args:
        path: the database file to create (must not exist).
        passages: the corpus; ids must be unique and texts non-empty.
        batch: rows per insert transaction.

    Yields:
        Each passage, in order.

    Raises:
        InputError: a duplicate id, an empty text, or a meta that is not JSON-serialisable.
    """
    con = sqlite3.connect(path)
    try:
        con.executescript(_SCHEMA)
        rows: list[tuple] = []
        seen: set[str] = set()
        for n, passage in enumerate(passages):
            if not isinstance(passage, Passage):
                raise InputError(f"passage {n} is a {type(passage).__name__}, expected Passage")
            _check_fields(n, passage)
            if passage.id in seen:
                raise InputError(f"duplicate passage id {passage.id!r}", path=passage.source or None, field="id")
            if not passage.text.strip():
                raise InputError(f"passage {passage.id!r} has an empty text", path=passage.source or None,
                                 field="text")
            try:
                meta = json.dumps(passage.meta, ensure_ascii=False)
                meta.encode("utf-8")
            except (TypeError, ValueError, RecursionError) as err:
                raise InputError(f"passage {passage.id!r}: meta is not JSON-serialisable ({err})",
                                 field="meta") from None
            seen.add(passage.id)
            rows.append((n, passage.id, passage.title, passage.text, passage.source, meta))
            if len(rows) >= batch:
                con.executemany("INSERT INTO passages VALUES (?, ?, ?, ?, ?, ?)", rows)
                rows.clear()
            yield passage
        con.executemany("INSERT INTO passages VALUES (?, ?, ?, ?, ?, ?)", rows)
        con.commit()
    finally:
        con.close()


def _check_fields(n: int, passage: Passage) -> None:
    """Types and text of one passage, checked before SQLite sees them (it would raise IntegrityError on a None
    title, or UnicodeEncodeError on a lone surrogate)."""
    where = passage.source if isinstance(passage.source, str) and passage.source else None
    for name in ("id", "title", "text", "source"):
        value = getattr(passage, name)
        if not isinstance(value, str):
            raise InputError(f"passage {n} ({passage.id!r}): {name} is a {type(value).__name__}, expected a string",
                             path=where, field=name)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise InputError(f"passage {n} ({passage.id!r}): {name} is not valid Unicode (a lone surrogate at "
                             f"character {err.start})", path=where, field=name) from None
    if not passage.id.strip() or passage.id != passage.id.strip():
        raise InputError(f"passage {n}: id {passage.id!r} is empty or has leading/trailing whitespace", path=where,
                         field="id")
    if not isinstance(passage.meta, dict):
        raise InputError(f"passage {n} ({passage.id!r}): meta is a {type(passage.meta).__name__}, expected a dict",
                         path=where, field="meta")


class PassageStore:
    """Read-only access to a passages database; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        # Read-only URI: a loaded KB can never be altered through this object.
        self._lock = threading.Lock()
        try:
            self._con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            self.count = self._query("SELECT COUNT(*) FROM passages")[0][0]
        except sqlite3.Error as err:
            raise ArtifactError(f"cannot read the passage store {path}: {err}") from None

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self._con.execute(sql, params).fetchall()

    def by_rows(self, rows: Sequence[int]) -> list[Passage]:
        """Passages for document numbers, in the order given."""
        found: dict[int, Passage] = {}
        unique = list(dict.fromkeys(int(r) for r in rows))
        for i in range(0, len(unique), _BATCH):
            chunk = unique[i:i + _BATCH]
            sql = f"SELECT * FROM passages WHERE row IN ({','.join('?' * len(chunk))})"
            for rec in self._query(sql, chunk):
                found[rec[0]] = _passage(rec)
        return [found[int(r)] for r in rows]

    def rows_of(self, ids: Sequence[str]) -> list[int]:
        """Document numbers for passage ids, in the order given; an unknown id is an InputError."""
        found: dict[str, int] = {}
        unique = list(dict.fromkeys(ids))
        for i in range(0, len(unique), _BATCH):
            chunk = unique[i:i + _BATCH]
            sql = f"SELECT id, row FROM passages WHERE id IN ({','.join('?' * len(chunk))})"
            found.update(self._query(sql, chunk))
        missing = [pid for pid in unique if pid not in found]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise InputError(f"{len(missing)} unknown passage id(s): {shown}", field="id")
        return [found[pid] for pid in ids]

    def __iter__(self) -> Iterator[Passage]:
        # Page by row number so iteration holds the lock only briefly and never the whole table in memory.
        last = -1
        while True:
            recs = self._query("SELECT * FROM passages WHERE row > ? ORDER BY row LIMIT 1000", (last,))
            if not recs:
                return
            yield from (_passage(rec) for rec in recs)
            last = recs[-1][0]

    def close(self) -> None:
        with self._lock:
            self._con.close()


def _passage(rec: tuple) -> Passage:
    _, pid, title, text, source, meta = rec
    return Passage(id=pid, title=title, text=text, source=source, meta=json.loads(meta))
