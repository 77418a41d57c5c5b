"""Backend name -> Teacher."""

from __future__ import annotations

from typing import Any, Literal

from kardlite.teacher.base import Teacher

Backend = Literal["openai", "llamacpp", "import"]
BACKENDS: tuple[Backend, ...] = ("openai", "llamacpp", "import")


def get_teacher(backend: str, **options: Any) -> Teacher:
    """Build a teacher from its backend name.

    Args:
        backend: ``openai`` (any OpenAI-compatible endpoint), ``llamacpp`` (a local GGUF) or ``import``
            (existing rationales: ``source=`` a KARD release folder, a compact JSONL(.gz) or a kardlite store).
        **options: the backend's keyword arguments (see OpenAITeacher, LlamaCppTeacher, ImportTeacher).

    Returns:
        The Teacher.

    Example:
        >>> t = get_teacher("openai", model="qwen2.5", base_url="http://127.0.0.1:8080/v1")  # doctest: +SKIP
    """
    if backend == "openai":
        from kardlite.teacher.openai import OpenAITeacher

        return OpenAITeacher(**options)
    if backend == "llamacpp":
        from kardlite.teacher.llamacpp import LlamaCppTeacher

        return LlamaCppTeacher(**options)
    if backend == "import":
        from kardlite.teacher.release import ImportTeacher

        return ImportTeacher(**options)
    raise ValueError(f"unknown teacher backend {backend!r}; choose from {BACKENDS}")
