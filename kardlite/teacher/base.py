"""The teacher contract: ``complete`` one prompt into samples; ``generate`` runs a whole task into a store."""

from __future__ import annotations

import concurrent.futures as cf
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kardlite.data.records import QAItem
from kardlite.errors import ArtifactError, KardliteError
from kardlite.rationales.store import RationaleStore, now
from kardlite.teacher.fewshot import FewShot, PromptKind, build_messages, load_fewshot, prompt_hash


class TeacherError(KardliteError):
    """The teacher could not be reached or refused the request; the message says what to fix."""


@dataclass(frozen=True)
class Sample:
    """One completion returned by a teacher."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class TeachSummary:
    """What a ``generate`` run did. ``cost`` is None unless prices were given."""

    items: int = 0
    wanted: int = 0
    skipped: int = 0
    written: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cost: float | None = None
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = (f"{self.written} samples written, {self.skipped} already in the store, {self.items} items; "
                f"tokens in {self.prompt_tokens:,} out {self.completion_tokens:,}; {self.seconds:.1f} s")
        return text + (f"; cost {self.cost:.4f}" if self.cost is not None else "")


class Teacher:
    """Base class. Subclasses set ``backend`` and ``model`` and implement ``complete``.

    Attributes:
        backend: backend name recorded with every sample.
        model: model name recorded with every sample.
        temperature, max_tokens, top_p, seed: sampling settings, recorded with every sample.
        concurrency: requests in flight at once (1 for in-process models).
    """

    backend = "base"

    def __init__(self, model: str, *, temperature: float = 1.0, max_tokens: int = 256, top_p: float = 1.0,
                 seed: int | None = None, concurrency: int = 1) -> None:
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.top_p = top_p
        self.seed = seed
        self.concurrency = max(1, concurrency)

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "top_p": self.top_p,
                "seed": self.seed}

    def check(self) -> None:
        """Fail fast (before a long run) if the teacher is unusable. Default: nothing to check."""

    def complete(self, messages: list[dict[str, str]], n: int, *, seed: int | None = None) -> list[Sample]:
        """Sample ``n`` completions of one chat prompt.

        Args:
            messages: the chat messages.
            n: samples wanted; a backend may return fewer (``generate`` asks again for the rest).
            seed: per-request seed, when the teacher was given one.

        Returns:
            Up to ``n`` samples.
        """
        raise NotImplementedError

    def generate(self, items: Sequence[QAItem], n: int, *, store: str | Path, prompt: str | FewShot = "generic",
                 kind: PromptKind = "rationalize", progress: bool = True,
                 prices: tuple[float, float] | None = None) -> TeachSummary:
        """Write ``n`` samples per item into an append-only store, skipping what the store already has.

        Args:
            items: the questions (with gold labels for ``rationalize``).
            n: samples wanted per item; sample indices 0..n-1. Raising ``n`` later adds samples.
            store: the store file (created if missing).
            prompt: a FewShot, a built-in prompt name or a prompt file path.
            kind: ``rationalize`` (KARD: the answer is shown) or ``cot`` (answer hidden).
            progress: show a progress bar with rate and ETA.
            prices: (input, output) price per million tokens, for the cost line.

        Returns:
            A TeachSummary.

        Raises:
            TeacherError: the teacher is unreachable or refuses; samples already written stay in the store.
            ArtifactError: the store was written with other settings, or another process holds it.
        """
        if n < 1:
            raise ValueError("n must be at least 1")
        fewshot = prompt if isinstance(prompt, FewShot) else load_fewshot(prompt)
        start = time.monotonic()
        summary = TeachSummary(items=len(items), wanted=len(items) * n)
        with RationaleStore(store) as st:
            self._check_compatible(st, kind, fewshot)
            jobs = []
            for item in items:
                missing = [i for i in range(n) if (item.id, i) not in st.done]
                summary.skipped += n - len(missing)
                if missing:
                    messages = build_messages(item, fewshot, kind)
                    jobs.append((item, messages, prompt_hash(messages), missing))
            if jobs:
                self.check()
            bar = tqdm(total=summary.wanted, initial=summary.skipped, disable=not progress, unit="sample",
                       desc=f"teach {self.model}", dynamic_ncols=True)
            pool = cf.ThreadPoolExecutor(max_workers=self.concurrency)
            try:
                futures = {pool.submit(self._run_job, item, messages, missing): (item, messages, h, missing)
                           for item, messages, h, missing in jobs}
                for fut in cf.as_completed(futures):
                    item, messages, h, missing = futures[fut]
                    pairs = fut.result()
                    records = [self._record(item, idx, sample, kind, fewshot, h) for idx, sample in pairs]
                    summary.written += st.append(records, prompts={h: messages})
                    for _, sample in pairs:
                        summary.prompt_tokens += sample.prompt_tokens
                        summary.completion_tokens += sample.completion_tokens
                    bar.update(len(pairs))
                    bar.set_postfix(tok_in=summary.prompt_tokens, tok_out=summary.completion_tokens, refresh=False)
            finally:
                # On an error, requests not yet started are dropped; the ones in flight finish and are lost.
                pool.shutdown(wait=True, cancel_futures=True)
                bar.close()
        summary.seconds = time.monotonic() - start
        if prices is not None:
            summary.cost = (summary.prompt_tokens * prices[0] + summary.completion_tokens * prices[1]) / 1e6
        return summary

    def _check_compatible(self, st: RationaleStore, kind: PromptKind, fewshot: FewShot) -> None:
        # Resuming must not mix teachers or prompts silently under one sample numbering.
        for rec in st.contents.samples[:1]:
            theirs = (rec.get("backend"), rec.get("model"), rec.get("prompt_kind"), rec.get("prompt_name"))
            ours = (self.backend, self.model, kind, fewshot.name)
            if theirs != ours:
                raise ArtifactError(f"{st.path} holds samples from backend/model/prompt {theirs}, this run is {ours}; "
                                    "write to another store")

    def _run_job(self, item: QAItem, messages: list[dict[str, str]], missing: list[int]) -> list[tuple[int, Sample]]:
        got: list[Sample] = []
        while len(got) < len(missing):
            seed = None
            if self.seed is not None:
                # A distinct, reproducible seed per (item, first sample of this request).
                seed = random.Random(f"{self.seed}:{item.id}:{missing[len(got)]}").randrange(2**31)
            batch = self.complete(messages, len(missing) - len(got), seed=seed)
            if not batch:
                raise TeacherError(f"teacher returned no choices for item {item.id!r}")
            got.extend(batch)
        return list(zip(missing, got[: len(missing)], strict=True))

    def _record(self, item: QAItem, index: int, sample: Sample, kind: PromptKind, fewshot: FewShot,
                h: str) -> dict[str, Any]:
        return {"item_id": item.id, "sample": index, "backend": self.backend, "model": self.model,
                "sampling": self.sampling(), "prompt_kind": kind, "prompt_name": fewshot.name,
                "prompt_file_hash": fewshot.source_hash, "prompt_hash": h, "text": sample.text,
                "finish_reason": sample.finish_reason,
                "usage": {"prompt_tokens": sample.prompt_tokens, "completion_tokens": sample.completion_tokens},
                "time": now()}

