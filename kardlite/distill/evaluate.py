"""Evaluate students on a task: accuracy, invalid-output rate and one audit line per question.

- FT and KA-FT students (and untrained base models in ``ft`` mode) are scored by option-letter likelihood:
  the next-token log-probability of each option letter after the ``Answer:`` cue (or, with
  ``answer_scoring="text"``, the mean log-likelihood of each option's text); the best wins, so such a
  prediction is never invalid.
- RD and KARD students generate (batched, left padding) with greedy decoding, or with self-consistency:
  ``samples`` outputs (top-k 50, top-p 0.95, temperature 1.0) and a majority vote over the parsed answers.
  Ties go to the tied letter whose first vote came earliest (sample order), which is deterministic.
  The answer is read as ``Answer: X`` or as an option's text (``the answer is no``). An output that ends
  without one (it reached the generation cap) gets its answer *forced*: read by letter likelihood after
  ``<output>\nAnswer:``; forced answers are counted apart. ``answer_scoring="letter"|"text"`` instead always
  chooses after the rationale by letter or option-text likelihood. An output whose earlier stated answer
  differs from its final one is counted as a contradiction.
- Every setting of the test-time path defaults to the student's :class:`~kardlite.settings.InferenceSettings`
  (recorded by training in its ``kardlite_student.json``), the same settings ``kardlite export bundle`` ships:
  by default an evaluation scores the system the bundle runs. ``no_answer="invalid"`` leaves an output without
  an answer line unanswered instead of forcing it.
- KARD retrieves at test time with the linearised question (there is no rationale yet): a first stage (``bm25``,
  ``dense`` or ``hybrid``), reranked when a reranker is given, through the runtime's own
  :class:`~kardlite.rerank.retriever.Retriever`; or any callable ``(item, n_docs) -> list[Passage]`` passed as
  ``retrieve``.

Results go to ``predictions.jsonl`` append-only (an interrupted evaluation resumes where it stopped),
``metrics.json`` and ``eval.json`` (the settings) in the output directory.

By concern: this module runs an evaluation (settings, retrieval, resuming, reading answers); the PyTorch model calls
are :mod:`kardlite.distill.scoring`, the results files, metrics and reports :mod:`kardlite.distill.report` (their
names stay importable from here).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from kardlite._io import atomic_write_json
from kardlite.answers import (
    forced_context,
    option_continuations,
    parse_answer,
    rationale,
    stated_answers,
    vote,
)
from kardlite.data.records import LETTERS, QAItem

# Split by concern, every name still importable from here: results files, metrics and reports (report); the
# PyTorch model calls (scoring).
from kardlite.distill.report import METRICS, PREDICTIONS, SETTINGS, _read_done, summarize, write_report
from kardlite.distill.scoring import (
    decode_until_stop,
    generate,
    letter_token_ids,
    score_continuations,
    score_letters,
    score_option_texts,
)
from kardlite.distill.student import Student, load_student
from kardlite.errors import ArtifactError, InputError
from kardlite.kb.passage import Passage
from kardlite.prompts import ANSWER_ONLY_MODES, KNOWLEDGE_MODES, AnswerFormat, Mode
from kardlite.settings import DEFAULTS, FIRST_STAGES, InferenceSettings

Retrieve = Callable[[QAItem, int], list[Passage]]

__all__ = ["METRICS", "PREDICTIONS", "SETTINGS", "EvalConfig", "Retrieve", "decode_until_stop", "evaluate", "generate",
           "letter_token_ids", "make_retriever", "option_continuations", "score_continuations", "score_letters",
           "score_option_texts", "summarize", "vote", "write_report"]


@dataclass
class EvalConfig:
    """Evaluation settings (docs/method.md §7).

    Every field that :class:`~kardlite.settings.InferenceSettings` also has (mode, decoding, samples, top_k, top_p,
    temperature, max_new_tokens, answer_scoring, max_source_tokens, n_docs, pool, first_stage, rerank, seed,
    no_answer) is None by default: the student's own settings, else the defaults there (see that class for what
    each means).

    Attributes:
        batch_size: questions per forward pass.
        retriever: the older way to choose retrieval: ``bm25``, ``dense`` or ``hybrid`` (that first stage, no
            reranking) or ``reranker`` (``first_stage`` reranked; needs ``reranker``).
        reranker: the reranker's folder (torch or ONNX); given, the pool is reranked (unless ``rerank`` is False).
            Recorded with the results (a resumed run must use the same one).
        name: the system's name in reports; default: the output folder's name.
        backend: ``torch`` (batched PyTorch, fp32) or ``gguf`` (the student exported to GGUF, run by llama.cpp
            as the CPU runtime runs it: the fast path for generation on a CPU; ``kardlite.distill.gguf_eval``).
        gguf: the student's GGUF file for ``backend="gguf"``; None exports a Q8_0 copy into the output folder.
    """

    mode: Mode | None = None
    decoding: Literal["greedy", "sc"] | None = None
    samples: int | None = None
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    max_new_tokens: int | None = None
    answer_scoring: Literal["generated", "letter", "text"] | None = None
    batch_size: int = 8
    max_source_tokens: int | None = None
    retriever: str | None = None
    n_docs: int | None = None
    pool: int | None = None
    first_stage: str | None = None
    reranker: str | None = None
    seed: int | None = None
    name: str | None = None
    backend: Literal["torch", "gguf"] = "torch"
    gguf: str | None = None
    rerank: bool | None = None
    no_answer: Literal["force", "invalid"] | None = None
    answer_format: AnswerFormat | None = None

    def settings(self, info: dict[str, Any] | None = None) -> InferenceSettings:
        """These overrides on top of a student's recorded settings (``info``: its ``kardlite_student.json``)."""
        first_stage, rerank = self.first_stage, self.rerank
        if self.retriever is not None:
            if self.retriever not in (*FIRST_STAGES, "reranker"):
                raise InputError(f"unknown retriever {self.retriever!r}; choose bm25, dense, hybrid or reranker",
                                 field="retriever")
            if self.retriever == "reranker":
                if rerank is False:
                    raise InputError("retriever 'reranker' with rerank False", field="rerank")
                rerank = True
            else:
                if self.first_stage not in (None, self.retriever):
                    raise InputError(f"retriever {self.retriever!r} is a first stage; first_stage "
                                     f"{self.first_stage!r} contradicts it", field="first_stage")
                first_stage, rerank = self.retriever, False
        return InferenceSettings.for_student(info).updated(
            mode=self.mode, max_source_tokens=self.max_source_tokens, n_docs=self.n_docs, first_stage=first_stage,
            pool=self.pool, rerank=rerank, max_new_tokens=self.max_new_tokens, decoding=self.decoding,
            samples=self.samples, top_k=self.top_k, top_p=self.top_p, temperature=self.temperature, seed=self.seed,
            answer_scoring=self.answer_scoring, no_answer=self.no_answer, answer_format=self.answer_format)


# ----------------------------------------------------------------------------- retrieval


def make_retriever(kb: Any, retriever: str = "bm25", *, pool: int = DEFAULTS.pool, reranker: Any = None,
                   first_stage: str = "bm25") -> Retrieve:
    """A test-time retrieval function (query = the linearised question): the runtime's own ``Retriever``.

    Args:
        kb: a loaded ``kardlite.kb.KnowledgeBase``.
        retriever: ``bm25``, ``dense``, ``hybrid``, or ``reranker`` (a ``first_stage`` pool of ``pool`` reranked
            by ``reranker``).
        pool: first-stage candidates for the reranker.
        reranker: a loaded ``kardlite.rerank.Reranker`` (torch or onnx backend).
        first_stage: ``bm25``, ``dense`` or ``hybrid``: what builds the reranker's pool.

    Returns:
        ``retrieve(item, n_docs) -> list[Passage]``, best first.
    """
    from kardlite.rerank.retriever import Retriever

    if retriever in FIRST_STAGES:
        return Retriever(kb, None, first_stage=retriever).passages  # type: ignore[arg-type]
    if retriever == "reranker":
        if reranker is None:
            raise InputError("retriever 'reranker' needs a trained reranker (--reranker PATH)", field="reranker")
        return Retriever(kb, reranker, first_stage=first_stage, pool=pool).passages  # type: ignore[arg-type]
    raise InputError(f"unknown retriever {retriever!r}; choose bm25, dense, hybrid or reranker", field="retriever")


def _load_reranker(path: str | Path) -> Any:
    """A reranker folder, ONNX (when it holds an ``.onnx`` file, as a bundle's does) or torch."""
    from kardlite.rerank import Reranker

    path = Path(path)
    return Reranker.load(path, backend="onnx" if any(path.glob("*.onnx")) else "torch")




# ----------------------------------------------------------------------------- the evaluation


class _Engine:
    """How the student runs: PyTorch on token ids, or llama.cpp (``backend="gguf"``: the runtime's GGUFStudent)."""

    def __init__(self, student: Student, backend: Any = None, answer_format: AnswerFormat | None = None) -> None:
        self.student, self.backend = student, backend
        self.answer_format: AnswerFormat = answer_format or student.answer_format

    def encode(self, prompt: Any) -> list[int]:
        """A prompt's ids, tokenised as this engine's model reads it (the runtime's way for GGUF)."""
        if self.backend is not None:
            return self.backend.tokenize_segments(prompt.segments or ((prompt.text, True),))
        return self.student.encode(prompt)

    def _with(self, ids: list[list[int]], suffixes: list[str] | None) -> list[list[int]]:
        if suffixes is None:
            return ids
        return [i + self.student.encode(s) for i, s in zip(ids, suffixes, strict=True)]

    def _suffixes(self, ids: list[list[int]], suffixes: list[str] | None) -> list[list[int]]:
        return [self.backend.tokenize_text(s) for s in suffixes] if suffixes is not None else [[] for _ in ids]

    def letters(self, ids: list[list[int]], n_opts: list[int], suffixes: list[str] | None = None) -> list[list[float]]:
        if self.backend is not None:  # the prompt, then the suffix on top: as the runtime forces an answer
            return [self.backend.letter_logprobs(i, n, suffix=x)
                    for i, n, x in zip(ids, n_opts, self._suffixes(ids, suffixes), strict=True)]
        return score_letters(self.student, self._with(ids, suffixes), n_opts)

    def option_texts(self, ids: list[list[int]], options: list[Sequence[str]],
                     suffixes: list[str] | None = None) -> list[list[float]]:
        if self.backend is not None:
            conts = option_continuations(options, self.answer_format)
            return [[c.mean for c in self.backend.continuation_scores(i, c, suffix=x)]
                    for i, c, x in zip(ids, conts, self._suffixes(ids, suffixes), strict=True)]
        return score_option_texts(self.student, self._with(ids, suffixes), options, self.answer_format)

    def generate(self, ids: list[list[int]], n_opts: list[int], s: InferenceSettings, seed: int) -> list[list[str]]:
        if self.backend is not None:
            n_ret = 1 if s.greedy else s.samples
            temperature = 0.0 if s.greedy else s.temperature
            # sample j of question i: seed + i * samples + j (a resumed run samples what the first run did)
            return [self.backend.generate(i, n, max_new_tokens=s.max_new_tokens, samples=n_ret,
                                          temperature=temperature, top_k=s.top_k, top_p=s.top_p, seed=seed + q * n_ret)
                    for q, (i, n) in enumerate(zip(ids, n_opts, strict=True))]
        import torch

        torch.manual_seed(seed)
        return generate(self.student, ids, n_opts, s)


def _gguf_backend(student: Student, cfg: EvalConfig, out: Path, n_ctx: int = 2048) -> tuple[Any, str]:
    """The llama.cpp student for ``backend="gguf"``: the given file, or a Q8_0 export of the student."""
    from kardlite.gguf_student import GGUFStudent

    path = Path(cfg.gguf) if cfg.gguf else out / "gguf" / "student-Q8_0.gguf"
    if not path.is_file():
        if cfg.gguf:
            raise InputError("GGUF file not found", path=path, field="gguf")
        source = Path(student.name)
        if not (source / "config.json").is_file():
            source = source / "model"
        if not (source / "config.json").is_file():
            raise InputError(f"backend 'gguf' needs a local student folder to export (got {student.name!r}) or a "
                             "GGUF file (--gguf)", field="gguf")
        from kardlite.export.gguf import export_gguf

        export_gguf(source, path.parent, quants=("Q8_0",), keep_f16=False)
    return GGUFStudent.load(path, n_ctx=n_ctx), str(path)


# Settings recorded by runs made before a setting existed, as they behaved: a resumed run compares against these.
# None: not compared (runs before it recorded none, and followed the student).
_LEGACY_SETTINGS: dict[str, Any] = {"no_answer": "force", "answer_format": None}
_FREE_SETTINGS = ("batch_size", "name")  # may change between sessions of one run


def _resolve(cfg: EvalConfig, student: Student, kb: Any, retrieve: Retrieve | None) -> InferenceSettings:
    """The settings this evaluation runs with: the student's, then ``cfg``'s overrides, resolved for the KB."""
    s = cfg.settings(student.info)
    # The pool is reranked when the settings say so and there is a reranker (a custom ``retrieve`` stands for one
    # when the config says it reranks).
    wanted = cfg.retriever == "reranker"
    available = cfg.reranker is not None or (wanted and retrieve is not None)
    if wanted and not available:
        raise InputError("retriever 'reranker' needs a trained reranker (--reranker PATH)", field="reranker")
    s = s.updated(rerank=s.rerank and available)
    return s.resolve(has_dense=getattr(kb, "has_dense", None) if kb is not None else None)


def evaluate(student: Student | str | Path | None, items: Sequence[QAItem], out_dir: str | Path,
             config: EvalConfig | None = None, *, kb: Any = None, retrieve: Retrieve | None = None) -> dict[str, Any]:
    """Evaluate a student on labelled questions and write predictions, metrics and settings to ``out_dir``.

    Args:
        student: a Student, a model path/id, or None for the packaged SmolLM2 (an untrained base).
        items: test questions with gold labels.
        out_dir: results folder; re-running with the same settings resumes.
        config: settings (see EvalConfig); unset ones come from the student's InferenceSettings.
        kb: knowledge base for ``kard``/``ka-ft``: its first stage, reranked when ``config.reranker`` is given,
            unless ``retrieve`` is given.
        retrieve: custom test-time retrieval ``(item, n_docs) -> list[Passage]`` (e.g. a reranker).

    Returns:
        The metrics dict (also in ``metrics.json``): accuracy, invalid_rate, n, ...

    Raises:
        InputError: no items, an item without label, no mode for a base model, kard without a KB.
        ArtifactError: ``out_dir`` holds results made with other settings.
    """
    cfg = config or EvalConfig()
    if not items:
        raise InputError("no questions to evaluate", field="items")
    for item in items:
        if item.label is None:
            raise InputError(f"item {item.id!r} has no gold label", field="label")
    if not isinstance(student, Student):
        student = load_student(student)
    if cfg.backend not in ("torch", "gguf"):
        raise InputError(f"unknown backend {cfg.backend!r}; choose torch or gguf", field="backend")
    s = _resolve(cfg, student, kb, retrieve)
    mode, scoring = str(s.mode), str(s.answer_scoring)
    if mode in KNOWLEDGE_MODES and retrieve is None:
        if kb is None:
            raise ArtifactError(f"mode {mode!r} needs a knowledge base (--kb) or a retrieve function")
        from kardlite.rerank.retriever import Retriever

        reranker = _load_reranker(cfg.reranker) if s.rerank and cfg.reranker is not None else None
        retrieve = Retriever(kb, reranker, first_stage=s.first_stage, pool=s.pool).passages  # type: ignore
    n_docs, budget = s.n_docs, s.max_source_tokens

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**asdict(cfg), **s.to_dict(), "student": student.name, "name": cfg.name or out.name,
                "items": [it.id for it in items], "retriever": "reranker" if s.rerank else s.first_stage,
                "reranker": cfg.reranker if s.rerank else None}
    del settings["rerank"]
    if s.greedy:
        settings.update(samples=1, top_k=None, top_p=None, temperature=None)
    if mode in ANSWER_ONLY_MODES:  # generation settings do not apply to likelihood scoring
        for key in ("decoding", "samples", "top_k", "top_p", "temperature", "max_new_tokens", "no_answer"):
            settings[key] = None
    if mode not in KNOWLEDGE_MODES:
        for key in ("retriever", "n_docs", "pool", "first_stage", "reranker"):
            settings[key] = None
    elif not s.rerank:
        for key in ("pool", "first_stage", "reranker"):
            settings[key] = None
    if scoring != "generated":
        settings["no_answer"] = None
    settings_path = out / SETTINGS
    if settings_path.is_file():
        old = json.loads(settings_path.read_text(encoding="utf-8"))
        diff = [k for k in settings if k not in _FREE_SETTINGS
                and not (k not in old and k in _LEGACY_SETTINGS and _LEGACY_SETTINGS[k] is None)
                and old.get(k, _LEGACY_SETTINGS.get(k) if settings[k] is not None else None) != settings[k]]
        if diff:
            raise ArtifactError(f"{out}: holds results made with other settings ({', '.join(diff)}); "
                                "use a new output dir")
    atomic_write_json(settings_path, settings)

    preds_path = out / PREDICTIONS
    done = _read_done(preds_path)
    todo = [it for it in items if it.id not in done]
    started = time.time()
    from tqdm.auto import tqdm

    backend = _gguf_backend(student, cfg, out, n_ctx=s.n_ctx)[0] if cfg.backend == "gguf" else None
    engine = _Engine(student, backend, s.answer_format)  # type: ignore[arg-type]
    if backend is not None:  # the runtime keeps the KV cache of the prompts' shared start: so does its eval
        from kardlite.gguf_student import shared_prefix
        from kardlite.prompts import PROBES

        backend.set_prefix(shared_prefix([engine.encode(student.prompt(
            item, mode, passages=ps, max_tokens=budget, answer_format=s.answer_format))  # type: ignore[arg-type]
            for item, ps in PROBES]))
    student.model.eval()
    with open(preds_path, "a", encoding="utf-8") as fh, tqdm(total=len(items), initial=len(items) - len(todo),
                                                             desc=f"eval {mode}") as bar:
        for b in range(0, len(todo), cfg.batch_size):
            batch = todo[b:b + cfg.batch_size]
            passages = [retrieve(it, n_docs) if mode in KNOWLEDGE_MODES else [] for it in batch]  # type: ignore
            prompts = [student.prompt(it, mode, passages=ps, max_tokens=budget,  # type: ignore[arg-type]
                                      answer_format=s.answer_format)  # type: ignore[arg-type]
                       for it, ps in zip(batch, passages, strict=True)]
            ids = [engine.encode(p) for p in prompts]  # segments: question and passages as plain text
            n_opts = [len(it.options) for it in batch]
            forced = [[False] for _ in batch]
            contradictions = [0] * len(batch)
            if mode in ANSWER_ONLY_MODES:
                scores = (engine.letters(ids, n_opts) if scoring == "letter"
                          else engine.option_texts(ids, [it.options for it in batch]))
                outputs: list[list[str]] = [[] for _ in batch]
                votes = [[max(range(len(sc)), key=sc.__getitem__)] for sc in scores]
            else:
                # Seed from the batch's first id so a resumed run samples what the first run would have.
                scores = [None] * len(batch)
                outputs = engine.generate(ids, n_opts, s, s.seed + sum(map(ord, batch[0].id)))
                votes, forced, contradictions = _read_answers(engine, batch, ids, outputs, scoring, s.no_answer)
            for j, (it, p, ps, outs, vs) in enumerate(zip(batch, prompts, passages, outputs, votes, strict=True)):
                pred = vote(vs)
                pick = next((k for k, v in enumerate(vs) if v == pred), 0)
                row = {"id": it.id, "gold": LETTERS[it.label], "prediction": None if pred is None else LETTERS[pred],
                       "correct": pred == it.label, "invalid": pred is None, "forced": any(forced[j]),
                       "contradiction": contradictions[j] > 0,
                       "votes": [None if v is None else LETTERS[v] for v in vs], "outputs": outs,
                       "rationale": rationale(outs[pick]) if outs else None,
                       "letter_logprobs": scores[j], "passages": [{"id": x.id, "title": x.title, "text": x.text}
                                                                  for x in ps if x.id in p.passage_ids],
                       "n_prompt_tokens": p.n_tokens, "trimmed": p.trimmed, "prompt": p.text}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                done[it.id] = row
            fh.flush()
            bar.update(len(batch))
    if backend is not None:
        backend.close()

    rows = [done[it.id] for it in items]
    metrics = summarize(rows, settings)
    metrics.update(student=student.name, seconds_this_session=round(time.time() - started, 1))
    atomic_write_json(out / METRICS, metrics)
    return metrics


def _read_answers(engine: _Engine | Student, batch: Sequence[QAItem], ids: list[list[int]],
                  outputs: list[list[str]], scoring: str, no_answer: str = "force",
                  ) -> tuple[list[list[int | None]], list[list[bool]], list[int]]:
    """Votes per question from its outputs: parsed (forced where none, unless ``no_answer`` is ``invalid``), or
    scored after the rationale (``kardlite.answers.forced_context``), as the runtime reads them."""
    votes: list[list[int | None]] = []
    forced: list[list[bool]] = []
    contradictions: list[int] = []
    need: list[tuple[int, int]] = []  # (question, sample) whose answer is chosen by likelihood
    for q, (it, outs) in enumerate(zip(batch, outputs, strict=True)):
        parsed = [parse_answer(o, len(it.options), options=it.options) for o in outs]
        stated = [stated_answers(o, len(it.options), options=it.options) for o in outs]
        contradictions.append(sum(len(set(s)) > 1 for s in stated))
        votes.append(parsed if scoring == "generated" else [None] * len(outs))
        forced.append([False] * len(outs))
        if scoring == "generated" and no_answer == "invalid":
            continue
        for k, v in enumerate(votes[-1]):
            if v is None:
                need.append((q, k))
    if need:
        if isinstance(engine, Student):
            engine = _Engine(engine)
        suffixes = [forced_context(outputs[q][k]) for q, k in need]
        ids_ = [ids[q] for q, _ in need]
        if scoring == "text":
            scores = engine.option_texts(ids_, [batch[q].options for q, _ in need], suffixes)
        else:
            scores = engine.letters(ids_, [len(batch[q].options) for q, _ in need], suffixes)
        for (q, k), sc in zip(need, scores, strict=True):
            votes[q][k] = max(range(len(sc)), key=sc.__getitem__)
            forced[q][k] = scoring == "generated"
    return votes, forced, contradictions
