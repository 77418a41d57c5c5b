"""The CPU edge runtime: question → KB first stage → rerank → prompt → GGUF student → Answer.

Only onnxruntime, hnswlib, bm25s, tokenizers and llama-cpp-python run here; nothing on this path imports torch
or transformers (a test runs a bundle with torch made unimportable).

Prompts are built exactly as in training: ``kardlite.prompts.build_prompt`` with the chat template the bundle
carries (copied from the student GGUF's ``tokenizer.chat_template``), the same mode and token budget, and
llama.cpp's own tokenizer as the token counter (an export check makes sure it tokenises like transformers).

The test-time path is the one ``kardlite eval`` scores: the bundle's :class:`~kardlite.settings.InferenceSettings`
(manifest key ``inference``), the same :class:`~kardlite.rerank.retriever.Retriever`, the same
:class:`~kardlite.gguf_student.GGUFStudent` (generation, stop rule, letter scoring) and the same answer reading
(:mod:`kardlite.answers`, including the forced answer of an output without an answer line).
"""

from __future__ import annotations

import re
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kardlite._io import read_json, sha256_file
from kardlite.answers import forced_context, option_continuations, parse_answer, rationale, vote
from kardlite.bundle_format import KB_DIR, MANIFEST, bundle_settings, read_manifest, verify_bundle
from kardlite.card import EvaluationCard, read_card
from kardlite.data.records import LETTERS, MAX_OPTIONS, QAItem
from kardlite.errors import ArtifactError, InputError
from kardlite.gguf_student import GGUFStudent, letter_distribution, shared_prefix
from kardlite.kb.passage import Hit
from kardlite.prompts import ANSWER_ONLY_MODES, PROBES, Segment, build_prompt
from kardlite.rerank.late import WARM_LIMIT
from kardlite.rerank.retriever import Retriever
from kardlite.runtime.audit import AuditLog, AuditLogError, utc_now
from kardlite.runtime.confidence import Calibrator, raw_confidence, support
from kardlite.runtime.types import Abstention, Answer, Candidate, PassageShown, StreamEvent, Timings, TokenCounts

# A question longer than this many characters per budget token cannot fit the prompt anyway (English BPE runs
# 3-5 characters a token); refusing it before tokenising keeps a pasted 100 KB document from costing anything.
_CHARS_PER_TOKEN_LIMIT = 8


@dataclass(frozen=True)
class _FreeQuestion:
    """A question without options, shaped like QAItem for ``build_prompt`` (QAItem needs 2-10 options)."""

    id: str
    question: str
    options: tuple[str, ...] = ()
    label: int | None = None

    def linearize(self) -> str:
        return self.question.strip()


class Pipeline:
    """A loaded bundle, ready to answer questions. Create with :func:`load`.

    Thread-safe: retrieval runs concurrently; the llama.cpp context (tokenising and generating) is used under
    one lock, so concurrent ``ask`` calls queue for the student and each gets its own, correct answer.

    Example:
        >>> pipe = load("exports/obqa-q4")  # doctest: +SKIP
        >>> pipe.ask("Which is a conductor?", ["wood", "copper", "glass", "rubber"])["letter"]  # doctest: +SKIP
        'B'
    """

    def __init__(self, path: Path, manifest: dict[str, Any], kb: Any, reranker: Any, llm: Any, *,
                 calibrator: Calibrator | None = None, audit: AuditLog | None = None,
                 manifest_sha256: str | None = None, card: EvaluationCard | None = None) -> None:
        # Use load(); the constructor only wires loaded parts together.
        self.path = path
        self.manifest = manifest
        self.kb = kb
        self.reranker = reranker
        self.calibrator = calibrator
        self.audit = audit
        self.manifest_sha256 = manifest_sha256
        self._card = card if card is not None else EvaluationCard.unmeasured(str(manifest.get("name") or path.name))
        self._llm = llm
        self.student = GGUFStudent(llm, path / manifest["student"]["file"])
        self._lock = threading.Lock()
        # A bundle exported before the settings existed (no "inference" section) keeps its behaviour: no stop at
        # the answer line, no forced answer, its greedy temperature.
        self.settings, self._legacy = bundle_settings(manifest, where=str(path / MANIFEST))
        s = self.settings
        prompt = manifest["prompt"]
        self.mode: str = str(s.mode)
        self.max_tokens = s.max_source_tokens
        self.chat_template: str | None = manifest.get("chat_template") if prompt.get("use_chat_template") else None
        tok = manifest["tokenizer"]
        self._bos, self._eos = tok.get("bos_token") or "", tok.get("eos_token") or ""
        self.first_stage: str = s.first_stage
        self.pool = s.pool
        self.n_docs = s.n_docs
        self.retriever = Retriever(kb, reranker if s.rerank else None, first_stage=s.first_stage,  # type: ignore
                                   pool=s.pool)
        self.decoding: dict[str, Any] = dict(manifest["decoding"])
        self.n_ctx = int(llm.n_ctx())
        # The chat header and instruction every prompt starts with: their KV cache is computed once, not per question.
        self.student.set_prefix(shared_prefix([self._tokenize(self._build(item, passages).segments)
                                               for item, passages in PROBES]))

    # --- public API -------------------------------------------------------------------------------------------

    @property
    def answer_only(self) -> bool:
        """True for an answer-only student (FT, KA-FT): a question with options is answered by scoring each option's
        text after the prompt, and no rationale is written (a question without options is still answered in text)."""
        return self.mode in ANSWER_ONLY_MODES

    @property
    def card(self) -> EvaluationCard:
        """The bundle's evaluation card (``card.json``, checked at load): intended use, known limits and the
        measured numbers, or ``status == "unmeasured"`` when nothing was measured (see :mod:`kardlite.card`)."""
        return self._card

    def ask(self, question: str, options: Sequence[str] | None = None, *, n_docs: int | None = None,
            samples: int | None = None, max_new_tokens: int | None = None, temperature: float | None = None,
            seed: int | None = None, abstain_below: float | None = None) -> Answer:
        """Answer one question.

        Args:
            question: the question stem (without options).
            options: 2-10 option texts (shown as A, B, ...); None or empty for a free-text answer.
            n_docs: passages shown to the student (default: the bundle's settings, as the student was trained).
            samples: 1 = one generation (greedy by default); more = self-consistency: that many samples and a
                majority vote over their answer letters (default: the bundle's decoding).
            max_new_tokens: generation cap per sample (default: the bundle's).
            temperature: 0 = greedy; default: 0 for one sample, the bundle's sampling temperature (1.0) for
                several.
            seed: sampling seed (sample i uses seed + i); default: the bundle's.
            abstain_below: a threshold in [0, 1]: an answer whose ``confidence`` is below it is withheld
                (``letter``/``index``/``answer`` None, ``abstention`` says why); None = always answer.

        Returns:
            An Answer (see :class:`kardlite.runtime.types.Answer`).

        Raises:
            InputError: an empty or too long question, 1 or more than 10 options, an empty option, bad settings.
        """
        answer = None
        for event in self.stream(question, options, n_docs=n_docs, samples=samples, max_new_tokens=max_new_tokens,
                                 temperature=temperature, seed=seed, abstain_below=abstain_below):
            if event["type"] == "answer":
                answer = event["answer"]
        assert answer is not None  # stream() always ends with the answer event
        return answer

    def stream(self, question: str, options: Sequence[str] | None = None, *, n_docs: int | None = None,
               samples: int | None = None, max_new_tokens: int | None = None, temperature: float | None = None,
               seed: int | None = None, abstain_below: float | None = None) -> Iterator[StreamEvent]:
        """Like :meth:`ask`, but yields events as they happen: the passages, each new piece of text, the Answer.

        Yields:
            ``{"type": "passages", "passages": [...]}``, then ``{"type": "token", "text": ..., "sample": i}``
            for each decoded piece, then ``{"type": "answer", "answer": Answer}``.
        """
        t_start = time.perf_counter()
        s = self.settings
        item, opts = self._validate_question(question, options)
        n_docs = integer_arg("n_docs", s.n_docs if n_docs is None else n_docs, low=1)
        samples = integer_arg("samples", (1 if s.greedy else s.samples) if samples is None else samples, low=1)
        max_new = integer_arg("max_new_tokens", s.max_new_tokens if max_new_tokens is None else max_new_tokens,
                              low=1)
        if temperature is None:
            greedy_temp = float(self.decoding.get("temperature", 0.0)) if self._legacy else 0.0
            temperature = greedy_temp if samples == 1 else s.temperature
        temperature = number_arg("temperature", temperature, low=0.0, high=5.0)
        seed = integer_arg("seed", s.seed if seed is None else seed, low=0, high=MAX_SEED)
        if abstain_below is not None:
            abstain_below = number_arg("abstain_below", abstain_below, low=0.0, high=1.0)

        # Question and options alone must fit the budget (they are never cut): check before retrieving.
        with self._lock:
            self._build(item, ())
        pool_hits, shown_hits, t_retrieve, t_rerank = self.retriever.search(item.linearize(), n_docs)
        first_scores = {h["id"]: float(h["score"]) for h in pool_hits}
        passages = [_shown(h, first_scores, has_reranker=self.retriever.reranker is not None) for h in shown_hits]
        candidates = [Candidate(id=h["id"], title=h["title"], rank=int(h["rank"]), score=float(h["score"]))
                      for h in pool_hits]
        yield StreamEvent(type="passages", passages=passages)

        texts: list[str] = []
        letter_dists: list[np.ndarray] = []  # per sample with an answer line: P(letter) at the letter's position
        generated = 0
        prefill = decode_rate = 0.0
        with self._lock:
            t0 = time.perf_counter()
            prompt = self._build(item, [_PassageView(h) for h in shown_hits])
            t_prompt = time.perf_counter() - t0
            prompt_ids = self._tokenize(prompt.segments)
            self.student.check_fits(len(prompt_ids), max_new, "max_new_tokens")
            t_gen = time.perf_counter()
            # A fresh context per question but the kept prefix (GGUFStudent.begin): llama.cpp would otherwise reuse
            # the previous prompt's common prefix, and near-ties would depend on which question came before.
            self.student.begin(prompt_ids)
            # An answer-only student (ft, ka-ft) with options is read as eval reads it: each option scored right
            # after the prompt's "Answer:" cue, nothing generated (it was never trained to write a rationale).
            score_only = self.answer_only and bool(opts)
            if score_only:
                samples = 1
                answer = self._answer(item, opts, [""], 1, prompt_ids, letter_dists, after_prompt=True)
                prefill = time.perf_counter() - t_gen
            for i in range(0 if score_only else samples):
                out_text = ""
                n_new, t_first, t_last = 0, None, None
                capture: list[np.ndarray] = []
                for piece, t_tok in self.student.stream(
                        prompt_ids, max_new_tokens=max_new, temperature=float(temperature), top_k=s.top_k,
                        top_p=s.top_p, seed=seed + i, n_options=len(opts), stop_at_answer=not self._legacy,
                        # read by option text, the options' scores are its letter_prob (see _read)
                        letter_probs=None if s.answer_scoring == "text" else capture):
                    if t_first is None:
                        t_first = t_tok
                    t_last = t_tok
                    n_new += 1
                    if piece:
                        out_text += piece
                        yield StreamEvent(type="token", text=piece, sample=i)
                texts.append(out_text)
                letter_dists.extend(capture)
                generated += n_new
                if i == 0:
                    prefill = (t_first - t_gen) if t_first is not None else time.perf_counter() - t_gen
                    if n_new >= 2 and t_last is not None and t_last > t_first:
                        decode_rate = (n_new - 1) / (t_last - t_first)
            if not score_only:
                answer = self._answer(item, opts, texts, samples, prompt_ids, letter_dists)
            t_generate = time.perf_counter() - t_gen

        timings = Timings(retrieve=t_retrieve, rerank=t_rerank, prompt=t_prompt, prefill=prefill,
                          generate=t_generate, total=time.perf_counter() - t_start)
        tokens = TokenCounts(prompt=len(prompt_ids), budget=self.max_tokens, generated=generated,
                             decode_per_s=round(decode_rate, 2), passages_trimmed=prompt.trimmed)
        kept = set(prompt.passage_ids)
        answer.update(passages=[p for p in passages if p["id"] in kept], candidates=candidates, timings=timings,
                      tokens=tokens)
        self._judge(answer, letter_dists, samples, abstain_below)
        if self.audit is not None:
            # The record is written before the answer is given; if it cannot be, the error carries the answer
            # (a CLI shows it, then fails) instead of returning an answer that is not in the log.
            try:
                self.audit.append(self._audit_record(answer, {
                    "n_docs": n_docs, "samples": samples, "max_new_tokens": max_new, "temperature": temperature,
                    "seed": seed, "top_k": s.top_k, "top_p": s.top_p, "no_answer": s.no_answer,
                    "answer_scoring": s.answer_scoring, "abstain_below": abstain_below}))
            except AuditLogError as err:
                err.answer = answer
                raise
        yield StreamEvent(type="answer", answer=answer)

    def close(self) -> None:
        """Free the llama.cpp context and the KB's files, and close the audit log."""
        with self._lock:
            self._llm.close()
            self.kb.close()
            if self.audit is not None:
                self.audit.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        student = self.manifest["student"]
        return (f"Pipeline({str(self.path)!r}, student={student.get('name')!r} {student.get('quant')}, "
                f"first_stage={self.first_stage!r}, reranker={self.reranker is not None}, n_docs={self.n_docs})")

    # --- pieces -----------------------------------------------------------------------------------------------

    def _validate_question(self, question: Any, options: Sequence[str] | None) -> tuple[Any, list[str]]:
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty", field="question")
        _check_unicode(question, "question")
        if not _visible(question):
            raise InputError("the question has no visible character (only spaces, zero-width or control "
                             "characters)", field="question")
        limit = _CHARS_PER_TOKEN_LIMIT * self.max_tokens
        if len(question) > limit:
            raise InputError(f"the question is {len(question):,} characters, far over the prompt budget of "
                             f"{self.max_tokens} tokens (limit {limit:,} characters)", field="question")
        if isinstance(options, str):
            raise InputError("options must be a list of strings, not one string", field="options")
        opts = [] if options is None else list(options)
        if len(opts) == 1:
            raise InputError("one option is not a choice: give 2 to 10 options, or none for a free-text answer",
                             field="options")
        if len(opts) > MAX_OPTIONS:
            raise InputError(f"{len(opts)} options; at most {MAX_OPTIONS} (A-{LETTERS[MAX_OPTIONS - 1]}) are supported",
                             field="options")
        seen: dict[str, int] = {}
        for i, opt in enumerate(opts):
            if not isinstance(opt, str) or not opt.strip():
                raise InputError(f"option {LETTERS[i]} is empty or not text", field="options")
            _check_unicode(opt, "options")
            if _LINE_BREAKS.search(opt):
                raise InputError(f"option {LETTERS[i]} contains a line break; an option is one line of the prompt",
                                 field="options")
            if not _visible(opt):
                raise InputError(f"option {LETTERS[i]} has no visible character", field="options")
            key = " ".join("".join(ch for ch in opt if unicodedata.category(ch) != "Cf").split()).casefold()
            if key in seen:
                raise InputError(f"option {LETTERS[i]} repeats option {LETTERS[seen[key]]}", field="options")
            seen[key] = i
        if sum(len(o) for o in opts) > limit:
            raise InputError(f"the options are {sum(len(o) for o in opts):,} characters, over the limit of "
                             f"{limit:,}", field="options")
        if opts:
            return QAItem(id="ask", question=question.strip(), options=tuple(o.strip() for o in opts), label=None), opts
        return _FreeQuestion(id="ask", question=question.strip()), opts

    def _tokenize(self, segments: Sequence[Segment] | str) -> list[int]:
        if isinstance(segments, str):  # a rendered prompt as one string (its markup parsed)
            return self.student.tokenize_markup(segments)
        return self.student.tokenize_segments(segments)

    def _count(self, segments: Sequence[Segment]) -> int:
        return len(self._tokenize(segments))

    def _build(self, item: Any, passages: Sequence[Any]) -> Any:
        return build_prompt(item, self.mode, passages=passages, max_tokens=self.max_tokens,  # type: ignore[arg-type]
                            count_segments=self._count, chat_template=self.chat_template, bos_token=self._bos,
                            eos_token=self._eos, answer_format=self.settings.answer_format)  # type: ignore[arg-type]

    def _judge(self, answer: Answer, letter_dists: list[np.ndarray], samples: int,
               abstain_below: float | None) -> None:
        """Fill the answer's signals and confidence, and withhold it when the confidence is below the threshold."""
        shown = [p["text"] for p in answer["passages"]]
        scores = [p["rerank_score"] if p["rerank_score"] is not None else p["first_stage_score"]
                  for p in answer["passages"]]
        claim, opt = support(answer["rationale"], answer["answer"] if answer["options"] else None, shown)
        signals = {"top_score": float(scores[0]) if scores else 0.0,
                   "score_margin": float(scores[0] - scores[1]) if len(scores) > 1 else 0.0,
                   "claim_support": claim, "option_support": opt}
        if answer["options"]:
            chosen = answer["index"]
            if chosen is None:
                letter_prob = vote_share = 0.0
            else:
                vote_share = (answer["votes"] or {}).get(answer["letter"] or "", 0) / samples if samples > 1 else 1.0
                # no answer-line distribution (an "Answer is (B)" form): fall back to the vote, or no opinion
                letter_prob = (float(np.mean(letter_dists, axis=0)[chosen]) if letter_dists
                               else (vote_share if samples > 1 else 0.5))
            signals = {"letter_prob": letter_prob, "vote_share": vote_share} | signals
            raw = raw_confidence(signals, valid=answer["valid"], samples=samples)
            confidence = (self.calibrator.predict(signals) if self.calibrator is not None and answer["valid"]
                          else raw)
        else:
            # a free-text answer has no letter to weigh: how much of its reasoning the passages carry
            raw = confidence = claim if answer["valid"] else 0.0
        answer.update(confidence=round(float(confidence), 6), confidence_raw=round(float(raw), 6),
                      signals={k: round(float(v), 6) for k, v in signals.items()}, abstention=None)
        if abstain_below is not None and (confidence < abstain_below or not answer["valid"]):
            reason = ("the student wrote no valid answer" if not answer["valid"] else
                      f"confidence {confidence:.2f} is below the threshold {abstain_below:.2f}")
            answer["abstention"] = Abstention(reason=reason, threshold=float(abstain_below),
                                              withheld=answer["letter"] if answer["options"] else answer["answer"])
            answer.update(letter=None, index=None, answer=None)

    def _audit_record(self, answer: Answer, decoding: dict[str, Any]) -> dict[str, Any]:
        return {"time": utc_now(), "bundle": str(self.path), "manifest_sha256": self.manifest_sha256,
                "question": answer["question"], "options": answer["options"],
                "passages": [{"id": p["id"], "rank": p["rank"], "first_stage_score": p["first_stage_score"],
                              "rerank_score": p["rerank_score"]} for p in answer["passages"]],
                "decoding": decoding, "rationale": answer["rationale"], "letter": answer["letter"],
                "answer": answer["answer"], "valid": answer["valid"], "forced": answer["forced"],
                "abstention": answer["abstention"],
                "confidence": answer["confidence"], "confidence_raw": answer["confidence_raw"],
                "signals": answer["signals"], "calibrated": self.calibrator is not None}

    def _read(self, text: str, opts: list[str], prompt_ids: list[int],
              letter_dists: list[np.ndarray], after_prompt: bool = False) -> tuple[int | None, bool]:
        """(option index, forced) of one output, by the bundle's answer scoring and no-answer rule (as eval);
        ``after_prompt``: nothing was generated, the options are scored right after the prompt's cue."""
        s = self.settings
        index = parse_answer(text, len(opts), opts) if s.answer_scoring == "generated" else None
        if index is not None or (s.answer_scoring == "generated" and s.no_answer == "invalid"):
            return index, False
        suffix = [] if after_prompt else self.student.tokenize_text(forced_context(text))
        if s.answer_scoring == "text":
            conts = option_continuations([opts], s.answer_format)[0]  # type: ignore[arg-type]
            scores = [c.mean for c in self.student.continuation_scores(prompt_ids, conts, suffix=suffix)]
            # the scores that chose the answer are the student's opinion: their softmax is its letter_prob. A text
            # student writes option text after "Answer:", so letter probabilities there would be noise, and with
            # nothing generated there are none (a constant 0.5 would make confidence and abstention meaningless).
            letter_dists.append(letter_distribution(scores))
        else:
            scores = self.student.letter_logprobs(prompt_ids, len(opts), suffix=suffix)
            letter_dists.append(letter_distribution(scores))
        return max(range(len(scores)), key=scores.__getitem__), s.answer_scoring == "generated"

    def _answer(self, item: Any, opts: list[str], texts: list[str], samples: int,
                prompt_ids: list[int] | None = None, letter_dists: list[np.ndarray] | None = None,
                after_prompt: bool = False) -> Answer:
        """The Answer of generated ``texts``. Without ``prompt_ids`` the texts are only parsed (nothing to score
        a forced or likelihood-read answer after); ``after_prompt``: see :meth:`_read`."""
        if prompt_ids is None:
            read = [(parse_answer(t, len(opts), opts), False) if opts else (None, False) for t in texts]
        else:
            dists = letter_dists if letter_dists is not None else []
            read = [self._read(t, opts, prompt_ids, dists, after_prompt) if opts else (None, False) for t in texts]
        indices = [i for i, _ in read]
        votes: dict[str, int] | None = None
        if opts and samples > 1:
            votes = dict(sorted(Counter(LETTERS[i] for i in indices if i is not None).items()))
            chosen = vote(indices)  # a tie goes to the letter a sample reached first
        else:
            chosen = indices[0]
        pick = next((j for j, i in enumerate(indices) if i == chosen), 0) if chosen is not None else 0
        text = texts[pick]
        cut = rationale(text)
        if opts:
            letter = LETTERS[chosen] if chosen is not None else None
            answer_text = opts[chosen] if chosen is not None else None
            valid = chosen is not None
        else:
            letter, answer_text, valid = None, (cut or None), bool(cut)
        return Answer(question=item.question, options=opts, letter=letter, index=chosen, answer=answer_text,
                      valid=valid, forced=read[pick][1], rationale=cut, text=text, passages=[], candidates=[],
                      votes=votes,
                      samples=list(texts) if samples > 1 else None,
                      timings=Timings(retrieve=0.0, rerank=0.0, prompt=0.0, prefill=0.0, generate=0.0, total=0.0),
                      tokens=TokenCounts(prompt=0, budget=self.max_tokens, generated=0, decode_per_s=0.0,
                                         passages_trimmed=False),
                      confidence=0.0, confidence_raw=0.0, signals={}, abstention=None)


MAX_SEED = 2**31 - 1  # llama.cpp takes a 32-bit seed; sample i uses seed + i


def integer_arg(name: str, value: Any, *, low: int, high: int | None = None) -> int:
    """``value`` if it is an int (not a bool) in [low, high], else an InputError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"between {low} and {high}"
        raise InputError(f"{name} must be an integer {span}, got {value!r}", field=name)
    return value


def number_arg(name: str, value: Any, *, low: float, high: float) -> float:
    """``value`` as a float if it is an int or float (not a bool) in [low, high] (so never NaN), else an InputError
    naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InputError(f"{name} must be a number between {low:g} and {high:g}, got {value!r}", field=name)
    return float(value)


# Line breaks of any kind: in an option they would start a new line of the prompt (a forged "E. ..." option).
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")


def _visible(text: str) -> bool:
    """Whether ``text`` has a character that shows: not whitespace, not a control or format character (zero-width
    spaces and joiners, bidirectional marks), not a private-use or unassigned code point."""
    return any(not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf", "Co", "Cn", "Cs") for ch in text)


def _check_unicode(text: str, field: str) -> None:
    """A lone surrogate (from a badly decoded file or a JS client) cannot be encoded as UTF-8 for the model."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(f"not valid Unicode text: a lone surrogate U+{ord(text[err.start]):04X} at character "
                         f"{err.start}", field=field) from None


class _PassageView:
    """A Hit seen as the ``PassageLike`` the prompt builder takes (id, title, text)."""

    __slots__ = ("id", "text", "title")

    def __init__(self, hit: Hit) -> None:
        self.id, self.title, self.text = hit["id"], hit["title"], hit["text"]


def _shown(hit: Hit, first_scores: dict[str, float], *, has_reranker: bool) -> PassageShown:
    scores = {k: float(v) for k, v in (hit.get("scores") or {}).items()}
    return PassageShown(id=hit["id"], title=hit["title"], text=hit["text"], rank=int(hit["rank"]),
                        first_stage_score=first_scores.get(hit["id"], float(hit["score"])),
                        rerank_score=scores.get("rerank") if has_reranker else None, scores=scores)


def load(path: str | Path, *, threads: int | None = None, verify: bool = True, n_ctx: int | None = None,
         warm_reranker: int = WARM_LIMIT, audit_log: str | Path | None = None, trusted_key: str | Path | None = None,
         allow_extra: bool = False) -> Pipeline:
    """Open a bundle written by ``export_bundle``.

    Args:
        path: the bundle folder.
        threads: CPU threads for llama.cpp and onnxruntime (None: every usable CPU for llama.cpp; onnxruntime's
            own default).
        verify: check every file's sha256 against the manifest first (~0.3 s per 100 MB). The manifest's own
            digest, the sizes, and the bundle's confinement (relative paths, no links, no unlisted files) are
            checked always.
        n_ctx: llama.cpp context window; default the bundle's (1024).
        warm_reranker: a late-interaction reranker fills its cache with the KB's passages at load time when the
            KB has at most this many, so that each question then costs one query encoding instead of one per
            candidate: read from the bundle's precomputed passage cache (written by ``export_bundle``), else
            encoded now (1,326 OBQA facts: ~2 s on 2 cores). 0 = never; a larger KB fills the reranker's cache
            as questions come.
        audit_log: a JSONL file to append one record per answer to (see :mod:`kardlite.runtime.audit`); a torn
            last line left by a killed process is repaired when it is opened. None = no log.
        trusted_key: a PEM Ed25519 public key file: refuse the bundle unless its manifest is signed by this key
            (``kardlite export sign``); implies ``verify``. Needs the ``sign`` extra (``cryptography``).
        allow_extra: accept files the manifest does not list (they are never read); default: refuse them.

    Returns:
        A ready Pipeline.

    Raises:
        ArtifactError: the folder is not a bundle; a file is missing, truncated, altered, a link or unlisted; the
            manifest differs from its digest; a manifest path leaves the bundle; a bad signature; a manifest field
            of the wrong type or out of range (:mod:`kardlite.export.schema`); an evaluation card with a bad field
            (:mod:`kardlite.card`); a GGUF llama.cpp cannot open (all named).
        InputError: ``threads`` or ``n_ctx`` not a positive integer; an audit log that cannot be written (a folder,
            a device, a file that is not an audit log, a path under a file).
    """
    path = Path(path)
    if threads is not None:
        integer_arg("threads", threads, low=1)
    if n_ctx is not None:
        integer_arg("n_ctx", n_ctx, low=16)
    # The audit log is opened (and checked) first: a log that cannot be written fails before any work is done.
    audit = AuditLog(audit_log) if audit_log is not None else None
    try:
        return _load(path, threads=threads, verify=verify, n_ctx=n_ctx, warm_reranker=warm_reranker, audit=audit,
                     trusted_key=trusted_key, allow_extra=allow_extra)
    except BaseException:
        if audit is not None:
            audit.close()
        raise


def _load(path: Path, *, threads: int | None, verify: bool, n_ctx: int | None, warm_reranker: int,
          audit: AuditLog | None, trusted_key: str | Path | None, allow_extra: bool) -> Pipeline:
    from kardlite._llama import load_llama
    from kardlite.export.schema import check_manifest
    from kardlite.kb import KnowledgeBase
    from kardlite.rerank import Reranker

    manifest = read_manifest(path)
    verify_bundle(path, manifest, hashes=verify, allow_extra=allow_extra, trusted_key=trusted_key)
    check_manifest(path, manifest)
    card = read_card(path, manifest)  # a card that does not match its sha256 or has a bad field is refused
    calibrator = None
    if manifest.get("calibration"):
        from kardlite.runtime.confidence import CALIBRATION_FILE

        if manifest["calibration"] != CALIBRATION_FILE or CALIBRATION_FILE not in manifest["files"]:
            raise ArtifactError(f"{path / MANIFEST}: calibration {manifest['calibration']!r} is not a listed "
                                f"{CALIBRATION_FILE}")
        calibrator = Calibrator.from_dict(read_json(path / CALIBRATION_FILE), source=str(path / CALIBRATION_FILE))
    kb = KnowledgeBase.load(path / manifest["retrieval"].get("kb", KB_DIR), verify=False)
    reranker = None
    rr = manifest["retrieval"].get("reranker")
    if rr:
        reranker = Reranker.load(path / rr["dir"], backend="onnx", threads=threads)
        # a cross-encoder has nothing to cache: its scores need the question
        if 0 < len(kb) <= warm_reranker and reranker.kind == "late-interaction":
            passages = list(kb)  # read once for both steps
            if rr.get("passage_cache"):
                # verify_bundle has just hashed the reranker's files: its manifest sha256s need no second pass
                checked = {rel[len(rr["dir"]) + 1:]: info["sha256"] for rel, info in manifest["files"].items()
                           if rel.startswith(f"{rr['dir']}/")} if verify or trusted_key is not None else None
                reranker.load_passage_cache(path / rr["dir"] / rr["passage_cache"], passages, file_sha256=checked)
            # encodes what the file lacked (all of the KB without one); a bar when it takes more than ~10 s
            reranker.warm(passages, progress=len(passages) > 5_000)
    llm = load_llama(path / manifest["student"]["file"], n_ctx=int(n_ctx or manifest["decoding"].get("n_ctx", 1024)),
                     n_threads=threads)
    return Pipeline(path, manifest, kb, reranker, llm, calibrator=calibrator, audit=audit,
                    manifest_sha256=sha256_file(path / MANIFEST), card=card)
