"""InferenceSettings: one default per setting, read by eval, export and the runtime; the CLI and the docs follow it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import typer

from kardlite.errors import InputError
from kardlite.settings import DEFAULTS, InferenceSettings, settings_table

REPO = Path(__file__).resolve().parents[1]


def _commands() -> dict[str, Any]:
    """Every command of ``kardlite`` by its path (``"export bundle"``); typer may vendor click, so no isinstance."""
    from kardlite.cli import app

    root = typer.main.get_command(app)
    out: dict[str, Any] = {}

    def walk(cmd: Any, path: str) -> None:
        out[path] = cmd
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}".strip())

    walk(root, "")
    return out


def test_every_cli_default_is_its_settings_or_training_default() -> None:
    from kardlite.distill.train import StudentTrainConfig

    inference = {f.name: f.default for f in dataclasses.fields(InferenceSettings)}
    training = {f.name: f.default for f in dataclasses.fields(StudentTrainConfig)
                if f.default is not dataclasses.MISSING}
    commands = _commands()
    checked = 0
    for path, cmd in commands.items():
        for param in cmd.params:
            if param.param_type_name != "option" or param.name is None:
                continue
            default = param.default
            default = getattr(default, "value", default)  # an enum option's default is its member
            if path == "train student" and param.name in training:
                assert default == training[param.name], (path, param.name)
                checked += 1
            elif path == "train student" and param.name == "full":
                assert default is (not StudentTrainConfig().lora)
            elif param.name in inference and path == "rerank search":  # concrete defaults, or None: resolved
                assert default in (None, inference[param.name]), (path, param.name)
                checked += 1
            elif param.name in inference and path in ("eval", "export bundle", "ask"):
                # None: resolved from the student's (or bundle's) settings, whose defaults are the dataclass's
                assert default is None, (path, param.name, default)
                checked += 1
    assert checked >= 30
    # The passage count is one quantity with one name: --n-docs everywhere it is set; --k only as hidden alias.
    assert commands["distill build"].params and any(p.name == "n_docs" for p in commands["distill build"].params)
    k_alias = next(p for p in commands["distill build"].params if p.name == "k")
    assert k_alias.hidden and next(p for p in commands["distill build"].params if p.name == "n_docs").default == \
        DEFAULTS.n_docs
    for path in ("eval", "export bundle", "ask"):
        assert any(p.name == "n_docs" and "--n-docs" in p.opts for p in commands[path].params), path
        helps = {p.name: p.help for p in commands[path].params if p.param_type_name == "option"}
        assert InferenceSettings.__dataclass_fields__["n_docs"].metadata["help"][1:40] in helps["n_docs"]


def test_docs_method_carries_the_settings_table() -> None:
    text = (REPO / "docs" / "method.md").read_text(encoding="utf-8")
    assert settings_table() in text, "docs/method.md's settings table differs from kardlite.settings.settings_table()"
    assert "dropout 0.05" not in text and "target cap 256" not in text


def test_student_settings_from_new_and_old_records() -> None:
    new = InferenceSettings.for_student({"inference": {"mode": "kard", "n_docs": 2, "max_new_tokens": 40}})
    assert (new.mode, new.n_docs, new.max_new_tokens, new.pool) == ("kard", 2, 40, DEFAULTS.pool)
    old = InferenceSettings.for_student({"mode": "rd", "max_source_tokens": 384, "n_docs": None, "max_new_tokens": 99})
    assert (old.mode, old.max_source_tokens, old.n_docs, old.max_new_tokens) == ("rd", 384, DEFAULTS.n_docs, 99)
    assert InferenceSettings.for_student(None) == DEFAULTS
    with pytest.raises(InputError, match="unknown inference settings"):
        InferenceSettings.for_student({"inference": {"n_dosc": 3}})


def test_resolve_fills_in_what_follows_student_and_kb() -> None:
    s = DEFAULTS.updated(mode="kard").resolve(has_dense=True)
    assert (s.first_stage, s.answer_scoring) == ("hybrid", "generated")
    assert DEFAULTS.updated(mode="ft").resolve(has_dense=False).answer_scoring == "letter"
    for fmt in ("text", "both"):  # trained to write the option text: read by its likelihood, not the letter's
        assert DEFAULTS.updated(mode="ka-ft", answer_format=fmt).resolve().answer_scoring == "text"
        assert DEFAULTS.updated(mode="kard", answer_format=fmt).resolve().answer_scoring == "generated"
    assert DEFAULTS.updated(mode="kard").resolve(has_dense=False).first_stage == "bm25"
    with pytest.raises(InputError, match="needs a dense index"):
        DEFAULTS.updated(mode="kard", first_stage="dense").resolve(has_dense=False)
    with pytest.raises(InputError, match="no prompt mode"):
        DEFAULTS.resolve()
    with pytest.raises(InputError, match="writes no rationale"):
        DEFAULTS.updated(mode="ft", answer_scoring="generated").resolve()
    assert DEFAULTS.updated(n_docs=None) == DEFAULTS  # an unset option changes nothing


@pytest.mark.parametrize(("field", "value"), [("n_docs", 0), ("pool", -1), ("decoding", "beam"),
                                              ("no_answer", "guess"), ("first_stage", "sparse"), ("top_p", 0.0),
                                              ("samples", True)])
def test_bad_settings_are_input_errors_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(InputError) as err:
        DEFAULTS.updated(**{field: value})
    assert err.value.field == field
