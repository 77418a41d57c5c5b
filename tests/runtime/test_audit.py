"""The audit log on its own: torn last lines, appends from many threads."""

from __future__ import annotations

import json
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
