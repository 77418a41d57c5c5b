"""The CPU edge runtime: ``load(bundle)`` → ``Pipeline.ask(question, options)`` → ``Answer``.

Needs only onnxruntime, hnswlib, bm25s, tokenizers and llama-cpp-python; importing it imports no torch.
"""

from __future__ import annotations

from kardlite.runtime.pipeline import Pipeline, load
from kardlite.runtime.types import Answer, Candidate, PassageShown, StreamEvent, Timings, TokenCounts

__all__ = ["Answer", "Candidate", "PassageShown", "Pipeline", "StreamEvent", "Timings", "TokenCounts", "load"]
