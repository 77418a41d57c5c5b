"""The demo web app ships inside the package (kardlite/demo/app.py), so `kardlite demo` starts from an installed
wheel; without gradio it says which extra to install. The page itself is driven in a browser by tests/app."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import kardlite
from kardlite.cli import app
from tests.conftest import needs_trained_demo


def test_the_web_app_is_a_module_of_the_package() -> None:
    spec = importlib.util.find_spec("kardlite.demo.app")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).parent == Path(kardlite.__file__).parent / "demo"


def test_without_gradio_kardlite_demo_names_the_app_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # what `import gradio` meets when it is not installed
    result = CliRunner().invoke(app, ["demo", "--bundle", str(tmp_path)])  # gradio is checked first
    assert result.exit_code == 2
    assert "pip install 'kardlite[app]'" in result.output


@pytest.mark.slow
def test_demo_passes_its_audit_log_to_the_answer_and_the_page(demo_bundle_fast: Path, tmp_path: Path) -> None:
    import json

    from kardlite.demo import demo_questions
    from kardlite.demo.app import build
    from kardlite.runtime import load

    log = tmp_path / "answers.jsonl"
    result = CliRunner().invoke(app, ["demo", "example", "--bundle", str(demo_bundle_fast), "--audit-log", str(log),
                                      "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert f"Logged to {log}" in result.output
    records = [json.loads(line) for line in log.read_text().splitlines()]
    item = demo_questions("test")[1]
    assert len(records) == 1 and records[0]["question"] == item.question and records[0]["options"] == list(item.options)
    # the page says where answers go (and, without a log, that they are not kept)
    for audit, expected in ((log, f"logged to `{log}`"), (None, "not logged")):
        with load(demo_bundle_fast, threads=2, audit_log=audit) as pipe:
            page = build(pipe)
        header = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "disclaimer")
        assert expected in header.value
        # the About tab: the card as exported (nothing measured), and no `kardlite demo eval` beside this bundle,
        # so no demo numbers either, and how to get them
        about = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "about")
        assert "Evaluation card: no measured numbers" in about.value and "Known limits" in about.value
        assert "Not measured yet" in about.value and "kardlite demo eval" in about.value


@needs_trained_demo
@pytest.mark.slow
def test_the_trained_demo_s_example_in_the_terminal_says_why_there_is_no_rationale(demo_bundle_trained: Path) -> None:
    """The shipped demo student is answer-only: `kardlite demo example` says so where a rationale would stream, and
    prints the letter and option the bundle's runtime picks."""
    from kardlite.demo import demo_questions
    from kardlite.demo.view import ANSWER_ONLY_NOTE
    from kardlite.runtime import load

    result = CliRunner().invoke(app, ["demo", "example", "--bundle", str(demo_bundle_trained), "--threads", "2"])
    assert result.exit_code == 0, result.output
    item = demo_questions("test")[1]
    with load(demo_bundle_trained, threads=2) as pipe:
        expected = pipe.ask(item.question, list(item.options))
    assert ANSWER_ONLY_NOTE in result.output and "Rationale:" not in result.output
    assert f"Answer: {expected['letter']}. {expected['answer']}" in result.output
