"""kardlite: Knowledge-Augmented Reasoning Distillation for small language models, offline on a CPU.

The public API is the names in ``__all__``; everything else is reached by module path and may change.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from kardlite.data import QAItem, load_task
from kardlite.errors import ArtifactError, InputError, KardliteError, MissingExtraError
from kardlite.kb.passage import Hit, Passage
from kardlite.prompts import build_prompt, parse_answer

if TYPE_CHECKING:
    from kardlite.runtime import Pipeline


def load(path: str | Path, **options: Any) -> Pipeline:
    """Open an exported bundle for CPU inference: ``kardlite.load("exports/demo").ask("question", options=[...])``.

    A thin alias of :func:`kardlite.runtime.load`, imported on first use so ``import kardlite`` stays light.
    """
    from kardlite.runtime import load as _load

    return _load(path, **options)

__all__ = [
    "ArtifactError",
    "Hit",
    "InputError",
    "KardliteError",
    "MissingExtraError",
    "Passage",
    "QAItem",
    "__version__",
    "build_prompt",
    "load",
    "load_task",
    "parse_answer",
]
