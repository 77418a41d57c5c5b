"""The CPU edge runtime: question → KB first stage → rerank → prompt → GGUF student → Answer.

Only onnxruntime, hnswlib, bm25s, tokenizers and llama-cpp-python run here; nothing on this path imports torch
or transformers (a test runs a bundle with torch made unimportable).

Prompts are built exactly as in training: ``kardlite.prompts.build_prompt`` with the chat template the bundle
carries (copied from the student GGUF's ``tokenizer.chat_template``), the same mode and token budget, and
llama.cpp's own tokenizer as the token counter (an export check makes sure it tokenises like transformers).
"""

from __future__ import annotations

import codecs
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kardlite.data.records import LETTERS, MAX_OPTIONS, QAItem
from kardlite.errors import ArtifactError, InputError
from kardlite.export.bundle import KB_DIR, read_manifest, verify_bundle
from kardlite.kb.passage import Hit
from kardlite.prompts import build_prompt, parse_answer, vote
from kardlite.rerank.late import WARM_LIMIT
from kardlite.runtime.types import Answer, Candidate, PassageShown, StreamEvent, Timings, TokenCounts

# A question longer than this many characters per budget token cannot fit the prompt anyway (English BPE runs
# 3-5 characters a token); refusing it before tokenising keeps a pasted 100 KB document from costing anything.
_CHARS_PER_TOKEN_LIMIT = 8
_ANSWER_LINE = re.compile(r"\s*\bAnswer\s*(?:is)?\s*[:：]", re.IGNORECASE)


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

    def __init__(self, path: Path, manifest: dict[str, Any], kb: Any, reranker: Any, llm: Any) -> None:
        # Use load(); the constructor only wires loaded parts together.
        self.path = path
        self.manifest = manifest
        self.kb = kb
        self.reranker = reranker
        self._llm = llm
        self._lock = threading.Lock()
        prompt = manifest["prompt"]
        self.mode: str = prompt["mode"]
        self.max_tokens = int(prompt["max_tokens"])
        self.chat_template: str | None = manifest.get("chat_template") if prompt.get("use_chat_template") else None
        tok = manifest["tokenizer"]
        self._bos, self._eos = tok.get("bos_token") or "", tok.get("eos_token") or ""
        retrieval = manifest["retrieval"]
        self.first_stage: str = retrieval["first_stage"]
        self.pool = int(retrieval["pool"])
        self.n_docs = int(retrieval["n_docs"])
        self.decoding: dict[str, Any] = dict(manifest["decoding"])
        self.n_ctx = int(llm.n_ctx())

    # --- public API -------------------------------------------------------------------------------------------

    def ask(self, question: str, options: Sequence[str] | None = None, *, n_docs: int | None = None,
            samples: int | None = None, max_new_tokens: int | None = None, temperature: float | None = None,
            seed: int | None = None) -> Answer:
        """Answer one question.

        Args:
            question: the question stem (without options).
            options: 2-10 option texts (shown as A, B, ...); None or empty for a free-text answer.
            n_docs: passages shown to the student (default: the bundle's, usually 3).
            samples: 1 = one generation (greedy by default); more = self-consistency: that many samples and a
                majority vote over their answer letters (default: the bundle's).
            max_new_tokens: generation cap per sample (default: the bundle's, 128).
            temperature: 0 = greedy; default: the bundle's (0 for one sample, ``sample_temperature`` (1.0) for
                several).
            seed: sampling seed (sample i uses seed + i); default: the bundle's.

        Returns:
            An Answer (see :class:`kardlite.runtime.types.Answer`).

        Raises:
            InputError: an empty or too long question, 1 or more than 10 options, an empty option, bad settings.
        """
        answer = None
        for event in self.stream(question, options, n_docs=n_docs, samples=samples, max_new_tokens=max_new_tokens,
                                 temperature=temperature, seed=seed):
            if event["type"] == "answer":
                answer = event["answer"]
        assert answer is not None  # stream() always ends with the answer event
        return answer

    def stream(self, question: str, options: Sequence[str] | None = None, *, n_docs: int | None = None,
               samples: int | None = None, max_new_tokens: int | None = None, temperature: float | None = None,
               seed: int | None = None) -> Iterator[StreamEvent]:
        """Like :meth:`ask`, but yields events as they happen: the passages, each new piece of text, the Answer.

        Yields:
            ``{"type": "passages", "passages": [...]}``, then ``{"type": "token", "text": ..., "sample": i}``
            for each decoded piece, then ``{"type": "answer", "answer": Answer}``.
        """
        t_start = time.perf_counter()
        item, opts = self._validate_question(question, options)
        n_docs = self._positive("n_docs", self.n_docs if n_docs is None else n_docs)
        samples = self._positive("samples", int(self.decoding.get("samples", 1)) if samples is None else samples)
        max_new = self._positive("max_new_tokens",
                                 int(self.decoding["max_new_tokens"]) if max_new_tokens is None else max_new_tokens)
        if temperature is None:
            temperature = float(self.decoding["temperature"] if samples == 1 else self.decoding["sample_temperature"])
        if not 0.0 <= float(temperature) <= 5.0:
            raise InputError(f"temperature must be between 0 and 5, got {temperature}", field="temperature")
        seed = int(self.decoding.get("seed", 0) if seed is None else seed)

        # Question and options alone must fit the budget (they are never cut): check before retrieving.
        with self._lock:
            self._build(item, ())
        query = item.linearize()
        t0 = time.perf_counter()
        pool_hits = self.kb.search(query, max(self.pool, n_docs) if self.reranker else n_docs,
                                   retriever=self.first_stage)
        t_retrieve = time.perf_counter() - t0
        t0 = time.perf_counter()
        shown_hits = (self.reranker.rank(query, pool_hits, top_k=n_docs) if self.reranker else pool_hits[:n_docs])
        t_rerank = time.perf_counter() - t0 if self.reranker else 0.0
        first_scores = {h["id"]: float(h["score"]) for h in pool_hits}
        passages = [_shown(h, first_scores, has_reranker=self.reranker is not None) for h in shown_hits]
        candidates = [Candidate(id=h["id"], title=h["title"], rank=int(h["rank"]), score=float(h["score"]))
                      for h in pool_hits]
        yield StreamEvent(type="passages", passages=passages)

        texts: list[str] = []
        generated = 0
        prefill = decode_rate = 0.0
        with self._lock:
            t0 = time.perf_counter()
            prompt = self._build(item, [_PassageView(h) for h in shown_hits])
            t_prompt = time.perf_counter() - t0
            prompt_ids = self._tokenize(prompt.text)
            if len(prompt_ids) + max_new > self.n_ctx:
                raise InputError(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new}) exceed the "
                                 f"context window of {self.n_ctx} tokens", field="max_new_tokens")
            t_gen = time.perf_counter()
            # A fresh context per question: llama.cpp would otherwise reuse the KV cache of the previous prompt's
            # common prefix, and the answer would depend (in near-ties) on which question came before.
            self._llm.reset()
            for i in range(samples):
                out_text = ""
                n_new, t_first, t_last = 0, None, None
                for piece, t_tok in self._generate(prompt_ids, max_new, temperature, seed + i):
                    if t_first is None:
                        t_first = t_tok
                    t_last = t_tok
                    n_new += 1
                    if piece:
                        out_text += piece
                        yield StreamEvent(type="token", text=piece, sample=i)
                texts.append(out_text)
                generated += n_new
                if i == 0:
                    prefill = (t_first - t_gen) if t_first is not None else time.perf_counter() - t_gen
                    if n_new >= 2 and t_last is not None and t_last > t_first:
                        decode_rate = (n_new - 1) / (t_last - t_first)
            t_generate = time.perf_counter() - t_gen

        answer = self._answer(item, opts, texts, samples)
        timings = Timings(retrieve=t_retrieve, rerank=t_rerank, prompt=t_prompt, prefill=prefill,
                          generate=t_generate, total=time.perf_counter() - t_start)
        tokens = TokenCounts(prompt=len(prompt_ids), budget=self.max_tokens, generated=generated,
                             decode_per_s=round(decode_rate, 2), passages_trimmed=prompt.trimmed)
        kept = set(prompt.passage_ids)
        answer.update(passages=[p for p in passages if p["id"] in kept], candidates=candidates, timings=timings,
                      tokens=tokens)
        yield StreamEvent(type="answer", answer=answer)

    def close(self) -> None:
        """Free the llama.cpp context and the KB's files."""
        with self._lock:
            self._llm.close()
            self.kb.close()

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
        for i, opt in enumerate(opts):
            if not isinstance(opt, str) or not opt.strip():
                raise InputError(f"option {LETTERS[i]} is empty or not text", field="options")
        if sum(len(o) for o in opts) > limit:
            raise InputError(f"the options are {sum(len(o) for o in opts):,} characters, over the limit of "
                             f"{limit:,}", field="options")
        if opts:
            return QAItem(id="ask", question=question.strip(), options=tuple(o.strip() for o in opts), label=None), opts
        return _FreeQuestion(id="ask", question=question.strip()), opts

    @staticmethod
    def _positive(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}", field=name)
        return value

    def _tokenize(self, text: str) -> list[int]:
        # special=True: chat markers in the rendered text are single control tokens, as transformers encodes them.
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _count(self, text: str) -> int:
        return len(self._tokenize(text))

    def _build(self, item: Any, passages: Sequence[Any]) -> Any:
        return build_prompt(item, self.mode, passages=passages, max_tokens=self.max_tokens,  # type: ignore[arg-type]
                            count_tokens=self._count, chat_template=self.chat_template, bos_token=self._bos,
                            eos_token=self._eos)

    def _generate(self, prompt_ids: list[int], max_new: int, temperature: float,
                  seed: int) -> Iterator[tuple[str, float]]:
        """(decoded text piece, time) per new token, until an end-of-generation token or ``max_new``."""
        import llama_cpp

        llm = self._llm
        llm.set_seed(seed)
        vocab = llm._model.vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        sampling: dict[str, Any] = {"temp": 0.0} if temperature == 0 else {
            "temp": float(temperature), "top_k": int(self.decoding["top_k"]), "top_p": float(self.decoding["top_p"]),
            "min_p": 0.0}
        for n, tok in enumerate(llm.generate(prompt_ids, repeat_penalty=1.0, reset=True, **sampling), start=1):
            now = time.perf_counter()
            if llama_cpp.llama_vocab_is_eog(vocab, tok):
                break
            yield decoder.decode(llm.detokenize([tok])), now
            if n >= max_new:
                break
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail, time.perf_counter()

    def _answer(self, item: Any, opts: list[str], texts: list[str], samples: int) -> Answer:
        indices = [parse_answer(t, len(opts), opts) if opts else None for t in texts]
        votes: dict[str, int] | None = None
        if opts and samples > 1:
            votes = dict(sorted(Counter(LETTERS[i] for i in indices if i is not None).items()))
            chosen = vote(indices)  # a tie goes to the letter a sample reached first
        else:
            chosen = indices[0]
        pick = next((j for j, i in enumerate(indices) if i == chosen), 0) if chosen is not None else 0
        text = texts[pick]
        rationale = _rationale(text)
        if opts:
            letter = LETTERS[chosen] if chosen is not None else None
            answer_text = opts[chosen] if chosen is not None else None
            valid = chosen is not None
        else:
            letter, answer_text, valid = None, (rationale or None), bool(rationale)
        return Answer(question=item.question, options=opts, letter=letter, index=chosen, answer=answer_text,
                      valid=valid, rationale=rationale, text=text, passages=[], candidates=[], votes=votes,
                      samples=list(texts) if samples > 1 else None,
                      timings=Timings(retrieve=0.0, rerank=0.0, prompt=0.0, prefill=0.0, generate=0.0, total=0.0),
                      tokens=TokenCounts(prompt=0, budget=self.max_tokens, generated=0, decode_per_s=0.0,
                                         passages_trimmed=False))


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


def _rationale(text: str) -> str:
    """The generation before its last ``Answer:`` line (the whole text if there is none), stripped."""
    matches = list(_ANSWER_LINE.finditer(text))
    return (text[: matches[-1].start()] if matches else text).strip()


def load(path: str | Path, *, threads: int | None = None, verify: bool = True, n_ctx: int | None = None,
         warm_reranker: int = WARM_LIMIT) -> Pipeline:
    """Open a bundle written by ``export_bundle``.

    Args:
        path: the bundle folder.
        threads: CPU threads for llama.cpp and onnxruntime (None: their defaults, all cores).
        verify: check every file's size and sha256 against the manifest first (~0.3 s per 100 MB).
        n_ctx: llama.cpp context window; default the bundle's (1024).
        warm_reranker: a late-interaction reranker fills its cache with the KB's passages at load time when the
            KB has at most this many, so that each question then costs one query encoding instead of one per
            candidate: read from the bundle's precomputed passage cache (written by ``export_bundle``), else
            encoded now (1,326 OBQA facts: ~2 s on 2 cores). 0 = never; a larger KB fills the reranker's cache
            as questions come.

    Returns:
        A ready Pipeline.

    Raises:
        ArtifactError: the folder is not a bundle, or a file is missing, truncated or altered (named).
    """
    from kardlite._llama import load_llama
    from kardlite.kb import KnowledgeBase

    path = Path(path)
    manifest = read_manifest(path)
    if verify:
        verify_bundle(path, manifest)
    for key in ("student", "tokenizer", "prompt", "retrieval", "decoding"):
        if not isinstance(manifest.get(key), dict):
            raise ArtifactError(f"{path / 'manifest.json'}: section {key!r} missing")
    kb = KnowledgeBase.load(path / manifest["retrieval"].get("kb", KB_DIR), verify=False)
    reranker = None
    rr = manifest["retrieval"].get("reranker")
    if rr:
        from kardlite.rerank.model import Reranker

        reranker = Reranker.load(path / rr["dir"], backend="onnx", threads=threads)
        # a cross-encoder has nothing to cache: its scores need the question
        if 0 < len(kb) <= warm_reranker and reranker.kind == "late-interaction":
            passages = list(kb)  # read once for both steps
            if rr.get("passage_cache"):
                # verify_bundle has just hashed the reranker's files: its manifest sha256s need no second pass
                checked = {rel.split("/", 1)[1]: info["sha256"] for rel, info in manifest["files"].items()
                           if rel.startswith(f"{rr['dir']}/")} if verify else None
                reranker.load_passage_cache(path / rr["dir"] / rr["passage_cache"], passages, file_sha256=checked)
            # encodes what the file lacked (all of the KB without one); a bar when it takes more than ~10 s
            reranker.warm(passages, progress=len(passages) > 5_000)
    llm = load_llama(path / manifest["student"]["file"], n_ctx=int(n_ctx or manifest["decoding"].get("n_ctx", 1024)),
                     n_threads=threads, n_threads_batch=threads)
    return Pipeline(path, manifest, kb, reranker, llm)
