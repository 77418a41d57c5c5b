"""An append-only JSONL audit trail of the runtime's answers (``load(bundle, audit_log=path)``).

One line per answer: when, which bundle (the sha256 of its ``manifest.json``, which pins every file of it), the
question and options, the passages shown with their scores, the decoding settings, the rationale, the letter or
the abstention, and the confidence. Each line is one ``write`` of a complete line followed by ``fsync``, under a
lock (threads) and an exclusive ``flock`` (processes sharing the file), so lines never interleave. A process killed
in the middle of a write can leave a torn last line; opening the log removes it (the answer it described was never
returned) so that every line of the file stays a JSON object.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kardlite.errors import InputError

try:  # POSIX only; elsewhere the thread lock alone orders the lines of one process
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class AuditLog:
    """An append-only JSONL file; safe to share between threads (and processes on POSIX).

    Example:
        >>> log = AuditLog("runs/audit.jsonl")  # doctest: +SKIP
        >>> log.append({"question": "...", "letter": "B"})  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        """Open (or create) the log, repairing a torn last line.

        Raises:
            InputError: the path is a folder or cannot be opened for appending.
        """
        self.path = Path(path)
        if self.path.is_dir():
            raise InputError("is a directory, expected an audit log file", path=self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            raise InputError(f"cannot open the audit log ({err.strerror})", path=self.path) from None
        self.repaired = 0  # bytes of a torn last line dropped when the log was opened
        with self._locked():
            self.repaired = _repair(self._fd)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line, then flush it to disk (``fsync``)."""
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._locked():
            view = memoryview(line)
            while view:  # os.write may write less than asked (signals, full disks); O_APPEND keeps it at the end
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)

    def close(self) -> None:
        """Close the file (further appends raise ``InputError``)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    @contextlib.contextmanager
    def _locked(self) -> Any:
        with self._lock:
            if self._fd < 0:
                raise InputError("the audit log is closed", path=self.path)
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _repair(fd: int) -> int:
    """Drop a last line without its newline; a complete JSON object that only lacks the newline gets one."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    # Read back from the end in blocks until a newline: the torn part is at most one record long.
    end, tail = size, b""
    while end > 0:
        start = max(0, end - 65536)
        block = os.pread(fd, end - start, start)
        tail = block + tail
        end = start
        if b"\n" in block:
            break
    if tail.endswith(b"\n"):
        return 0
    cut = tail.rfind(b"\n") + 1  # 0 when the file holds one torn line only
    last = tail[cut:]
    try:
        if isinstance(json.loads(last.decode("utf-8")), dict):
            os.write(fd, b"\n")
            os.fsync(fd)
            return 0
    except (UnicodeDecodeError, ValueError):
        pass
    os.ftruncate(fd, size - len(last))
    os.fsync(fd)
    return len(last)


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")
