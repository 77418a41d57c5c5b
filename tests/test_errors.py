"""Install hints name extras that exist: every ``MissingExtraError`` in the source is checked against pyproject."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

from kardlite.errors import MissingExtraError

ROOT = Path(__file__).resolve().parents[1]


def _dist(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _hints() -> list[tuple[str, str, str | None]]:
    """(where, package, extra) of every MissingExtraError(...) call whose arguments are literals."""
    out = []
    for path in sorted((ROOT / "kardlite").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "MissingExtraError" \
                    and len(node.args) == 2 and isinstance(node.args[1], ast.Constant):
                package = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
                out.append((f"{path.relative_to(ROOT)}:{node.lineno}", package, node.args[1].value))
    return out


def test_every_install_hint_names_a_real_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    core = {_dist(r) for r in project["dependencies"]}
    hints = _hints()
    assert len(hints) > 10
    for where, package, extra in hints:
        assert extra is None or extra in extras, f"{where}: no extra {extra!r} in pyproject.toml"
        if package is not None and package.lower() in core:
            assert extra is None, f"{where}: {package} is a core dependency, not in the {extra!r} extra"


def test_hint_without_an_extra_installs_the_package() -> None:
    assert "pip install 'kardlite[train]'" in str(MissingExtraError("torch", "train"))
    assert "pip install 'llama-cpp-python'" in str(MissingExtraError("llama-cpp-python", None))


def test_error_messages_escape_control_characters() -> None:
    from kardlite.errors import ArtifactError, InputError, printable

    assert printable("x\nerror: all good, exit 0") == "x\\nerror: all good, exit 0"
    assert printable("a\rb\tc\x1b[31md\x7f\x85e\u2028f\u2029g\u202eh") == \
        "a\\rb\\tc\\x1b[31md\\x7f\\x85e\\u2028f\\u2029g\\u202eh"
    assert printable("plain é 文 ①") == "plain é 文 ①" and printable(3) == "3"
    err = InputError("bad\nvalue", path="dir/x\nerror: fine", line=2, field="a\rb")
    assert str(err) == "dir/x\\nerror: fine, line 2, field 'a\\rb': bad\\nvalue"
    assert err.path == "dir/x\nerror: fine"  # the attribute keeps the real path
    assert str(ArtifactError("bundle/x\nerror: all good: not listed")).count("\n") == 0
    assert str(MissingExtraError("pkg\n", None)).count("\n") == 0
