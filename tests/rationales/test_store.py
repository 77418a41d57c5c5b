from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kardlite.errors import ArtifactError
from kardlite.rationales.store import RationaleStore, StoreLockedError, read_store


def _rec(item: str, i: int, text: str = "a rationale") -> dict:
    return {"item_id": item, "sample": i, "text": text}


def test_append_resume_and_no_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with RationaleStore(path) as st:
        assert st.append([_rec("q1", 0), _rec("q1", 1)], prompts={"h": [{"role": "user", "content": "x"}]}) == 2
    with RationaleStore(path) as st:
        assert st.done == {("q1", 0), ("q1", 1)}
        # Already stored pairs and a repeated prompt are not written again.
        assert st.append([_rec("q1", 1), _rec("q2", 0)], prompts={"h": [{"role": "user", "content": "x"}]}) == 1
    contents = read_store(path)
    assert [(s["item_id"], s["sample"]) for s in contents.samples] == [("q1", 0), ("q1", 1), ("q2", 0)]
    assert contents.duplicates == 0 and list(contents.prompts) == ["h"]
    assert len(path.read_text().splitlines()) == 4


def test_torn_last_line_is_repaired_on_open(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with RationaleStore(path) as st:
        st.append([_rec("q1", 0)])
    with open(path, "ab") as fh:
        fh.write(b'{"type": "sample", "item_id": "q1", "sam')
    assert read_store(path).torn_tail
    with RationaleStore(path) as st:
        assert st.repaired_bytes > 0
        st.append([_rec("q1", 1)])
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["type"] == "sample" for line in lines)


def test_corrupt_complete_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"type": "sample", "item_id": "q", "sample": 0, "text": "t"}\nnot json\n')
    with pytest.raises(ArtifactError, match="line 2"):
        read_store(path)


def test_second_writer_is_locked_out(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with RationaleStore(path), pytest.raises(StoreLockedError, match="is being written by another process"):
        RationaleStore(path)
    with RationaleStore(path) as st:  # released on close
        assert st.done == set()


_WRITER = """
import sys
from kardlite.rationales.store import RationaleStore
with RationaleStore(sys.argv[1]) as st:
    i = len(st.done)
    while True:
        st.append([{"item_id": f"q{i // 3}", "sample": i % 3, "text": "x" * 5000}])
        i += 1
"""


def test_sigkill_never_corrupts_or_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)])
        deadline = time.monotonic() + 30
        start = path.stat().st_size if path.exists() else 0
        while time.monotonic() < deadline and (not path.exists() or path.stat().st_size < start + 200_000):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with RationaleStore(path) as st:  # repairs a torn tail, if the kill made one
            n = len(st.done)
        contents = read_store(path)
        keys = [(s["item_id"], s["sample"]) for s in contents.samples]
        assert contents.duplicates == 0 and not contents.torn_tail
        assert len(keys) == n == len(set(keys))
        # Resumed writers continue the numbering: pairs are contiguous from 0.
        assert keys == [(f"q{i // 3}", i % 3) for i in range(n)]
    assert n > 0
