"""kardlite: Knowledge-Augmented Reasoning Distillation for small language models, offline on a CPU.

The public API is the names in ``__all__``; everything else is reached by module path and may change.
The records, errors and prompt builder are imported at once; the stages (knowledge base, teacher, students,
reranker, export, runtime, demo) are imported on first use, so ``import kardlite`` pulls in neither torch,
transformers nor onnxruntime.

    >>> import kardlite
    >>> pipe = kardlite.load(kardlite.build_demo_bundle())  # doctest: +SKIP
    >>> pipe.ask("Which diuretic lowers urinary calcium?", ["Furosemide", "Hydrochlorothiazide"])  # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from kardlite.data import QAItem, load_task
from kardlite.errors import ArtifactError, InputError, KardliteError, MissingExtraError
from kardlite.kb.passage import Hit, Passage
from kardlite.prompts import build_prompt, parse_answer

if TYPE_CHECKING:
    from kardlite.demo.build import build_demo_bundle
    from kardlite.distill.examples import build_examples
    from kardlite.distill.train import StudentTrainConfig, train_student
    from kardlite.export.bundle import export_bundle
    from kardlite.kb.base import KnowledgeBase
    from kardlite.rationales.filter import filter_rationales
    from kardlite.rerank import Reranker
    from kardlite.rerank.train import RerankTrainConfig, train_reranker
    from kardlite.runtime.pipeline import Pipeline, load
    from kardlite.teacher.factory import get_teacher

# name -> module that defines it; imported by __getattr__ on first access (PEP 562).
_LAZY = {
    "KnowledgeBase": "kardlite.kb.base",
    "get_teacher": "kardlite.teacher.factory",
    "filter_rationales": "kardlite.rationales.filter",
    "build_examples": "kardlite.distill.examples",
    "StudentTrainConfig": "kardlite.distill.train",
    "train_student": "kardlite.distill.train",
    "Reranker": "kardlite.rerank",
    "RerankTrainConfig": "kardlite.rerank.train",
    "train_reranker": "kardlite.rerank.train",
    "export_bundle": "kardlite.export.bundle",
    "Pipeline": "kardlite.runtime.pipeline",
    "load": "kardlite.runtime.pipeline",
    "build_demo_bundle": "kardlite.demo.build",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kardlite' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ArtifactError",
    "Hit",
    "InputError",
    "KardliteError",
    "KnowledgeBase",
    "MissingExtraError",
    "Passage",
    "Pipeline",
    "QAItem",
    "RerankTrainConfig",
    "Reranker",
    "StudentTrainConfig",
    "__version__",
    "build_demo_bundle",
    "build_examples",
    "build_prompt",
    "export_bundle",
    "filter_rationales",
    "get_teacher",
    "load",
    "load_task",
    "parse_answer",
    "train_reranker",
    "train_student",
]
