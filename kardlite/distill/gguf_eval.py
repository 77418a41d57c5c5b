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

It is an adapter over :class:`kardlite.gguf_student.GGUFStudent`, the class the runtime answers with, so
generation, letter scoring and the stop rule are the runtime's own. A prompt given as text is tokenised with
``special=True`` (its chat markers are control tokens, as transformers encodes them), no BOS added; evaluation
passes the prompt's segments instead, exactly as the runtime tokenises them. Continuations are model-side text
and are tokenised with ``special=False``, separately from the prompt (as a PyTorch scorer that concatenates
``encode(prompt) + encode(continuation)`` does). Each question starts from an empty KV cache, as in the runtime,
so a result never depends on the question before it. Output texts are llama.cpp's detokenisation, as the runtime
shows them; ``evaluate.generate`` decodes with transformers, which also drops the space before punctuation
(``clean_up_tokenization_spaces``), so texts can differ by such a space while the parsed letter cannot.

How closely this agrees with PyTorch is measured by ``bench/eval_backends.py`` (``docs/results/eval-backends.md``)
and tested on the tiny fixture student in ``tests/distill/test_gguf_eval.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from kardlite.errors import InputError
from kardlite.gguf_student import ContinuationScore, GGUFStudent

Decoding = Literal["greedy", "sc"]

__all__ = ["ContinuationScore", "Decoding", "GGUFBackend"]


class GGUFBackend(GGUFStudent):
    """A GGUF student for evaluation: batches of prompt texts in, outputs and scores out.

    Args:
        gguf_path: the exported student (``student-Q8_0.gguf`` for evaluation: the check in
            ``kardlite.export.gguf`` holds it to PyTorch's greedy output).
        threads: CPU threads for prompt processing and decoding (None: every usable CPU).
        n_ctx: context window; a prompt plus ``max_new_tokens`` must fit.
        n_batch: prompt tokens per decode call.
    """

    def __init__(self, gguf_path: str | Path, *, threads: int | None = None, n_ctx: int = 2048,
                 n_batch: int = 512) -> None:
        from kardlite._llama import load_llama

        path = Path(gguf_path)
        super().__init__(load_llama(path, n_ctx=n_ctx, n_threads=threads,
                                    n_batch=n_batch), path)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a rendered prompt (chat markers as control tokens), as transformers encodes it."""
        return self.tokenize_markup(text)

    def _ids(self, prompts: Sequence[str | list[int]]) -> list[list[int]]:
        return [list(p) if not isinstance(p, str) else self.tokenize(p) for p in prompts]

    def generate(self, prompt_texts: Sequence[str | list[int]], n_options: Sequence[int], *,  # type: ignore[override]
                 max_new_tokens: int = 256, decoding: Decoding = "greedy", samples: int = 5, top_k: int = 50,
                 top_p: float = 0.95, temperature: float = 1.0, seed: int = 42) -> list[list[str]]:
        """One greedy output, or ``samples`` sampled outputs, per prompt (:meth:`GGUFStudent.generate`).

        Args:
            prompt_texts: rendered prompts (``Prompt.text``) or their ids.
            n_options: options per question (which letters count as an answer).
            max_new_tokens: generation cap.
            decoding: ``greedy`` or ``sc`` (self-consistency with top-k, top-p, temperature).
            samples, top_k, top_p, temperature: self-consistency settings.
            seed: sample ``j`` of prompt ``i`` uses seed ``seed + i * samples + j``; pass a per-batch seed to
                make a resumed evaluation sample what an uninterrupted one would.

        Raises:
            InputError: mismatched lengths, unknown decoding, a prompt too long for the context.
        """
        if len(prompt_texts) != len(n_options):
            raise InputError(f"{len(prompt_texts)} prompts but {len(n_options)} option counts", field="n_options")
        if decoding not in ("greedy", "sc"):
            raise InputError(f"unknown decoding {decoding!r}; choose greedy or sc", field="decoding")
        n_ret = samples if decoding == "sc" else 1
        temp = float(temperature) if decoding == "sc" else 0.0
        return [super(GGUFBackend, self).generate(ids, n_opt, max_new_tokens=max_new_tokens, samples=n_ret,
                                                  temperature=temp, top_k=top_k, top_p=top_p, seed=seed + i * n_ret)
                for i, (ids, n_opt) in enumerate(zip(self._ids(prompt_texts), n_options, strict=True))]

    def score_letters(self, prompt_texts: Sequence[str | list[int]], n_options: Sequence[int], *,
                      suffixes: Sequence[str] | None = None) -> list[list[float]]:
        """Log-probability of each option letter (`` A``, `` B``, ...) as the next token after each prompt.

        Args:
            prompt_texts: rendered prompts (or their ids); for letter scoring they end with the ``Answer:`` cue.
            n_options: options per question.
            suffixes: model-side text appended to each prompt, tokenised on its own (``special=False``), e.g. a
                generated rationale + ``"\nAnswer:"`` to force an answer: the ids are
                ``tokenize(prompt) + tokenize_text(suffix)``, as ``evaluate`` builds ``ids + student.encode(suffix)``.
        """
        if len(prompt_texts) != len(n_options):
            raise InputError(f"{len(prompt_texts)} prompts but {len(n_options)} option counts", field="n_options")
        if suffixes is not None and len(suffixes) != len(prompt_texts):
            raise InputError(f"{len(prompt_texts)} prompts but {len(suffixes)} suffixes", field="suffixes")
        return [self.letter_logprobs(ids, n_opt, suffix=self.tokenize_text(suffixes[i]) if suffixes is not None else ())
                for i, (ids, n_opt) in enumerate(zip(self._ids(prompt_texts), n_options, strict=True))]

    def score_continuations(self, prompt_texts: Sequence[str | list[int]],
                            continuations: Sequence[Sequence[str]]) -> list[list[ContinuationScore]]:
        """Log-likelihood of each continuation text given its prompt (:meth:`GGUFStudent.continuation_scores`)."""
        if len(prompt_texts) != len(continuations):
            raise InputError(f"{len(prompt_texts)} prompts but {len(continuations)} continuation lists",
                             field="continuations")
        return [self.continuation_scores(ids, conts)
                for ids, conts in zip(self._ids(prompt_texts), continuations, strict=True)]

    def __enter__(self) -> GGUFBackend:
        return self

    def __repr__(self) -> str:
        return f"GGUFBackend({str(self.path)!r}, n_ctx={self.n_ctx})"
