"""Evaluation through an exported GGUF: generation and scoring with llama.cpp, the runtime's own path.

``kardlite eval`` runs students in PyTorch (batched, fp32). The same student exported to GGUF (``kardlite export
gguf``) runs in llama.cpp as the CPU runtime does, and on 2 cores that is the faster path for generation:
:class:`GGUFBackend` offers the three operations an evaluation needs, on the exact rendered prompt text
(``Prompt.text`` from ``Student.prompt`` / ``kardlite.prompts.build_prompt``):

- :meth:`GGUFBackend.generate`: greedy or self-consistency samples, cut at the first end-of-generation token,
  after ``max_new_tokens``, or once a complete ``Answer: X`` is written (what ``kardlite.distill.evaluate``
  stops at);
- :meth:`GGUFBackend.score_letters`: log-probability of `` A``, `` B``, ... as the next token;
- :meth:`GGUFBackend.score_continuations`: total and mean log-likelihood of given texts after each prompt
  (option-text scoring, or reading a forced answer after ``"\\nAnswer:"``).

Everything goes through ``kardlite._llama.load_llama`` (the AMX crash fix) and tokenises like the runtime:
the rendered prompt with ``special=True`` (its chat markers are control tokens, as transformers encodes them),
no BOS added. Continuations are model-side text and are tokenised with ``special=False``, separately from the
prompt (as a PyTorch scorer that concatenates ``encode(prompt) + encode(continuation)`` does). Each question
starts from an empty KV cache, as in the runtime, so a result never depends on the question before it. Output
texts are llama.cpp's detokenisation, as the runtime shows them; ``evaluate.generate`` decodes with transformers,
which also drops the space before punctuation (``clean_up_tokenization_spaces``), so texts can differ by such a
space while the parsed letter cannot.

How closely this agrees with PyTorch is measured by ``bench/eval_backends.py`` (``docs/results/eval-backends.md``)
and tested on the tiny fixture student in ``tests/distill/test_gguf_eval.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from kardlite.errors import InputError

Decoding = Literal["greedy", "sc"]


class ContinuationScore(NamedTuple):
    """Log-likelihood of one continuation given its prompt (natural log)."""

    total: float
    mean: float       # total / n_tokens (0.0 for an empty continuation)
    n_tokens: int


class GGUFBackend:
    """A GGUF student in llama.cpp for evaluation: generate, score letters, score continuations.

    Args:
        gguf_path: the exported student (``student-Q8_0.gguf`` for evaluation: the check in
            ``kardlite.export.gguf`` holds it to PyTorch's greedy output).
        threads: CPU threads for prompt processing and decoding (None: llama.cpp's default, all cores).
        n_ctx: context window; a prompt plus ``max_new_tokens`` must fit.
        n_batch: prompt tokens per decode call.

    Example:
        >>> with GGUFBackend("runs/obqa/gguf/student-Q8_0.gguf", threads=2) as be:  # doctest: +SKIP
        ...     be.generate([student.prompt(item, "rd").text], [4], max_new_tokens=128)
        [[' The kidneys filter ... Answer: B']]
    """

    def __init__(self, gguf_path: str | Path, *, threads: int | None = None, n_ctx: int = 2048,
                 n_batch: int = 512) -> None:
        from kardlite._llama import load_llama

        self.path = Path(gguf_path)
        self._llm = load_llama(self.path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=n_batch)
        self.n_ctx = n_ctx
        self._n_vocab = self._llm.n_vocab()
        self._letter_ids: dict[int, list[int]] = {}

    # ------------------------------------------------------------------------------------------ basics
    def tokenize(self, text: str) -> list[int]:
        """Token ids of a rendered prompt exactly as the runtime tokenises it (chat markers as control tokens)."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _tokenize_text(self, text: str) -> list[int]:
        # Model-side text: a "<|im_end|>" written in it stays plain characters.
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _detokenize(self, ids: Sequence[int]) -> str:
        # special=False: control tokens render as nothing, as transformers' skip_special_tokens does.
        return self._llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def _is_eog(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._llm._model.vocab, token))

    def _fits(self, ids: Sequence[int], extra: int, what: str) -> None:
        if len(ids) + extra > self.n_ctx:
            raise InputError(f"prompt ({len(ids)} tokens) + {what} ({extra}) exceed the context window of "
                             f"{self.n_ctx} tokens; pass a larger n_ctx", field="n_ctx")

    def _prefill(self, ids: Sequence[int]) -> Any:
        """A fresh KV cache holding ``ids``; returns the next-token log-probabilities after them."""
        if not ids:
            raise InputError("empty prompt", field="prompt_texts")
        llm = self._llm
        llm.reset()
        llm.eval(list(ids))
        return _log_softmax(self._last_logits())

    def _last_logits(self) -> Any:
        import numpy as np

        ptr = self._llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).astype(np.float32)

    def letter_ids(self, n_options: int) -> list[int]:
        """The first token of `` X`` for each of the first ``n_options`` letters (as ``evaluate.letter_token_ids``)."""
        if n_options not in self._letter_ids:
            from kardlite.prompts import letter_token_ids

            self._letter_ids[n_options] = letter_token_ids(self._tokenize_text, n_options)
        return self._letter_ids[n_options]

    # ------------------------------------------------------------------------------------------ generation
    def generate(self, prompt_texts: Sequence[str], n_options: Sequence[int], *, max_new_tokens: int = 256,
                 decoding: Decoding = "greedy", samples: int = 5, top_k: int = 50, top_p: float = 0.95,
                 temperature: float = 1.0, seed: int = 42) -> list[list[str]]:
        """One greedy output, or ``samples`` sampled outputs, per prompt.

        Each output stops at an end-of-generation token (not included), after ``max_new_tokens`` tokens, or
        once it holds a complete ``Answer: X`` with a valid letter for that question (the rest would be
        discarded by the scorer anyway), exactly as ``kardlite.distill.evaluate.generate`` does.

        Args:
            prompt_texts: rendered prompts (``Prompt.text``), ending with the cue.
            n_options: options per question (which letters count as an answer).
            max_new_tokens: generation cap.
            decoding: ``greedy`` or ``sc`` (self-consistency sampling with the runtime's sampler chain:
                top-k, top-p, temperature, no min-p, no repetition penalty).
            samples, top_k, top_p, temperature: self-consistency settings.
            seed: sample ``j`` of prompt ``i`` uses seed ``seed + i * samples + j``; pass a per-batch seed to
                make a resumed evaluation sample what an uninterrupted one would.

        Returns:
            For each prompt, its output texts (one for greedy).

        Raises:
            InputError: mismatched lengths, unknown decoding, a prompt too long for the context.
        """
        from kardlite.distill.evaluate import _answer_done

        if len(prompt_texts) != len(n_options):
            raise InputError(f"{len(prompt_texts)} prompts but {len(n_options)} option counts", field="n_options")
        if decoding not in ("greedy", "sc"):
            raise InputError(f"unknown decoding {decoding!r}; choose greedy or sc", field="decoding")
        n_ret = samples if decoding == "sc" else 1
        llm = self._llm
        results: list[list[str]] = []
        for i, (text, n_opt) in enumerate(zip(prompt_texts, n_options, strict=True)):
            ids = self.tokenize(text)
            self._fits(ids, max_new_tokens, "max_new_tokens")
            # A fresh context per question (as the runtime): reusing the previous prompt's KV prefix would make
            # near-ties depend on the question order. Samples of one question do share the prompt's cache.
            llm.reset()
            outs = []
            for j in range(n_ret):
                if decoding == "sc":
                    llm.set_seed(seed + i * n_ret + j)
                    sampling: dict[str, Any] = {"temp": float(temperature), "top_k": int(top_k),
                                                "top_p": float(top_p), "min_p": 0.0}
                else:
                    sampling = {"temp": 0.0}
                new: list[int] = []
                for tok in llm.generate(ids, repeat_penalty=1.0, reset=True, **sampling):
                    if self._is_eog(tok):
                        break
                    new.append(tok)
                    if len(new) >= max_new_tokens or _answer_done(self._detokenize(new), n_opt):
                        break
                outs.append(self._detokenize(new))
            results.append(outs)
        return results

    # ------------------------------------------------------------------------------------------ scoring
    def score_letters(self, prompt_texts: Sequence[str], n_options: Sequence[int], *,
                      suffixes: Sequence[str] | None = None) -> list[list[float]]:
        """Log-probability of each option letter (`` A``, `` B``, ...) as the next token after each prompt.

        Args:
            prompt_texts: rendered prompts; for letter scoring they end with the ``Answer:`` cue.
            n_options: options per question.
            suffixes: model-side text appended to each prompt, tokenised on its own (``special=False``), e.g. a
                generated rationale + ``"\nAnswer:"`` to force an answer: the ids are
                ``tokenize(prompt) + tokenize(suffix)``, as ``evaluate`` builds ``ids + student.encode(suffix)``.

        Returns:
            Per prompt, one natural-log probability per option letter.
        """
        if len(prompt_texts) != len(n_options):
            raise InputError(f"{len(prompt_texts)} prompts but {len(n_options)} option counts", field="n_options")
        if suffixes is not None and len(suffixes) != len(prompt_texts):
            raise InputError(f"{len(prompt_texts)} prompts but {len(suffixes)} suffixes", field="suffixes")
        out = []
        for i, (text, n_opt) in enumerate(zip(prompt_texts, n_options, strict=True)):
            ids = self.tokenize(text) + (self._tokenize_text(suffixes[i]) if suffixes is not None else [])
            self._fits(ids, 1, "the scored token")
            logp = self._prefill(ids)
            out.append([float(logp[t]) for t in self.letter_ids(n_opt)])
        return out

    def score_continuations(self, prompt_texts: Sequence[str],
                            continuations: Sequence[Sequence[str]]) -> list[list[ContinuationScore]]:
        """Log-likelihood of each continuation text given its prompt.

        The prompt is processed once per question; each continuation is then decoded on top of it (its KV
        entries dropped again before the next), with logits read at every continuation position.

        Args:
            prompt_texts: rendered prompts.
            continuations: per prompt, the texts to score (e.g. `` <option text>`` for each option, or
                `` B`` after a prompt that ends with a forced ``"\\nAnswer:"``). Tokenised on their own, as
                model-side text.

        Returns:
            Per prompt, a :class:`ContinuationScore` (total, mean, n_tokens) per continuation.
        """
        import numpy as np

        if len(prompt_texts) != len(continuations):
            raise InputError(f"{len(prompt_texts)} prompts but {len(continuations)} continuation lists",
                             field="continuations")
        llm = self._llm
        out: list[list[ContinuationScore]] = []
        for text, conts in zip(prompt_texts, continuations, strict=True):
            ids = self.tokenize(text)
            cont_ids = [self._tokenize_text(c) for c in conts]
            self._fits(ids, max((len(c) for c in cont_ids), default=0), "continuation tokens")
            first = self._prefill(ids)
            scores = []
            for toks in cont_ids:
                if not toks:
                    scores.append(ContinuationScore(0.0, 0.0, 0))
                    continue
                lps = [float(first[toks[0]])]
                if len(toks) > 1:
                    logits = self._decode_all(toks[:-1], n_past=len(ids))
                    logp = _log_softmax(logits)
                    lps += [float(v) for v in logp[np.arange(len(toks) - 1), toks[1:]]]
                total = float(sum(lps))
                scores.append(ContinuationScore(total, total / len(toks), len(toks)))
            out.append(scores)
            llm.reset()
        return out

    def _decode_all(self, toks: Sequence[int], *, n_past: int) -> Any:
        """Decode ``toks`` after the first ``n_past`` cached positions; logits for every one of them.

        Drops whatever the cache held past ``n_past`` first, so continuations never see each other.
        """
        import numpy as np

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

    def __enter__(self) -> GGUFBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GGUFBackend({str(self.path)!r}, n_ctx={self.n_ctx})"


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
