"""The OpenAI backend against a real OpenAI-compatible server: llama-cpp-python's, serving the packaged SmolLM2
through kardlite's launcher (which applies the AMX crash fix), on 127.0.0.1 and a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kardlite.data.records import QAItem
from kardlite.rationales.store import read_store
from kardlite.teacher import TeacherError
from kardlite.teacher.openai import OpenAITeacher

pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python server extras (kardlite[dev]) not installed")
pytestmark = pytest.mark.slow

KEY = "test-key"
ALIAS = "smollm2"
MAX_TOKENS = 16  # small: a test needs rationales, not good ones
ITEMS = [QAItem("q1", "Which is a source of light?", ("a rock", "the sun", "a shadow", "mud"), 1),
         QAItem("q2", "What do plants need to grow?", ("sunlight", "plastic", "noise", "glass"), 0),
         QAItem("q3", "Ice melting is a change of", ("color", "mass", "state", "smell"), 2)]
# One short worked example keeps prompts ~150 tokens so the 135M model answers fast on a shared CPU.
PROMPT = """### system
You explain science answers in one or two sentences.
### example
Question: What makes a shadow?
A. light being blocked
B. sound
Answer: A
Explanation: An object that blocks light leaves a dark area behind it. So, the answer is (A).
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "kardlite.teacher._server", "--port", str(port),
                                 "--model_alias", ALIAS, "--api_key", KEY, "--n_ctx", "1024", "--n_threads", "1"],
                                stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            req = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"})
            with urllib.request.urlopen(req, timeout=2) as resp:
                assert ALIAS in resp.read().decode()
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
    yield url
    proc.send_signal(signal.SIGINT)  # uvicorn's quick shutdown; SIGTERM waits for graceful close
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "short.txt"
    path.write_text(PROMPT)
    return path


def test_generates_n2_for_3_questions(server: str, prompt_file: Path, tmp_path: Path) -> None:
    teacher = OpenAITeacher(ALIAS, base_url=server, api_key=KEY, max_tokens=MAX_TOKENS, concurrency=2, seed=1)
    summary = teacher.generate(ITEMS, 2, store=tmp_path / "s.jsonl", prompt=prompt_file, progress=False)
    contents = read_store(tmp_path / "s.jsonl")
    assert sorted((s["item_id"], s["sample"]) for s in contents.samples) == [
        (q, i) for q in ("q1", "q2", "q3") for i in (0, 1)]
    assert all(s["text"].strip() and s["usage"]["completion_tokens"] > 0 for s in contents.samples)
    assert {s["finish_reason"] for s in contents.samples} <= {"stop", "length"}
    assert len(contents.prompts) == 3 and summary.written == 6 and summary.prompt_tokens > 0
    # The server ignores n: the backend noticed and asked one sample per call.
    assert teacher._n_per_call == 1
    # Re-running is a no-op.
    again = teacher.generate(ITEMS, 2, store=tmp_path / "s.jsonl", prompt=prompt_file, progress=False)
    assert again.written == 0 and again.skipped == 6


def test_wrong_key_is_a_clear_error(server: str) -> None:
    with pytest.raises(TeacherError, match="401"):
        OpenAITeacher(ALIAS, base_url=server, api_key="wrong", max_tokens=4).complete([{"role": "user",
                                                                                         "content": "hi"}], 1)
    with pytest.raises(TeacherError, match="401"):
        OpenAITeacher(ALIAS, base_url=server, api_key="wrong").check()


def test_unknown_model_is_refused(server: str) -> None:
    # llama.cpp's server would silently answer with its own model; the model list check refuses the name.
    with pytest.raises(TeacherError, match="does not serve model 'gpt-9'"):
        OpenAITeacher("gpt-9", base_url=server, api_key=KEY).check()


def test_sigkill_mid_run_then_resume_has_each_sample_once(server: str, prompt_file: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.jsonl"
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"question": i.question, "options": list(i.options), "answer": i.label,
                                        "id": i.id}) + "\n" for i in ITEMS))
    cmd = [sys.executable, "-m", "kardlite.cli", "teach", "--tasks", str(task), "--out", str(store), "--n", "2",
           "--base-url", server, "--api-key", KEY, "--model", ALIAS, "--max-tokens", str(MAX_TOKENS),
           "--concurrency", "1", "--prompt", str(prompt_file), "--quiet"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OPENAI_API_KEY": ""}, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240

    def samples_written() -> int:
        return store.read_text().count('"type": "sample"') if store.exists() else 0

    while samples_written() < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = len(read_store(store).samples)
    assert 1 <= first < 6, f"kill landed outside the run ({first} samples; stderr {proc.stderr.read()[-500:]!r})"

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{6 - first} samples written, {first} already in the store" in done.stdout
    contents = read_store(store)
    keys = [(s["item_id"], s["sample"]) for s in contents.samples]
    assert sorted(keys) == [(q, i) for q in ("q1", "q2", "q3") for i in (0, 1)]
    assert contents.duplicates == 0 and not contents.torn_tail
    assert store.read_text().count('"type": "sample"') == 6  # exactly once on disk, not just after dedup


def test_cli_server_down_is_one_line_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kardlite.cli import app

    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"id": "q", "question": "?", "options": ["a", "b"], "answer": "A"}) + "\n")
    with socket.socket() as s:  # bound, not listening: connections are refused, and nobody else gets the port
        s.bind(("127.0.0.1", 0))
        out = CliRunner().invoke(app, ["teach", "--tasks", str(task), "--out", str(tmp_path / "s"), "--base-url",
                                       f"http://127.0.0.1:{s.getsockname()[1]}/v1", "--model", "m",
                                       "--max-retries", "0", "--timeout", "10", "--quiet"])
    assert out.exit_code == 2
    assert out.stderr.strip().count("\n") == 0 and "cannot connect to the teacher" in out.stderr
