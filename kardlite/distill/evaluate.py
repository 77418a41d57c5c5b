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
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from kardlite._io import atomic_write_json, atomic_write_text
from kardlite.answers import (
    answer_done,
    forced_context,
    option_continuations,
    parse_answer,
    rationale,
    stated_answers,
    vote,
)
from kardlite.answers import letter_token_ids as prompt_letter_ids
from kardlite.data.records import LETTERS, QAItem
from kardlite.distill.student import Student, load_student
from kardlite.errors import ArtifactError, InputError
from kardlite.kb.passage import Passage
from kardlite.prompts import ANSWER_ONLY_MODES, KNOWLEDGE_MODES, AnswerFormat, Mode
from kardlite.settings import DEFAULTS, FIRST_STAGES, InferenceSettings

Retrieve = Callable[[QAItem, int], list[Passage]]
PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
SETTINGS = "eval.json"


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




# ----------------------------------------------------------------------------- model calls


def _left_pad(seqs: list[list[int]], pad: int) -> tuple[Any, Any]:
    import torch

    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s):] = torch.tensor(s)
        mask[i, n - len(s):] = 1
    return ids, mask


def _right_pad(seqs: list[list[int]], pad: int) -> tuple[Any, Any]:
    import torch

    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def letter_token_ids(student: Student, n_options: int) -> list[int]:
    """The token that starts the target `` X`` for each option letter (what an FT student learnt to write)."""
    return prompt_letter_ids(student.encode, n_options)


def score_letters(student: Student, prompts: list[list[int]], n_options: list[int]) -> list[list[float]]:
    """Log-probabilities of each option letter as the next token after each prompt."""
    import torch

    model, tok = student.model, student.tokenizer
    with torch.no_grad():
        if student.kind == "seq2seq":
            ids, mask = _right_pad(prompts, tok.pad_token_id)
            start = model.config.decoder_start_token_id
            dec = torch.full((len(prompts), 1), start, dtype=torch.long)
            logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits[:, -1]
        else:
            ids, mask = _left_pad(prompts, tok.pad_token_id)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[:, -1]
        logp = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for row, n in zip(logp, n_options, strict=True):
        letters = letter_token_ids(student, n)
        out.append([float(row[t]) for t in letters])
    return out


def score_option_texts(student: Student, prompts: list[list[int]], options: list[Sequence[str]],
                       answer_format: AnswerFormat = "letter") -> list[list[float]]:
    """Mean log-likelihood of each option's answer as the continuation of each prompt: `` <text>``, or
    `` (X) <text>`` for a student trained on the ``both`` format.

    Small models tie letters to options poorly; the option's own words are often the better read of what they
    mean. Causal students only.
    """
    conts = option_continuations(options, answer_format)
    return [[mean for mean, _ in row] for row in score_continuations(student, prompts, conts)]


def score_continuations(student: Student, prompts: list[list[int]], continuations: list[Sequence[str]]
                        ) -> list[list[tuple[float, float]]]:
    """(mean, total) log-likelihood of each continuation text after its prompt, tokenised as plain text."""
    import torch

    if student.kind != "causal":
        raise InputError("continuation scoring needs a causal (decoder-only) student", field="answer_scoring")
    seqs, spans = [], []
    for prompt, conts in zip(prompts, continuations, strict=True):
        for text in conts:
            cont = student.encode(text, special=False) or student.encode(text.strip(), special=False)
            seqs.append(prompt + cont)
            spans.append(len(cont))
    out: list[tuple[float, float]] = []
    model, tok = student.model, student.tokenizer
    with torch.no_grad():
        for i in range(0, len(seqs), 16):
            part, lens = seqs[i:i + 16], spans[i:i + 16]
            ids, mask = _left_pad(part, tok.pad_token_id)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            keep = max(lens) + 1
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[:, -keep:-1]
            logp = torch.log_softmax(logits.float(), dim=-1)
            for row, n in enumerate(lens):
                targets = ids[row, -n:]
                picked = logp[row, -n:].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                out.append((float(picked.mean()), float(picked.sum())))
    result, pos = [], 0
    for conts in continuations:
        result.append(out[pos:pos + len(conts)])
        pos += len(conts)
    return result


def decode_until_stop(tokenizer: Any, seqs: list[list[int]], stop_ids: Sequence[int]) -> list[str]:
    """Decode each generated sequence up to (not including) its first stop token.

    Skipping special tokens instead would glue ``Answer: B`` to whatever the model wrote after its eos
    (``Answer: Buser``), which no longer parses.
    """
    out = []
    for seq in seqs:
        end = next((i for i, t in enumerate(seq) if t in stop_ids), len(seq))
        out.append(tokenizer.decode(seq[:end], skip_special_tokens=True))
    return out


def generate(student: Student, prompts: list[list[int]], n_options: list[int],
             cfg: EvalConfig | InferenceSettings) -> list[list[str]]:
    """Generate one (greedy) or ``cfg.samples`` (self-consistency) outputs per prompt; returns texts per prompt."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    cfg = cfg if isinstance(cfg, InferenceSettings) else cfg.settings()
    model, tok = student.model, student.tokenizer
    n_ret = cfg.samples if cfg.decoding == "sc" else 1
    if student.kind == "seq2seq":
        ids, mask = _right_pad(prompts, tok.pad_token_id)
        skip = 1  # the decoder start token
    else:
        ids, mask = _left_pad(prompts, tok.pad_token_id)
        skip = ids.shape[1]
    row_options = [n for n in n_options for _ in range(n_ret)]
    # A student is trained to end its target with the tokenizer's eos token, which need not be the model's
    # generation eos (SmolLM2 from GGUF: <|im_start|> vs <|im_end|>): stop on either.
    gen_eos = model.generation_config.eos_token_id
    gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
    stop_ids = sorted({i for i in [tok.eos_token_id, *gen_eos] if i is not None})

    def _texts(seqs: Any) -> list[str]:
        return decode_until_stop(tok, seqs.tolist(), stop_ids)

    class _StopAtAnswer(StoppingCriteria):
        # Stop a row once it has written a complete "Answer: X": the rest would be discarded anyway.
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            texts = _texts(input_ids[:, skip:])
            ended = [bool(set(row) & set(stop_ids)) for row in input_ids[:, skip:].tolist()]
            return torch.tensor([e or answer_done(t, n) for t, e, n in zip(texts, ended, row_options, strict=True)],
                                dtype=torch.bool, device=input_ids.device)

    kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "pad_token_id": tok.pad_token_id,
                              "eos_token_id": stop_ids, "stopping_criteria": StoppingCriteriaList([_StopAtAnswer()])}
    if cfg.decoding == "sc":
        kwargs.update(do_sample=True, top_k=cfg.top_k, top_p=cfg.top_p, temperature=cfg.temperature,
                      num_return_sequences=cfg.samples)
    else:
        kwargs.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    texts = _texts(out[:, skip:])
    return [texts[i * n_ret:(i + 1) * n_ret] for i in range(len(prompts))]


# ----------------------------------------------------------------------------- the evaluation


def _read_done(path: Path) -> dict[str, dict[str, Any]]:
    """Rows already written; a torn last line (a crash mid-write) is cut off so appending stays valid."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    done: dict[str, dict[str, Any]] = {}
    good_end = 0
    for line in data.splitlines(keepends=True):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not line.endswith(b"\n"):
            break
        done[row["id"]] = row
        good_end += len(line)
    if good_end != len(data):
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    return done


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


def summarize(rows: Sequence[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """Metrics of evaluated rows: accuracy, invalid/forced/contradiction rates, letter counts."""
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    invalid = sum(r["invalid"] for r in rows)
    forced = sum(bool(r.get("forced")) for r in rows)
    all_votes = [v for r in rows for v in r["votes"]]
    return {
        "name": settings["name"], "mode": settings["mode"], "n": n,
        "accuracy": round(correct / n, 4) if n else None, "correct": correct,
        "invalid_rate": round(invalid / n, 4) if n else None, "invalid": invalid,
        "forced_rate": round(forced / n, 4) if n else None, "forced": forced,
        "contradiction_rate": round(sum(bool(r.get("contradiction")) for r in rows) / n, 4) if n else None,
        "invalid_output_rate": round(sum(v is None for v in all_votes) / max(len(all_votes), 1), 4),
        "letters": dict(sorted(Counter(r["prediction"] or "-" for r in rows).items())),
        "decoding": settings["decoding"] or "likelihood", "samples": settings["samples"],
        "answer_scoring": settings.get("answer_scoring"), "max_new_tokens": settings.get("max_new_tokens"),
        "retriever": settings["retriever"], "n_docs": settings["n_docs"],
        "max_source_tokens": settings["max_source_tokens"],
        "trimmed_prompts": sum(r["trimmed"] for r in rows),
        "mean_prompt_tokens": round(sum(r["n_prompt_tokens"] for r in rows) / n, 1) if n else None,
    }


# ----------------------------------------------------------------------------- reports

def _partial_metrics(run_dir: Path) -> dict[str, Any]:
    """Metrics of an evaluation that has not finished, from the rows written so far (marked partial)."""
    settings = json.loads((run_dir / SETTINGS).read_text(encoding="utf-8"))
    rows = list(_read_done(run_dir / PREDICTIONS).values())
    metrics = {**summarize(rows, settings), "student": settings.get("student"), "items": settings["items"]}
    metrics["name"] = f"{settings['name']} (partial: {len(rows)}/{len(settings['items'])})"
    return metrics


_REPORT_COLUMNS = ("name", "mode", "student", "retriever", "n_docs", "decoding", "answer_scoring", "n", "accuracy",
                   "invalid_rate", "forced_rate", "contradiction_rate", "trimmed_prompts")


def write_report(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Put several evaluated systems side by side: a markdown table at ``out`` and a CSV beside it.

    Args:
        run_dirs: evaluation output folders (each with ``metrics.json``).
        out: the markdown file to write (``.csv`` with the same stem is written too).

    Returns:
        The markdown path.

    Raises:
        ArtifactError: a folder without ``metrics.json``.

    Runs over different question sets are still tabulated, but the table gets a warning line (and a
    ``UserWarning`` is issued): their accuracies are not comparable.
    """
    import warnings

    rows, question_sets, partial = [], [], []
    for d in run_dirs:
        path, settings = Path(d) / METRICS, Path(d) / SETTINGS
        if path.is_file():
            rows.append(json.loads(path.read_text(encoding="utf-8")))
            partial.append(False)
        elif (Path(d) / PREDICTIONS).is_file() and settings.is_file():
            rows.append(_partial_metrics(Path(d)))
            partial.append(True)
        else:
            raise ArtifactError(f"{d}: no {METRICS} (run `kardlite eval` first, or let it finish)")
        if settings.is_file():
            question_sets.append(tuple(json.loads(settings.read_text(encoding="utf-8"))["items"]))
    out = Path(out)
    notes = []
    if len(rows) > 1 and (len(set(question_sets)) > 1 or any(partial)):
        counts = ", ".join(f"{r['name']}: {r['n']}" for r in rows)
        notes.append(f"> Warning: these runs are not over the same questions ({counts}); their accuracies are not "
                     "directly comparable.")
        warnings.warn(notes[-1][2:], UserWarning, stacklevel=2)

    def cell(row: dict[str, Any], col: str) -> str:
        value = row.get(col)
        if value is None:
            return "-"
        if col in ("accuracy", "invalid_rate", "forced_rate", "contradiction_rate"):
            return f"{100 * value:.1f}%"
        return str(value)

    lines = ["| " + " | ".join(_REPORT_COLUMNS) + " |", "|" + "---|" * len(_REPORT_COLUMNS)]
    lines += ["| " + " | ".join(cell(r, c) for c in _REPORT_COLUMNS) + " |" for r in rows]
    if notes:
        lines += ["", *notes]
    atomic_write_text(out, "\n".join(lines) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(_REPORT_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out.with_suffix(".csv"), buf.getvalue())
    return out
