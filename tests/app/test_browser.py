"""The demo web app in a real browser: Debian's Chromium, headless, driven by Playwright, against app/demo.py
started on 127.0.0.1 and a free port with a fast-mode demo bundle (real KB and GGUF, untrained student)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kardlite.demo import demo_questions

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
# The probe's flags (headless=True adds --headless): no sandbox (root), no GPU, and no background connections
# (the network here is closed).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Example 1 is asked: greedy decoding of the untrained fast-mode student ends it with a parsable letter.
EXAMPLE = 1
SLOW_MS = 600_000  # generation on a busy 2-core CI machine can take minutes; normally ~5 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(demo_bundle_fast: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, str(REPO / "app" / "demo.py"), "--bundle", str(demo_bundle_fast),
                                 "--port", str(port), "--threads", "2"], stdout=fh, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                assert resp.status == 200
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the app did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} missing: scripts/setup installs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        # Playwright gives every launch a fresh, empty profile directory (its --user-data-dir).
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url: str) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.outside = []  # every request that left 127.0.0.1: the page must work offline
    pg.on("request", lambda r: pg.outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:",
                                                                                  "blob:")) else None)
    pg.goto(app_url)
    pg.wait_for_selector("#ask")
    yield pg
    context.close()


def test_example_question_shows_passages_rationale_and_answer(page) -> None:
    item = demo_questions("test")[EXAMPLE]
    assert "not medical advice" in page.locator("#disclaimer").inner_text()

    page.get_by_text(item.question[:30], exact=False).first.click()  # the example row fills both boxes
    page.wait_for_function("document.querySelector('#question textarea').value.length > 0")
    assert page.locator("#question textarea").input_value() == item.question
    assert page.locator("#options textarea").input_value().splitlines() == list(item.options)
    page.locator("#ask").click()

    page.wait_for_selector("#passages .kard-passage", timeout=SLOW_MS)
    page.wait_for_function("document.querySelector('#answer').innerText.includes('Answer:')", timeout=SLOW_MS)
    answer = page.locator("#answer").inner_text()
    match = re.search(r"Answer: ([A-D])\. (.+)", answer)
    assert match, answer
    assert match.group(2).strip() == item.options["ABCD".index(match.group(1))]
    assert len(page.locator("#rationale textarea").input_value().split()) >= 5
    passages = page.locator("#passages .kard-passage").all_inner_texts()
    assert len(passages) == 2 and all("first stage" in p for p in passages)
    assert "retrieval" in page.locator("#timings").inner_text()

    # Kept for a look after the run (runs/ is git-ignored); docs/screenshots/demo.png is the full demo's, by hand.
    shot = REPO / "runs" / "screenshots" / "browser-test.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    assert page.outside == []


def test_over_long_question_is_refused(page) -> None:
    page.locator("#question textarea").fill("Why? " * 500)  # 2,500 characters
    page.locator("#ask").click()
    page.wait_for_function("document.querySelector('#answer').innerText.includes('Refused')", timeout=60_000)
    assert "at most 2,000" in page.locator("#answer").inner_text()
    assert page.locator("#passages .kard-passage").count() == 0


def test_knowledge_base_search_tab(page) -> None:
    page.get_by_role("tab", name="Search the knowledge base").click()
    page.locator("#kb-query textarea").fill("loop diuretic that blocks the Na-K-2Cl cotransporter")
    page.locator("#kb-search").click()
    page.wait_for_selector("#kb-hits table tr td", timeout=60_000)
    text = page.locator("#kb-hits").inner_text()
    assert "cr-p091" in text  # "Furosemide: site of action", the passage this query describes
    assert page.outside == []
