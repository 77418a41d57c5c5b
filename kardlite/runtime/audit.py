"""An append-only JSONL audit trail of the runtime's answers (``load(bundle, audit_log=path)``).

One line per answer: when, which bundle (the sha256 of its ``manifest.json``, which pins every file of it), the
question and options, the passages shown with their scores, the decoding settings, the rationale, the letter or
the abstention, and the confidence. Each line is one ``write`` of a complete line followed by ``fsync``, under a
lock (threads) and an exclusive ``flock`` (processes sharing the file), so lines never interleave. A process killed
in the middle of a write can leave a torn last line; opening the log removes it (the answer it described was never
returned) so that every line of the file stays a JSON object.

Only a file the log itself could have written is ever changed: an existing file must be a regular file whose first
and last complete lines are JSON objects, and a torn tail is cut only when it is the start of one (``{``).
Anything else (notes, a device such as ``/dev/null``, a folder) is refused when the log is opened, before any
question is answered. A write that fails later (a full disk) raises :class:`AuditLogError`, which carries the
answer that could not be logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kardlite.errors import InputError, KardliteError

try:  # POSIX only; elsewhere the thread lock alone orders the lines of one process
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class AuditLogError(InputError):
    """The audit log could not be written; ``answer`` is the answer whose record was not written (when there is
    one), so that a caller can still show it before failing."""

    def __init__(self, message: str, *, path: str | Path, answer: Any = None) -> None:
        super().__init__(message, path=path)
        self.answer = answer


class AuditLog:
    """An append-only JSONL file; safe to share between threads (and processes on POSIX).

    Example:
        >>> log = AuditLog("runs/audit.jsonl")  # doctest: +SKIP
        >>> log.append({"question": "...", "letter": "B"})  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        """Open (or create) the log, repairing a torn last line.

        Raises:
            InputError: the path is a folder, a device or another special file, under a file, cannot be opened
                for appending, or is an existing file that is not an audit log (it is left untouched).
        """
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fd = -1
        if self.path.is_dir():
            raise InputError("is a directory, expected an audit log file", path=self.path)
        if self.path.exists() and not self.path.is_file():
            raise InputError("is not a regular file (a device, a pipe or a socket); the audit log must be one",
                             path=self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create the audit log's folder ({err.strerror or err})", path=self.path) from None
        try:
            # O_NOFOLLOW: a link swapped in after the checks above is not followed
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            raise InputError(f"cannot open the audit log ({err.strerror or err})", path=self.path) from None
        self._fd = fd
        self.repaired = 0  # bytes of a torn last line dropped when the log was opened
        try:
            with self._locked():
                self.repaired = _repair(self._fd, self.path)
        except BaseException:
            self.close()
            raise

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line, then flush it to disk (``fsync``).

        Raises:
            AuditLogError: the write or the flush failed (a full disk, an I/O error); a partly written line is
                removed the next time the log is opened.
        """
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._locked():
            try:
                view = memoryview(line)
                while view:  # os.write may write less than asked (signals, full disks); O_APPEND keeps it at the end
                    view = view[os.write(self._fd, view):]
                os.fsync(self._fd)
            except OSError as err:
                raise AuditLogError(f"cannot write the audit log ({err.strerror or err})", path=self.path) from None

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


_BLOCK = 65536


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line.decode("utf-8")), dict)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False


def _not_a_log(path: Path, why: str) -> KardliteError:
    return InputError(f"is not a kardlite audit log ({why}); it is left as it is: give a new file or an existing "
                      "audit log", path=path)


def _repair(fd: int, path: Path) -> int:
    """Drop a last line without its newline; a complete JSON object that only lacks the newline gets one.

    Refuses (InputError, the file unchanged) a file that the log did not write: its first or last complete line is
    not a JSON object, or its torn tail is not the start of one.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    first = _first_line(fd, size)
    if first is not None and not _is_record(first):
        raise _not_a_log(path, "line 1 is not a JSON object")
    # Read back from the end in blocks until the last complete line is whole (a newline before it) or the start.
    end, tail = size, b""
    while end > 0 and tail.count(b"\n") < 2:
        start = max(0, end - _BLOCK)
        tail = os.pread(fd, end - start, start) + tail
        end = start
    *complete, torn = tail.split(b"\n")
    if complete and not _is_record(complete[-1]):
        raise _not_a_log(path, "its last complete line is not a JSON object")
    if not torn:
        return 0
    if _is_record(torn):
        os.write(fd, b"\n")
        os.fsync(fd)
        return 0
    if not torn.startswith(b"{"):
        raise _not_a_log(path, "its last line is neither a JSON object nor the start of one")
    os.ftruncate(fd, size - len(torn))
    os.fsync(fd)
    return len(torn)


def _first_line(fd: int, size: int) -> bytes | None:
    """The file's first line without its newline; None when the file has no newline at all."""
    out, pos = b"", 0
    while pos < size:
        block = os.pread(fd, min(_BLOCK, size - pos), pos)
        if not block:
            break
        nl = block.find(b"\n")
        if nl >= 0:
            return out + block[:nl]
        out, pos = out + block, pos + len(block)
    return None


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")
