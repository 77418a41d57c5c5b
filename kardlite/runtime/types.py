"""The runtime's stable output shapes (TypedDicts, like llama-cpp-python's OpenAI-shaped returns)."""

from __future__ import annotations

from typing import Literal, TypedDict


class PassageShown(TypedDict):
    """A passage that went into the student's prompt."""

    id: str
    title: str
    text: str
    rank: int                       # 1 = best after reranking
    first_stage_score: float        # the first stage's score (BM25, cosine or RRF, see Answer's retrieval)
    rerank_score: float | None      # None when the bundle has no reranker
    scores: dict[str, float]        # every score the passage collected (bm25, dense, rrf, rerank)


class Candidate(TypedDict):
    """One hit of the first-stage pool (what the reranker chose from)."""

    id: str
    title: str
    rank: int
    score: float


class Timings(TypedDict):
    """Seconds per stage of one ``ask``."""

    retrieve: float    # first stage (BM25 / dense / hybrid)
    rerank: float      # cross-encoder over the pool (0 without a reranker)
    prompt: float      # prompt building with exact token counting
    prefill: float     # prompt evaluation until the first new token (first sample)
    generate: float    # all of generation, all samples, prefill included
    total: float


class TokenCounts(TypedDict):
    """Token numbers of one ``ask`` (llama.cpp's tokenizer)."""

    prompt: int             # tokens in the prompt
    budget: int             # the prompt budget (max_tokens) the student was trained with
    generated: int          # new tokens, all samples together
    decode_per_s: float     # new tokens per second after the first, first sample (0 if fewer than 2)
    passages_trimmed: bool  # a passage was dropped or cut to fit the budget


class Abstention(TypedDict):
    """Why an answer was withheld (``ask(..., abstain_below=t)``)."""

    reason: str                   # e.g. "confidence 0.31 is below the threshold 0.50"
    threshold: float
    withheld: str | None          # the letter (free text: the answer) that was not given


class Answer(TypedDict):
    """The result of :meth:`kardlite.runtime.Pipeline.ask`.

    ``letter``/``index``/``answer`` are None when the student wrote no valid ``Answer: X`` (``valid`` False),
    and when the answer was withheld (``abstention`` set; ``valid`` still says whether the student wrote one).
    Without options, ``answer`` is the student's free text and ``letter``/``index`` stay None.
    """

    question: str
    options: list[str]
    letter: str | None
    index: int | None
    answer: str | None
    valid: bool
    forced: bool                  # no answer line: the letter was read by likelihood (InferenceSettings.no_answer)
    rationale: str
    text: str                     # the raw generation behind the answer (the first sample that voted for it)
    passages: list[PassageShown]
    candidates: list[Candidate]
    votes: dict[str, int] | None  # letter -> count when samples > 1 (self-consistency); None for one sample
    samples: list[str] | None     # every sampled generation when samples > 1
    timings: Timings
    tokens: TokenCounts
    confidence: float             # P(correct) in [0, 1]: calibrated when the bundle has a calibrator, else raw
    confidence_raw: float         # the student's own: P(letter after "Answer:"), with the vote share if sampled
    signals: dict[str, float]     # what the confidence is built from (kardlite.runtime.confidence)
    abstention: Abstention | None  # set when the answer was withheld


class StreamEvent(TypedDict, total=False):
    """One item of :meth:`kardlite.runtime.Pipeline.stream`.

    ``passages`` comes first (after retrieval), then ``token`` events (``text`` is the new text, ``sample`` the
    sample index), then one ``answer`` event carrying the final Answer.
    """

    type: Literal["passages", "token", "answer"]
    passages: list[PassageShown]
    text: str
    sample: int
    answer: Answer
