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


def test_the_web_app_is_a_module_of_the_package() -> None:
    spec = importlib.util.find_spec("kardlite.demo.app")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).parent == Path(kardlite.__file__).parent / "demo"


def test_without_gradio_kardlite_demo_names_the_app_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # what `import gradio` meets when it is not installed
    result = CliRunner().invoke(app, ["demo", "--bundle", str(tmp_path)])  # gradio is checked first
    assert result.exit_code == 2
    assert "pip install 'kardlite[app]'" in result.output
