"""The student as llama.cpp runs it: one class for the CPU runtime and for ``kardlite eval --backend gguf``.

:class:`GGUFStudent` wraps a loaded ``llama_cpp.Llama`` (``kardlite._llama.load_llama``, the AMX fix) and does
everything either caller needs, the same way for both:

- tokenising: a prompt's segments (template markup with control tokens, the user turn as plain text) and
  model-side text (``special=False``), no BOS added;
- :meth:`stream` / :meth:`generate`: greedy or sampled generation from a fresh KV cache per question, stopped at an
  end-of-generation token, at the cap, or once a complete ``Answer: X`` is written (``kardlite.answers.answer_done``);
- :meth:`letter_logprobs`: the log-probability of each option letter as the next token, counting the one token
  that writes the letter there (`` A`` after ``Answer:``, ``A`` after a space: ``kardlite.answers.letter_prefix``);
- :meth:`continuation_scores`: log-likelihood of texts after a prompt (option-text scoring);
- :meth:`set_prefix`: the tokens every prompt of this student starts with (chat header and instruction), whose
  KV cache is computed once and kept between questions, so a question's prefill is only what follows them.

Torch-free: the runtime imports it.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from kardlite.answers import ANSWER_END, ANSWER_END_TAIL, answer_done, letter_prefix, letter_token_ids
from kardlite.errors import InputError

Segment = tuple[str, bool]


class ContinuationScore(NamedTuple):
    """Log-likelihood of one continuation given its prompt (natural log)."""

    total: float
    mean: float       # total / n_tokens (0.0 for an empty continuation)
    n_tokens: int


class GGUFStudent:
    """A GGUF student in llama.cpp: tokenise, generate, score letters and continuations.

    Not thread-safe: a caller that shares one across threads holds a lock around each call (the runtime does).

    Args:
        llm: a loaded ``llama_cpp.Llama``.
        path: the GGUF it came from (for messages).

    Example:
        >>> student = GGUFStudent.load("exports/obqa-q4/student.gguf", threads=2)  # doctest: +SKIP
        >>> student.generate(student.tokenize_segments(prompt.segments), 4, max_new_tokens=128)  # doctest: +SKIP
        [' The kidneys filter ... Answer: B']
    """

    def __init__(self, llm: Any, path: str | Path | None = None) -> None:
        self._llm = llm
        self.path = Path(path) if path is not None else None
        self._n_vocab = llm.n_vocab()
        self._letters: dict[tuple[int, str], list[int]] = {}
        self._prefix: list[int] = []

    @classmethod
    def load(cls, path: str | Path, *, threads: int | None = None, n_ctx: int = 2048,
             n_batch: int = 512) -> GGUFStudent:
        """Load a GGUF file (through ``kardlite._llama.load_llama``)."""
        from kardlite._llama import load_llama

        llm = load_llama(Path(path), n_ctx=n_ctx, n_threads=threads, n_batch=n_batch)
        return cls(llm, path)

    @property
    def n_ctx(self) -> int:
        return int(self._llm.n_ctx())

    # ------------------------------------------------------------------------------------------ tokens
    def tokenize_segments(self, segments: Sequence[Segment]) -> list[int]:
        """A prompt's ids: chat markers become control tokens (as transformers encodes them); the user turn
        (question, options, passages) is plain text, so a ``<|im_end|>`` typed in a question stays text."""
        return [i for text, special in segments if text
                for i in self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)]

    def count_segments(self, segments: Sequence[Segment]) -> int:
        return len(self.tokenize_segments(segments))

    def tokenize_text(self, text: str) -> list[int]:
        """Model-side text (a rationale, an option): special-token strings in it stay plain characters."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def tokenize_markup(self, text: str) -> list[int]:
        """A rendered prompt given as one string, its special-token strings parsed as control tokens."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def detokenize(self, ids: Sequence[int]) -> str:
        # control tokens render as nothing, as transformers' skip_special_tokens does
        return self._llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def _is_eog(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._llm._model.vocab, token))

    def letter_ids(self, n_options: int, prefix: str = " ") -> list[int]:
        """The token that writes each of the first ``n_options`` letters after ``prefix``'s context."""
        key = (n_options, prefix)
        if key not in self._letters:
            self._letters[key] = letter_token_ids(self.tokenize_text, n_options, prefix=prefix)
        return self._letters[key]

    def check_fits(self, n_prompt: int, extra: int, what: str) -> None:
        """InputError when a prompt and what follows it do not fit the context window."""
        if n_prompt + extra > self.n_ctx:
            raise InputError(f"prompt ({n_prompt} tokens) + {what} ({extra}) exceed the context window of "
                             f"{self.n_ctx} tokens", field="max_new_tokens" if what == "max_new_tokens" else "n_ctx")

    # ------------------------------------------------------------------------------------------ KV cache
    def set_prefix(self, ids: Sequence[int]) -> None:
        """Keep the KV cache of ``ids`` between questions (``[]``: none; every question starts from empty).

        Every prompt that starts with ``ids`` is evaluated as ``ids`` in one call (always the same call, so always
        the same cache) and the rest in a second: its result depends on the prompt alone, never on the question
        before it, and it is the same in the runtime and in ``kardlite eval --backend gguf``, which both set the
        prefix from :func:`shared_prefix` of probe prompts. A prompt that does not start with ``ids`` is
        evaluated from an empty cache.
        """
        self._prefix = list(ids)
        self._llm.reset()

    @property
    def prefix(self) -> list[int]:
        return list(self._prefix)

    def begin(self, ids: Sequence[int]) -> int:
        """Prepare the KV cache for a new prompt ``ids``: the kept prefix (reused, or evaluated now) when the
        prompt starts with it, else nothing. Returns how many of the prompt's tokens the cache holds."""
        llm, prefix, n = self._llm, self._prefix, len(self._prefix)
        if n and len(ids) > n and list(ids[:n]) == prefix:
            if llm.n_tokens >= n and list(llm.input_ids[:n]) == prefix:
                llm._ctx.kv_cache_seq_rm(-1, n, -1)
                llm.n_tokens = n
            else:
                llm.reset()
                llm.eval(prefix)
            return n
        llm.reset()
        return 0

    # ------------------------------------------------------------------------------------------ generation
    def stream(self, prompt_ids: list[int], *, max_new_tokens: int, temperature: float = 0.0, top_k: int = 50,
               top_p: float = 0.95, seed: int = 0, n_options: int = 0, stop_at_answer: bool = True,
               letter_probs: list[np.ndarray] | None = None) -> Iterator[tuple[str, float]]:
        """(decoded text piece, time) per new token.

        Stops at an end-of-generation token (not shown), after ``max_new_tokens``, or (``stop_at_answer`` and
        ``n_options``) once the text holds a complete ``Answer: X`` with a valid letter. The cache is used as it
        is (llama-cpp-python reuses its longest common prefix with ``prompt_ids``): call :meth:`begin` first for a
        new question; further samples of the same question reuse the whole prompt.

        Args:
            prompt_ids: the prompt's ids (:meth:`tokenize_segments`).
            max_new_tokens: generation cap.
            temperature: 0 = greedy; else sampling with top-k, top-p, that temperature (no min-p, no repetition
                penalty), seeded by ``seed``.
            n_options: how many letters are answers (0: a free-text question).
            stop_at_answer: stop once the answer is complete (bundles exported before this rule: False).
            letter_probs: when given, each time the text so far ends with an answer line's prefix, the letter
                distribution at the next token (renormalised over the ``n_options`` letters) replaces its content,
                so it ends holding the last answer line's.
        """
        llm = self._llm
        llm.set_seed(int(seed))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        sampling: dict[str, Any] = {"temp": 0.0} if temperature == 0 else {
            "temp": float(temperature), "top_k": int(top_k), "top_p": float(top_p), "min_p": 0.0}
        text = ""
        for n, tok in enumerate(llm.generate(prompt_ids, repeat_penalty=1.0, reset=True, **sampling), start=1):
            now = time.perf_counter()
            # The context's logits are still those this token was sampled from (generate evaluates lazily).
            if letter_probs is not None and n_options and ANSWER_END.search(text[-ANSWER_END_TAIL:]):
                logp = _log_softmax(self._last_logits())
                ids = self.letter_ids(n_options, letter_prefix(text))
                letter_probs[:] = [letter_distribution([logp[t] for t in ids])]
            if self._is_eog(tok):
                break
            piece = decoder.decode(llm.detokenize([tok]))
            text += piece
            yield piece, now
            if n >= max_new_tokens or (stop_at_answer and n_options and answer_done(text, n_options)):
                break
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail, time.perf_counter()

    def generate(self, prompt_ids: list[int], n_options: int, *, max_new_tokens: int, samples: int = 1,
                 temperature: float = 0.0, top_k: int = 50, top_p: float = 0.95, seed: int = 0) -> list[str]:
        """``samples`` outputs for one prompt (sample ``i`` seeded ``seed + i``); greedy when ``temperature`` is 0."""
        self.check_fits(len(prompt_ids), max_new_tokens, "max_new_tokens")
        # A fresh context per question but the kept prefix: llama.cpp would otherwise reuse the KV cache of the
        # previous prompt's common prefix, and near-ties would depend on which question came before.
        self.begin(prompt_ids)
        return ["".join(p for p, _ in self.stream(prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                                                   top_k=top_k, top_p=top_p, seed=seed + i, n_options=n_options))
                for i in range(samples)]

    # ------------------------------------------------------------------------------------------ scoring
    def _prefill(self, ids: Sequence[int], suffix: Sequence[int] = ()) -> np.ndarray:
        """A KV cache holding ``ids`` then ``suffix``; returns the next-token log-probabilities after them.

        The prompt is evaluated in one call from an empty cache, the suffix in a second call on top, so the result
        is the same whether the prompt's cache was kept from generating (reused here: forcing an answer then costs
        the rationale's tokens, not a second prefill) or computed now (eval's batches).
        """
        if not ids:
            raise InputError("empty prompt", field="prompt")
        llm, n = self._llm, len(ids)
        if suffix and llm.n_tokens >= n and list(llm.input_ids[:n]) == list(ids):
            llm._ctx.kv_cache_seq_rm(-1, n, -1)
            llm.n_tokens = n
        else:
            llm.eval(list(ids[self.begin(ids):]))
        if suffix:
            llm.eval(list(suffix))
        return _log_softmax(self._last_logits())

    def _last_logits(self) -> np.ndarray:
        ptr = self._llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).astype(np.float32)

    def letter_logprobs(self, ids: list[int], n_options: int, prefix: str = " ", *,
                        suffix: Sequence[int] = ()) -> list[float]:
        """Log-probability of each option letter as the next token after ``ids`` + ``suffix`` (e.g. a prompt, then
        a rationale + ``"\nAnswer:"`` as :meth:`tokenize_text` gives it), the letter written after ``prefix``."""
        self.check_fits(len(ids) + len(suffix), 1, "the scored token")
        logp = self._prefill(ids, suffix)
        return [float(logp[t]) for t in self.letter_ids(n_options, prefix)]

    def continuation_scores(self, ids: list[int], continuations: Sequence[str], *,
                            suffix: Sequence[int] = ()) -> list[ContinuationScore]:
        """Log-likelihood of each text (tokenised on its own, as model-side text) after ``ids`` + ``suffix``.

        The prompt is processed once; each continuation is decoded on top of it, its KV entries dropped again
        before the next, with logits read at every continuation position.
        """
        cont_ids = [self.tokenize_text(c) for c in continuations]
        self.check_fits(len(ids) + len(suffix), max((len(c) for c in cont_ids), default=0), "continuation tokens")
        first = self._prefill(ids, suffix)
        ids = [*ids, *suffix]
        scores = []
        for toks in cont_ids:
            if not toks:
                scores.append(ContinuationScore(0.0, 0.0, 0))
                continue
            lps = [float(first[toks[0]])]
            if len(toks) > 1:
                logp = _log_softmax(self._decode_all(toks[:-1], n_past=len(ids)))
                lps += [float(v) for v in logp[np.arange(len(toks) - 1), toks[1:]]]
            total = float(sum(lps))
            scores.append(ContinuationScore(total, total / len(toks), len(toks)))
        return scores

    def _decode_all(self, toks: Sequence[int], *, n_past: int) -> np.ndarray:
        """Decode ``toks`` after the first ``n_past`` cached positions; logits for every one of them.

        Drops whatever the cache held past ``n_past`` first, so continuations never see each other.
        """
        llm = self._llm
        ctx, batch = llm._ctx, llm._batch
        ctx.kv_cache_seq_rm(-1, n_past, -1)
        rows = []
        step = llm.n_batch
        for start in range(0, len(toks), step):
            chunk = list(toks[start:start + step])
            batch.set_batch(batch=chunk, n_past=n_past + start, logits_all=True)
            ctx.decode(batch)
            rows.append(np.ctypeslib.as_array(ctx.get_logits(), shape=(len(chunk), self._n_vocab)).copy())
        ctx.kv_cache_seq_rm(-1, n_past, -1)
        # Llama.generate/eval trust n_tokens/input_ids for prefix reuse: keep them describing the cache.
        llm.n_tokens = n_past
        return np.concatenate(rows).astype(np.float32)

    # ------------------------------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Free the llama.cpp model and context."""
        self._llm.close()

    def __enter__(self) -> GGUFStudent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GGUFStudent({str(self.path)!r}, n_ctx={self.n_ctx})"


def shared_prefix(prompts: Sequence[Sequence[int]]) -> list[int]:
    """The tokens every one of ``prompts`` starts with, less the last: a token at the boundary could merge with
    other text after it, so only tokens followed by the same token in every probe are kept."""
    if len(prompts) < 2:
        raise InputError("shared_prefix needs at least two probe prompts", field="prompts")
    first, n = list(prompts[0]), min(len(p) for p in prompts)
    k = 0
    while k < n and all(p[k] == first[k] for p in prompts):
        k += 1
    return first[:max(k - 1, 0)]


def letter_distribution(logps: Sequence[float]) -> np.ndarray:
    """Probabilities over the letters from their log-probabilities, renormalised to sum to 1."""
    x = np.asarray(logps, dtype=np.float64)
    x = np.exp(x - x.max())
    return x / x.sum()


def _log_softmax(logits: Any) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
