"""Append-only JSONL store of teacher samples that survives SIGKILL at any moment.

One line per record. ``{"type": "sample", ...}`` lines hold one rationale each: item id, sample index, teacher
backend and model, sampling settings, prompt kind/name/hash, text, finish reason, token usage and time.
``{"type": "prompt", "prompt_hash", "messages"}`` lines hold each exact prompt once (every sample of an item
shares it), so a sample's prompt text is one hash look-up away in the same file.

Crash safety: every append is one ``os.write`` of whole lines on an ``O_APPEND`` descriptor, then ``fsync``. A
kill can at worst leave the last line torn; opening for writing truncates the file back to its last newline.
Resuming asks the store which (item, sample) pairs exist and requests only the others, so nothing is
duplicated. A lock file (``flock``, released by the kernel when the holder dies) keeps a second writer out.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kardlite.errors import ArtifactError, InputError

SAMPLE_FIELDS = ("item_id", "sample", "backend", "model", "sampling", "prompt_kind", "prompt_name", "prompt_hash",
                 "text", "finish_reason", "usage", "time")


class StoreLockedError(ArtifactError):
    """Another process holds the store's lock."""


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass
class StoreContents:
    """What a store holds, read in file order.

    Attributes:
        samples: sample records, the first one for each (item_id, sample) pair.
        prompts: prompt hash -> chat messages.
        duplicates: sample lines whose (item_id, sample) pair was already seen (always 0 for stores we wrote).
        torn_tail: True if the file ended in a partial line (ignored here, repaired when opened for writing).
    """

    samples: list[dict[str, Any]] = field(default_factory=list)
    prompts: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    duplicates: int = 0
    torn_tail: bool = False

    def done(self) -> set[tuple[str, int]]:
        return {(s["item_id"], s["sample"]) for s in self.samples}

    def by_item(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for s in self.samples:
            out.setdefault(s["item_id"], []).append(s)
        for rows in out.values():
            rows.sort(key=lambda r: r["sample"])
        return out


def _parse(data: bytes, path: Path) -> StoreContents:
    contents = StoreContents()
    end = data.rfind(b"\n") + 1
    contents.torn_tail = end < len(data)
    seen: set[tuple[str, int]] = set()
    for lineno, raw in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            # A complete line that does not parse is not a crash artefact: someone edited or damaged the file.
            raise ArtifactError(f"{path}, line {lineno}: corrupt store line ({err})") from None
        kind = rec.get("type") if isinstance(rec, dict) else None
        if kind == "prompt":
            contents.prompts[rec["prompt_hash"]] = rec["messages"]
        elif kind == "sample":
            missing = [k for k in ("item_id", "sample", "text") if k not in rec]
            if missing:
                raise ArtifactError(f"{path}, line {lineno}: sample record lacks {missing}")
            key = (rec["item_id"], rec["sample"])
            if key in seen:
                contents.duplicates += 1
                continue
            seen.add(key)
            contents.samples.append(rec)
        else:
            raise ArtifactError(f"{path}, line {lineno}: not a kardlite rationale store record (type={kind!r})")
    return contents


def read_store(path: str | Path) -> StoreContents:
    """Read a store without locking or repairing it (a torn last line is skipped).

    Raises:
        InputError: the file does not exist.
        ArtifactError: a complete line is corrupt or not a store record.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError("rationale store not found", path=path) from None
    return _parse(data, path)


def is_store(path: str | Path) -> bool:
    """True if the file's first line is a kardlite store record."""
    try:
        with open(path, "rb") as fh:
            first = json.loads(fh.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and first.get("type") in ("sample", "prompt")


class RationaleStore:
    """A store opened for appending: holds the lock, repairs a torn tail, and knows what is done.

    Use as a context manager::

        with RationaleStore("runs/obqa/rationales.jsonl") as store:
            todo = [k for k in wanted if k not in store.done]
            store.append(samples, prompts={h: messages})
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreLockedError(f"{self.path} is being written by another process (lock {self.path}.lock)") from None
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            data = self._read_all()
            self.repaired_bytes = 0
            end = data.rfind(b"\n") + 1
            if end < len(data):
                # A write was cut by a crash: drop the partial line so the next append starts clean.
                os.ftruncate(self._fd, end)
                os.fsync(self._fd)
                self.repaired_bytes = len(data) - end
                data = data[:end]
            contents = _parse(data, self.path)
        except BaseException:
            self.close()
            raise
        self.contents = contents
        self.done: set[tuple[str, int]] = contents.done()
        self.prompt_hashes: set[str] = set(contents.prompts)

    def _read_all(self) -> bytes:
        chunks = []
        offset = 0
        while chunk := os.pread(self._fd, 1 << 24, offset):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def append(self, samples: Iterable[dict[str, Any]], prompts: dict[str, list[dict[str, str]]] | None = None) -> int:
        """Append sample records (and prompts not yet stored) in one write; skip pairs already stored.

        Args:
            samples: records with at least ``item_id``, ``sample`` and ``text``; ``type`` is set here.
            prompts: prompt hash -> messages; each hash is written once per store.

        Returns:
            The number of sample records written.
        """
        lines: list[str] = []
        new_hashes = []
        for h, messages in (prompts or {}).items():
            if h not in self.prompt_hashes:
                lines.append(json.dumps({"type": "prompt", "prompt_hash": h, "messages": messages}, ensure_ascii=False))
                new_hashes.append(h)
        keys = []
        for rec in samples:
            key = (rec["item_id"], rec["sample"])
            if key in self.done or key in keys:
                continue
            keys.append(key)
            lines.append(json.dumps({"type": "sample", **rec}, ensure_ascii=False))
        if not lines:
            return 0
        payload = ("\n".join(lines) + "\n").encode("utf-8")
        view = memoryview(payload)
        # One write is the norm; a short write (signal, full disk) is continued, and a kill in between leaves a torn
        # tail that the next open repairs.
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self.done.update(keys)
        self.prompt_hashes.update(new_hashes)
        return len(keys)

    def close(self) -> None:
        for name in ("_fd", "_lock_fd"):
            fd = getattr(self, name, None)
            if fd is not None:
                with contextlib.suppress(OSError):
                    if name == "_lock_fd":
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
                setattr(self, name, None)

    def __enter__(self) -> RationaleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_samples(path: str | Path) -> Iterator[dict[str, Any]]:
    """The sample records of a store, in file order."""
    yield from read_store(path).samples
