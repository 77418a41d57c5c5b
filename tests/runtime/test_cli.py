"""``kardlite ask`` when something around the answer fails: an audit log that cannot be written (checked before
answering; a write that fails later still shows the answer, then one ``error:`` line and exit 2), a bundle file
whose name would forge a second error line, a thread count that is not positive."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from kardlite.cli import app

pytestmark = pytest.mark.slow

Q = ["What is minoxidil used for?", "-o", "severe hypertension", "-o", "asthma", "--max-new-tokens", "2",
     "--threads", "1"]


def _ask(bundle: Path, *extra: str) -> Result:
    return CliRunner().invoke(app, ["ask", str(bundle), *Q, *extra], prog_name="kardlite")


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_an_audit_log_that_cannot_be_written_fails_before_answering(tiny_bundle: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"my notes\nlast line without newline")
    for target, why in ((notes, "is not a kardlite audit log"), (Path("/dev/full"), "is not a regular file"),
                        (Path("/dev/null"), "is not a regular file"),
                        (notes / "x.jsonl", "cannot create the audit log's folder")):
        result = _ask(tiny_bundle, "--audit-log", str(target))
        line = _one_error_line(result)
        assert line.startswith(f"error: {target}: {why}"), line
        assert "Answer:" not in result.stdout and "Confidence:" not in result.stdout  # nothing was answered
    assert notes.read_bytes() == b"my notes\nlast line without newline"  # never rewritten


def test_a_log_write_that_fails_after_answering_shows_the_answer_then_fails(tiny_bundle: Path, tmp_path: Path
                                                                             ) -> None:
    # A real failing write in a real process: its file-size limit (RLIMIT_FSIZE) is smaller than one record,
    # so the append fails with EFBIG after the answer is ready, as it would on a full disk.
    log = tmp_path / "audit.jsonl"

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50, resource.RLIM_INFINITY))

    out = subprocess.run([sys.executable, "-m", "kardlite.cli", "ask", str(tiny_bundle), *Q, "--audit-log", str(log)],
                         capture_output=True, text=True, timeout=300, preexec_fn=limit,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Answer: " in out.stdout and "Confidence: " in out.stdout  # the answer was shown
    errors = [x for x in out.stderr.splitlines() if x.startswith("error: ")]
    assert errors == [f"error: {log}: cannot write the audit log (File too large)"], out.stderr[-3000:]
    assert "Traceback" not in out.stderr


def test_an_unlisted_file_with_a_newline_in_its_name_is_one_error_line(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    (bundle / "x\nerror: all good, exit 0").write_text("planted")
    line = _one_error_line(_ask(bundle))
    assert f"{bundle}/x\\nerror: all good, exit 0: not listed in manifest.json" in line


@pytest.mark.parametrize("threads", ["0", "-1"])
def test_ask_refuses_a_thread_count_that_is_not_positive(tiny_bundle: Path, threads: str) -> None:
    result = CliRunner().invoke(app, ["ask", "--threads", threads, str(tiny_bundle), "Which?"], prog_name="kardlite")
    line = _one_error_line(result)
    assert "Invalid value for '--threads'" in line
