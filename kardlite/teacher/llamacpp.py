"""A local GGUF as the teacher, through llama-cpp-python (default: the packaged SmolLM2-135M-Instruct).

Useful offline and in tests; a 135M model writes weak rationales, so point ``model_path`` at a bigger GGUF
for real work. One model instance is not thread-safe, so requests run one at a time.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from kardlite._llama import load_llama, packaged_smollm2
from kardlite.teacher.base import Sample, Teacher


class LlamaCppTeacher(Teacher):
    """A GGUF loaded in-process (AMX crash fix applied by ``kardlite._llama``).

    Args:
        model_path: a GGUF file; None for the packaged SmolLM2.
        n_ctx: context window.
        n_threads: CPU threads (None: every usable CPU).
        temperature, max_tokens, top_p, seed: sampling settings (seed 0 when None, for reproducibility).
    """

    backend = "llamacpp"

    def __init__(self, model_path: str | Path | None = None, *, n_ctx: int = 2048, n_threads: int | None = None,
                 temperature: float = 1.0, max_tokens: int = 256, top_p: float = 1.0, seed: int | None = 0,
                 **kwargs: Any) -> None:
        path = Path(model_path) if model_path is not None else packaged_smollm2()
        super().__init__(path.name, temperature=temperature, max_tokens=max_tokens, top_p=top_p, seed=seed,
                         concurrency=1)
        self.model_path = path
        self.llama = load_llama(path, n_ctx=n_ctx, n_threads=n_threads, seed=seed or 0, **kwargs)
        self._lock = threading.Lock()

    def complete(self, messages: list[dict[str, str]], n: int, *, seed: int | None = None) -> list[Sample]:
        # One sample per call: llama.cpp's chat completion has no n.
        with self._lock:
            resp = self.llama.create_chat_completion(messages=messages, temperature=self.temperature,
                                                     max_tokens=self.max_tokens, top_p=self.top_p, seed=seed)
        choice = resp["choices"][0]
        usage = resp.get("usage") or {}
        return [Sample(str(choice["message"]["content"] or "").strip(), choice.get("finish_reason"),
                       int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))]
