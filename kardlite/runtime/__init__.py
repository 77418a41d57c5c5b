"""The CPU edge runtime: ``load(bundle)`` → ``Pipeline.ask(question, options)`` → ``Answer``.

Needs only onnxruntime, hnswlib, bm25s, tokenizers and llama-cpp-python; importing it imports no torch.
"""

from __future__ import annotations

from kardlite.card import EvaluationCard
from kardlite.runtime.audit import AuditLog
from kardlite.runtime.confidence import Calibrator
from kardlite.runtime.pipeline import Pipeline, load
from kardlite.runtime.types import Abstention, Answer, Candidate, PassageShown, StreamEvent, Timings, TokenCounts

__all__ = ["Abstention", "Answer", "AuditLog", "Calibrator", "Candidate", "EvaluationCard", "PassageShown", "Pipeline",
           "StreamEvent", "Timings", "TokenCounts", "load"]
