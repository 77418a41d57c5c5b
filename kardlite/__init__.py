"""kardlite: Knowledge-Augmented Reasoning Distillation for small language models, offline on a CPU.

The public API is the names in ``__all__``; everything else is reached by module path and may change.
"""

from __future__ import annotations

__version__ = "0.1.0"

from kardlite.data import QAItem, load_task
from kardlite.errors import ArtifactError, InputError, KardliteError, MissingExtraError
from kardlite.kb.passage import Hit, Passage
from kardlite.prompts import build_prompt, parse_answer

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
    "load_task",
    "parse_answer",
]
