"""The audit log on its own: torn last lines, appends from many threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kardlite.errors import InputError
from kardlite.runtime.audit import AuditLog


def _lines(path: Path) -> list[dict]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def test_torn_last_line_is_dropped_and_the_log_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        for i in range(3):
            log.append({"n": i, "text": "ü" * 50})
    data = path.read_bytes()
    torn = data[: len(data) - 20]  # the third record cut in the middle (inside a multi-byte character)
    path.write_bytes(torn)
    with AuditLog(path) as log:
        assert log.repaired == len(torn) - data.index(b"\n", data.index(b"\n") + 1) - 1
        log.append({"n": 3})
    assert [r["n"] for r in _lines(path)] == [0, 1, 3]


def test_complete_record_without_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"n": 0}\n{"n": 1}')
    with AuditLog(path) as log:
        assert log.repaired == 0
        log.append({"n": 2})
    assert [r["n"] for r in _lines(path)] == [0, 1, 2]


def test_a_file_that_is_one_torn_line_is_emptied(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"question": "wha')
    with AuditLog(path) as log:
        assert log.repaired == 17
        log.append({"n": 0})
    assert _lines(path) == [{"n": 0}]


def test_threads_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    big = "x" * 70_000  # larger than a pipe buffer or a page: a torn or interleaved write would show

    def work(t: int) -> None:
        for i in range(10):
            log.append({"thread": t, "i": i, "text": f"{t}-{i}-" + big})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    log.close()
    rows = _lines(path)
    assert len(rows) == 80
    assert sorted((r["thread"], r["i"]) for r in rows) == [(t, i) for t in range(8) for i in range(10)]
    assert all(r["text"] == f"{r['thread']}-{r['i']}-" + big for r in rows)


def test_closed_log_and_folder_are_errors(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    log.close()
    with pytest.raises(InputError, match="closed"):
        log.append({"n": 1})
    with pytest.raises(InputError, match="directory"):
        AuditLog(tmp_path)


@pytest.mark.parametrize(("content", "why"), [
    (b"my notes\nlast line without newline", "line 1 is not a JSON object"),
    (b"my notes\n", "line 1 is not a JSON object"),
    (b"no newline at all", "its last line is neither a JSON object nor the start of one"),
    (b'{"n": 0}\nsome notes\n{"n": 1', "its last complete line is not a JSON object"),
    (b'{"n": 0}\n{"n": 1}\ntrailing words', "its last line is neither a JSON object nor the start of one"),
    (b"\n", "line 1 is not a JSON object"),
])
def test_a_file_that_is_not_an_audit_log_is_refused_untouched(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    before = path.stat().st_mtime_ns
    with pytest.raises(InputError, match=rf"notes\.txt: is not a kardlite audit log \({why}\)"):
        AuditLog(path)
    assert path.read_bytes() == content and path.stat().st_mtime_ns == before


def test_a_log_path_that_cannot_hold_a_log_is_refused_when_opened(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    with pytest.raises(InputError, match=r"notes\.txt/x\.jsonl: cannot create the audit log's folder"):
        AuditLog(tmp_path / "notes.txt" / "x.jsonl")
    for device in ("/dev/null", "/dev/full"):
        with pytest.raises(InputError, match=rf"^{device}: is not a regular file"):
            AuditLog(device)
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputError, match="is not a regular file"):
        AuditLog(tmp_path / "pipe")


def test_a_write_that_fails_is_an_audit_log_error_and_the_next_open_repairs(tmp_path: Path) -> None:
    # A real failing write: a child process whose file-size limit is smaller than one record (EFBIG, as a full
    # disk gives ENOSPC): the record is cut, the error is an AuditLogError, and the next open cuts the torn line.
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"n": 0}\n')
    code = ("import resource, signal, sys; from kardlite.runtime.audit import AuditLog, AuditLogError; "
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); log = AuditLog(sys.argv[1]); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (30, resource.RLIM_INFINITY)); "
            "exec('try:\\n log.append({\"n\": 1, \"text\": \"x\" * 100})\\nexcept AuditLogError as e:\\n print(e)')")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{path}: cannot write the audit log (File too large)"
    assert path.read_bytes().startswith(b'{"n": 0}\n{"n":1') and len(path.read_bytes()) == 30  # a torn record
    with AuditLog(path) as log:
        assert log.repaired == 21
        log.append({"n": 2})
    assert [r["n"] for r in _lines(path)] == [0, 2]
