"""The kind -> class registry: the base class builds and loads every kind without importing any of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kardlite.errors import ArtifactError, InputError
from kardlite.rerank.base import KINDS, Reranker, reranker_class
from kardlite.rerank.cross import CrossEncoderReranker
from kardlite.rerank.late import LateInteractionReranker


def test_every_kind_is_registered_with_its_class() -> None:
    assert [reranker_class(k) for k in KINDS] == [CrossEncoderReranker, LateInteractionReranker]
    assert all(issubclass(reranker_class(k), Reranker) and reranker_class(k).kind == k for k in KINDS)
    with pytest.raises(InputError, match="unknown reranker kind 'colbert'") as err:
        reranker_class("colbert")
    assert err.value.field == "kind"
    with pytest.raises(InputError, match="unknown reranker kind 'colbert'"):
        Reranker.from_pretrained(kind="colbert")  # type: ignore[arg-type]


def test_load_refuses_an_unknown_kind(tmp_path: Path) -> None:
    (tmp_path / "reranker.json").write_text(json.dumps({"format_version": 2, "kind": "colbert"}))
    with pytest.raises(ArtifactError, match="unknown reranker kind 'colbert'"):
        Reranker.load(tmp_path, backend="onnx")
    (tmp_path / "reranker.json").write_text(json.dumps({"format_version": 2, "kind": "late-interaction",
                                                        "head": "maxsim", "dim": 0}))
    with pytest.raises(ArtifactError, match="'dim' must be a positive integer"):
        Reranker.load(tmp_path, backend="onnx")  # dispatched to the late-interaction loader


def test_base_module_imports_no_kind() -> None:
    import ast

    import kardlite.rerank.base as base

    tree = ast.parse(Path(base.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"kardlite.rerank.cross", "kardlite.rerank.late", "kardlite.rerank.model"}
