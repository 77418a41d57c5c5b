"""Fuzzed audit-log targets: existing files of random content (records, torn records, notes, bytes), folders,
devices and paths under a file. The log either opens (then it appends after the file's complete records, never
losing one) or is refused with a kardlite error, leaving the file byte for byte as it was."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from kardlite.runtime.audit import AuditLog
from tests.fuzz import Tally, fuzz_settings, json_value, text

WORK = Path(tempfile.mkdtemp(prefix="kardlite-fuzz-audit-"))

record = st.dictionaries(text, json_value, max_size=3).map(
    lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass"))
piece = st.one_of(record, record.map(lambda r: r + b"\n"), record.map(lambda r: r[: len(r) // 2]),
                  text.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=20),
                  st.sampled_from([b"\n", b"\r\n", b"{", b"}", b"\xff", b"[1]\n", b"null\n", b" {\"a\": 1}\n"]))
content = st.lists(piece, max_size=5).map(b"".join)


def _records(data: bytes) -> list[bytes]:
    """The complete lines of a file (what the log must keep)."""
    return data.split(b"\n")[:-1]


def test_audit_log_targets() -> None:
    tally = Tally()

    @fuzz_settings(cases=200)
    @given(content, st.sampled_from(["file", "file", "file", "folder", "under-a-file", "dev-null", "fifo"]))
    @example(b"{}\n\x80{}\n{}\n", "file")  # a middle line that is no record, between two that are (found in CI)
    def case(data: bytes, kind: str) -> None:
        shutil.rmtree(WORK, ignore_errors=True)
        WORK.mkdir()
        path = WORK / "audit.jsonl"
        if kind in ("file", "under-a-file"):
            path.write_bytes(data)
        target = {"file": path, "under-a-file": path / "x.jsonl", "folder": WORK, "dev-null": Path("/dev/null"),
                  "fifo": WORK / "fifo"}[kind]
        if kind == "fifo":
            os.mkfifo(target)

        def write() -> None:
            with AuditLog(target) as log:
                log.append({"n": 1, "text": "é\n\u2028"})

        _, err = tally.attempt(write)
        if kind != "file":
            assert err is not None
            if kind == "under-a-file":
                assert path.read_bytes() == data
            return
        after = path.read_bytes()
        if err is not None:
            assert after == data  # refused: untouched
            return
        lines = after.split(b"\n")
        assert lines[-1] == b"" and json.loads(lines[-2]) == {"n": 1, "text": "é\n\u2028"}
        kept = _records(data)
        assert lines[: len(kept)] == kept  # every complete line is kept, in place
        # What the log wrote (after the kept lines) is records. The lines it kept are checked at open only at the
        # file's two ends (first and last complete line, the module's rule: opening a long log stays O(1)), so a
        # middle line that is not a record is kept as it was, not judged.
        assert all(isinstance(json.loads(x), dict) for x in lines[len(kept):-1])

    case()
    tally.require(0.15)
