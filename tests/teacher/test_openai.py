"""The OpenAI backend against real loopback HTTP servers (no mocks of the client)."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kardlite.data.records import QAItem
from kardlite.errors import MissingExtraError
from kardlite.rationales.store import read_store
from kardlite.teacher import TeacherError
from kardlite.teacher.openai import OpenAITeacher, _retry_after

MESSAGES = [{"role": "user", "content": "Why?"}]


def completion(n: int = 1, text: str = "Because plants need light. So, the answer is (B).") -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": i, "message": {"role": "assistant", "content": f"{text} #{i}"},
                         "finish_reason": "stop"} for i in range(n)],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7 * n, "total_tokens": 11 + 7 * n}}


Responder = Callable[[dict, dict], tuple[int, dict, bytes]]


@pytest.fixture
def loopback() -> Iterator[Callable[[Responder], tuple[str, list]]]:
    servers = []

    def start(respond: Responder) -> tuple[str, list]:
        seen: list = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, body: dict) -> None:
                seen.append((time.monotonic(), self.path, dict(self.headers), body))
                status, headers, payload = respond(body, dict(self.headers))
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                self._reply(json.loads(self.rfile.read(length) or b"{}"))

            def do_GET(self) -> None:
                self._reply({})

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def ok(body: dict, headers: dict) -> tuple[int, dict, bytes]:
    return 200, {}, json.dumps(completion(body.get("n", 1))).encode()


def test_429_with_retry_after_is_waited_out_then_succeeds(loopback) -> None:
    calls = {"n": 0}

    def respond(body: dict, headers: dict) -> tuple[int, dict, bytes]:
        calls["n"] += 1
        if calls["n"] == 1:
            return 429, {"Retry-After": "1"}, b'{"error": {"message": "slow down", "type": "rate_limit"}}'
        return ok(body, headers)

    url, seen = loopback(respond)
    teacher = OpenAITeacher("m", base_url=url, api_key="k", backoff=0.0, max_retries=3)
    samples = teacher.complete(MESSAGES, 1)
    assert [s.text for s in samples] == ["Because plants need light. So, the answer is (B). #0"]
    assert len(seen) == 2
    assert seen[1][0] - seen[0][0] >= 0.95  # Retry-After: 1 honoured, not the 0 s back-off


def test_5xx_retried_with_backoff_then_clear_error(loopback) -> None:
    url, seen = loopback(lambda b, h: (503, {}, b'{"error": {"message": "overloaded"}}'))
    teacher = OpenAITeacher("m", base_url=url, api_key="k", backoff=0.01, max_retries=2)
    with pytest.raises(TeacherError, match=r"still failing after 2 retries \(503"):
        teacher.complete(MESSAGES, 1)
    assert len(seen) == 3


@pytest.mark.parametrize(("status", "match"), [(401, "refused the API key"), (404, "model 'm' not found")])
def test_401_and_404_fail_at_once(loopback, status: int, match: str) -> None:
    url, seen = loopback(lambda b, h: (status, {}, b'{"error": {"message": "nope"}}'))
    teacher = OpenAITeacher("m", base_url=url, api_key="k", backoff=0.01, max_retries=5)
    with pytest.raises(TeacherError, match=match):
        teacher.complete(MESSAGES, 1)
    assert len(seen) == 1  # not retried


def test_key_is_sent_and_checked(loopback) -> None:
    def respond(body: dict, headers: dict) -> tuple[int, dict, bytes]:
        if {k.lower(): v for k, v in headers.items()}.get("authorization") != "Bearer right":
            return 401, {}, b'{"error": {"message": "bad key"}}'
        return ok(body, headers)

    url, _ = loopback(respond)
    assert OpenAITeacher("m", base_url=url, api_key="right").complete(MESSAGES, 1)
    with pytest.raises(TeacherError, match="401"):
        OpenAITeacher("m", base_url=url, api_key="wrong").complete(MESSAGES, 1)


@pytest.mark.parametrize("payload", [b"<html>gateway</html>", b'{"object": "chat.completion"}',
                                     b'{"choices": [{"message": {"role": "assistant"}}]}'])
def test_malformed_response_is_a_clear_error(loopback, payload: bytes) -> None:
    url, _ = loopback(lambda b, h: (200, {}, payload))
    with pytest.raises(TeacherError, match="malformed response"):
        OpenAITeacher("m", base_url=url, api_key="k", max_retries=0).complete(MESSAGES, 1)


def test_server_down_is_a_clear_error() -> None:
    # A port bound but not listening refuses connections, and stays ours for the whole test.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        teacher = OpenAITeacher("m", base_url=f"http://127.0.0.1:{port}/v1", api_key="k", backoff=0.01,
                                max_retries=1, timeout=10)
        with pytest.raises(TeacherError, match="cannot connect to the teacher"):
            teacher.complete(MESSAGES, 1)
        with pytest.raises(TeacherError, match="cannot connect to the teacher"):
            teacher.check()


def test_refused_model_name_is_caught_by_the_model_list(loopback) -> None:
    def respond(body: dict, headers: dict) -> tuple[int, dict, bytes]:
        return 200, {}, json.dumps({"object": "list", "data": [{"id": "served", "object": "model"}]}).encode()

    url, _ = loopback(respond)
    with pytest.raises(TeacherError, match="does not serve model 'other'"):
        OpenAITeacher("other", base_url=url, api_key="k").check()
    OpenAITeacher("served", base_url=url, api_key="k").check()


def test_server_ignoring_n_gets_one_request_per_sample(loopback, tmp_path: Path) -> None:
    def respond(body: dict, headers: dict) -> tuple[int, dict, bytes]:
        if "messages" not in body:  # GET /models: no list offered
            return 404, {}, b'{"error": {"message": "no"}}'
        return 200, {}, json.dumps(completion(1)).encode()  # like llama.cpp's server: n is ignored

    url, seen = loopback(respond)
    items = [QAItem(f"q{i}", "Which?", ("a", "b"), 1) for i in range(2)]
    teacher = OpenAITeacher("m", base_url=url, api_key="k", concurrency=1, max_tokens=16)
    summary = teacher.generate(items, 3, store=tmp_path / "s.jsonl", progress=False, prices=(1.0, 2.0))
    contents = read_store(tmp_path / "s.jsonl")
    assert sorted((s["item_id"], s["sample"]) for s in contents.samples) == [(f"q{i}", j) for i in range(2)
                                                                              for j in range(3)]
    posts = [body for _, path, _, body in seen if path.endswith("/chat/completions")]
    # The first request asks for all 3; after one choice comes back, one sample per request.
    assert [b["n"] for b in posts] == [3, 1, 1, 1, 1, 1]
    assert summary.written == 6 and summary.cost == pytest.approx((6 * 11 + 6 * 7 * 2) / 1e6)
    rec = contents.samples[0]
    assert rec["backend"] == "openai" and rec["sampling"]["max_tokens"] == 16 and rec["finish_reason"] == "stop"
    assert contents.prompts[rec["prompt_hash"]][-1]["content"].startswith("Question: Which?")


@pytest.mark.parametrize(("headers", "expected"), [({"retry-after": "2"}, 2.0), ({"retry-after-ms": "250"}, 0.25),
                                                   ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
                                                   ({"retry-after": "soon"}, None), ({}, None)])
def test_retry_after_parsing(headers: dict, expected: float | None) -> None:
    assert _retry_after(headers) == expected


def test_without_the_openai_client_the_error_names_the_teacher_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules is what `import openai` meets when the package is not installed.
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'kardlite\[teacher\]'"):
        OpenAITeacher(model="m", base_url="http://127.0.0.1:9/v1")
