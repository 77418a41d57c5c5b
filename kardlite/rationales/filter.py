"""Keep the rationales that support the gold answer (docs/method.md §3).

Three filters, applied in order (each later one only sees what the earlier ones kept):

- ``degenerate``: empty or far too short texts, texts that point at another question ("This question is a
  repeat of the first question ..."), and refusals.
- ``stated``: the answer the text gives must be the gold one. Its last explicit statement counts ("the correct
  answer is (C)", "Therefore, option C is correct", "Answer: C", "the answer is <option text>"); without one,
  per-option remarks do: a text that rules out the gold option ("Option (D) is incorrect") or calls only another
  option correct fails, one that rules out every other option passes as ``implied``, and the rest pass
  unchecked as ``none stated`` (left to the judge).
- ``judge``: a language model reads question, options, rationale and "So, the answer is"; the rationale is
  kept iff the arg-max over the option letters' next-token log-probabilities is the gold letter.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kardlite._io import atomic_dir, atomic_write_json
from kardlite.data.records import LETTERS, QAItem
from kardlite.errors import InputError
from kardlite.prompts import option_verdicts, stated_answers
from kardlite.rationales.store import read_store

FILTERS = ("degenerate", "stated", "judge")
MIN_CHARS = 40
MIN_WORDS = 8

# Each pattern below starts with a literal word and joins literal words by single ``\s+`` runs, so a failed attempt
# costs at most the length of the whitespace run after that word: linear in the text (tested on 100k inputs).
_REFERS_ELSEWHERE = re.compile(
    # "This question is a repeat / duplicate / repetition (of ...)"
    r"\bquestion\s+(?:is|seems\s+to\s+be|appears\s+to\s+be)\s+(?:a\s+|an\s+|just\s+|also\s+)?"
    r"(?:repeat|repetition|duplicate)\b"
    # "identical to the first question", "the same as the previous one", "a duplicate of the earlier question"
    r"|\b(?:identical|same|similar|repeat|repetition|duplicate)\s+(?:question\s+)?(?:as|to|of)\s+(?:the\s+)?"
    r"(?:previous|preceding|prior|earlier|above|first|last|other)\s+(?:question|one|problem)\b"
    # "the previous question": in a single-question prompt there is none
    r"|\b(?:previous|preceding|prior)\s+(?:question|problem)s?\b"
    # "refer to the previous explanation", "the explanation provided for the first question / question 1"
    r"|\brefer\s+(?:back\s+)?to\s+(?:the\s+|my\s+)?(?:previous|earlier|above|first)\s+"
    r"(?:explanation|answer|response|question)\b"
    r"|\b(?:explanation|answer)\s+(?:provided\s+|given\s+)?(?:for|to|in)\s+(?:the\s+)?"
    r"(?:first|previous|earlier|above)\s+question\b"
    r"|\b(?:explanation|answer)\s+(?:provided\s+|given\s+)?(?:for|to|in)\s+question\s+\d"
    # "has already been answered", "we have already provided an explanation for this question"
    r"|\balready\s+(?:been\s+)?(?:answered|explained|provided\s+an\s+explanation)\b", re.IGNORECASE)
# A refusal opens with an apology or says the writer will not help; "as an AI" alone is not one (a good rationale
# may say "as an AI, I rely on ..." and still explain).
_REFUSAL_OPENING = re.compile(r"\s*(?:I'm\s+sorry|I’m\s+sorry|I\s+am\s+sorry|I\s+apologi[sz]e|Sorry,)", re.IGNORECASE)
_REFUSAL = re.compile(
    r"\bI\s+(?:cannot|can't|can’t|can\s+not|am\s+unable\s+to|am\s+not\s+able\s+to|won't|won’t|will\s+not)\s+"
    r"(?:help|assist|answer|provide|generate|promote|condone|support|fulfil|fulfill|comply)\b"
    r"|\bI\s+(?:do\s+not|don't|don’t)\s+(?:encourage|endorse|condone|promote|support)\b", re.IGNORECASE)

# Questions whose answer is the exception; per-option remarks read the other way round there.
_NEGATED_QUESTION = re.compile(
    r"\b(?:not|except|false|untrue|unlikely|cannot|can't|never|least|lowest|aside\s+from|all\s+but|everything\s+but"
    r"|other\s+than|excluded|nonexistent|incapable|inability|unable)\b", re.IGNORECASE)


def degenerate_reason(text: str, *, min_chars: int = MIN_CHARS, min_words: int = MIN_WORDS) -> str | None:
    """Why ``text`` is useless as a training rationale, or None if it is not.

    "As mentioned above" (the rationale's own earlier text), "the first question" alone (a sub-question of a
    multi-step rationale) and "as an AI" alone do not count; pointing at a previous or repeated question, and an
    apology or "I cannot provide ..." do.

    Example:
        >>> degenerate_reason("This question is a repeat of the first question. See the previous explanation.")
        'refers to another question'
        >>> degenerate_reason("The first question is whether it rains; as mentioned above, it does. So yes.") is None
        True
    """
    stripped = text.strip()
    if not stripped:
        return "empty"
    if len(stripped) < min_chars or len(stripped.split()) < min_words:
        return "too short"
    if _REFERS_ELSEWHERE.search(stripped):
        return "refers to another question"
    if _REFUSAL_OPENING.match(stripped) or _REFUSAL.search(stripped):
        return "refusal"
    return None


def stated_answer(text: str, item: QAItem) -> int | None:
    """The option index of the last explicit answer statement in ``text`` (letter or option text), or None.

    Reads what :func:`kardlite.prompts.stated_answers` reads, with the item's option texts.

    Example:
        >>> item = QAItem("q", "?", ("red", "blue", "green", "grey"), 2)
        >>> stated_answer("Option (A) is incorrect. Therefore, option (C) is the correct answer.", item)
        2
        >>> stated_answer("Blue light scatters more, so the correct answer is green.", item)
        2
        >>> stated_answer("Option (A) is correct because red is warm.", item) is None  # discussion, not a verdict
        True
    """
    said = stated_answers(text, len(item.options), item.options)
    return said[-1] if said else None


def check_answer(text: str, item: QAItem) -> tuple[str, str | None]:
    """How ``text`` relates to the gold answer: a verdict and, for a failure, the reason.

    Verdicts: ``pass`` (its last stated answer is the gold one), ``implied`` (no statement, but it calls the gold
    option correct, or rules out every other option), ``none stated`` (nothing to check) and ``fail``. It fails
    when its last stated answer is another option, or, with no statement, when it rules out the gold option
    ("Option (D) is incorrect", gold D) without calling it correct, or calls only other options correct (without
    a caveat such as "correct, but not the best"). In a negated question ("which is NOT ...", "all but") such
    remarks are ambiguous, so only statements count there.

    Example:
        >>> item = QAItem("q", "?", ("red", "blue", "green", "grey"), 2)
        >>> check_answer("Options (A), (B) and (D) are incorrect.", item)
        ('implied', None)
        >>> check_answer("Option (C) is incorrect because green is cold.", item)
        ('fail', 'rules out the gold answer (C)')
    """
    if item.label is None:
        raise InputError(f"item {item.id!r} has no gold label", field="label")
    said = stated_answer(text, item)
    if said is not None:
        if said != item.label:
            return "fail", f"states ({LETTERS[said]}), gold is ({item.answer_letter})"
        return "pass", None
    if _NEGATED_QUESTION.search(item.question):
        # "Which is NOT ...", "all but": calling the gold option "incorrect" or "false" can be the right verdict.
        return "none stated", None
    endorsed, ruled_out = option_verdicts(text, len(item.options))
    if item.label in ruled_out and item.label not in endorsed:
        return "fail", f"rules out the gold answer ({item.answer_letter})"
    others = sorted(endorsed - {item.label})
    if others and item.label not in endorsed:
        return "fail", f"calls ({LETTERS[others[0]]}) correct, gold is ({item.answer_letter})"
    if item.label in endorsed or len(ruled_out) == len(item.options) - 1:
        return "implied", None
    return "none stated", None


class Judge:
    """Reads question + options + rationale + "So, the answer is" and picks the option letter.

    Works with any causal or seq2seq LM: ``smollm2`` (the packaged SmolLM2-135M-Instruct, de-quantised and
    cached by ``kardlite._hf``), a ``.gguf`` path, a local HF folder or hub id (e.g. ``google/flan-t5-large``,
    the reference judge, where the hub is reachable).

    Args:
        model: the model name or path.
        batch_size: rationales per forward pass.
        max_rationale_chars: longer rationales are cut (the question and options never are).
        threads: torch CPU threads (None: torch's default).
    """

    def __init__(self, model: str = "smollm2", *, batch_size: int = 8, max_rationale_chars: int = 3000,
                 threads: int | None = None) -> None:
        import torch

        from kardlite._hf import load_lm

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.name = model
        self.model, self.tokenizer, self.seq2seq = load_lm(model)
        self.batch_size = batch_size
        self.max_rationale_chars = max_rationale_chars
        self._letter_ids: dict[int, list[int]] = {}

    @staticmethod
    def text(item: QAItem, rationale: str, max_chars: int = 3000) -> str:
        """The judge's input: KARD's reference format, ending where the letter comes next."""
        rationale = " ".join(rationale.split())[:max_chars]
        return f"Question: {item.linearize()}\nExplanation: {rationale}\nSo, the answer is"

    def letter_ids(self, n_options: int) -> list[int]:
        """First token id of each option letter as the model would write it next (" A" for causal LMs)."""
        if n_options not in self._letter_ids:
            from kardlite.prompts import letter_token_ids

            def encode(text: str) -> list[int]:
                return self.tokenizer.encode(text, add_special_tokens=False)

            self._letter_ids[n_options] = letter_token_ids(encode, n_options, prefix="" if self.seq2seq else " ")
        return self._letter_ids[n_options]

    def scores(self, pairs: Sequence[tuple[QAItem, str]], *, progress: bool = False) -> list[list[float]]:
        """Log-probabilities (normalised over the option letters) for each (item, rationale) pair, in order."""
        torch = self.torch
        tok = self.tokenizer
        texts = [self.text(item, r, self.max_rationale_chars) for item, r in pairs]
        encoded = [tok.encode(t, add_special_tokens=self.seq2seq) for t in texts]
        # Sort by length so each batch pads little; results go back to input order.
        order = sorted(range(len(pairs)), key=lambda i: len(encoded[i]))
        out: list[list[float]] = [[] for _ in pairs]
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        bar = tqdm(total=len(pairs), disable=not progress, unit="rationale", desc=f"judge {self.name}",
                   dynamic_ncols=True)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                width = max(len(encoded[i]) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    seq = encoded[i]
                    if self.seq2seq:
                        ids[row, :len(seq)] = torch.tensor(seq)
                        mask[row, :len(seq)] = 1
                    else:  # left padding: the next-token position is the last column for every row
                        ids[row, width - len(seq):] = torch.tensor(seq)
                        mask[row, width - len(seq):] = 1
                if self.seq2seq:
                    start_id = self.model.config.decoder_start_token_id
                    dec = torch.full((len(batch), 1), start_id, dtype=torch.long)
                    logits = self.model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits[:, -1]
                else:
                    positions = (mask.cumsum(-1) - 1).clamp(min=0)
                    logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                        logits_to_keep=1).logits[:, -1]
                logp = torch.log_softmax(logits.float(), dim=-1)
                for row, i in enumerate(batch):
                    letter_logp = logp[row, self.letter_ids(len(pairs[i][0].options))]
                    out[i] = torch.log_softmax(letter_logp, dim=-1).tolist()
                bar.update(len(batch))
        bar.close()
        return out

    def predict(self, pairs: Sequence[tuple[QAItem, str]], *, progress: bool = False) -> list[int]:
        """The arg-max option index for each (item, rationale) pair."""
        return [max(range(len(s)), key=s.__getitem__) for s in self.scores(pairs, progress=progress)]


def filter_rationales(store: str | Path, items: Sequence[QAItem], out_dir: str | Path | None = None, *,
                      judge: str | Judge | None = "smollm2", filters: Sequence[str] = FILTERS,
                      min_chars: int = MIN_CHARS, min_words: int = MIN_WORDS, batch_size: int = 8,
                      progress: bool = True) -> dict[str, Any]:
    """Filter a store's rationales against the gold answers; write kept/dropped JSONL and stats.

    Args:
        store: a rationale store (``kardlite teach`` or ``kardlite rationales import``).
        items: the task questions, with gold labels; every store item id must be among them.
        out_dir: where ``kept.jsonl``, ``dropped.jsonl`` and ``stats.json`` go (the folder is replaced
            atomically); None to only return the stats.
        judge: the judge model name/path or a loaded Judge; None (or ``judge`` not in ``filters``) skips it.
        filters: which of ``degenerate``, ``stated``, ``judge`` to apply, in that fixed order.
        min_chars, min_words: the degenerate filter's length floor.
        batch_size: judge batch size.
        progress: progress bars.

    Returns:
        The stats: counts, keep rate overall and per filter, per-question histogram of kept rationales,
        questions left with none, seconds per rationale for each filter.

    Raises:
        InputError: a store item is not in the task, or an item has no gold label.
    """
    unknown = set(filters) - set(FILTERS)
    if unknown:
        raise ValueError(f"unknown filters {sorted(unknown)}; choose from {FILTERS}")
    by_id = {item.id: item for item in items}
    samples = read_store(store).samples
    for s in samples:
        item = by_id.get(s["item_id"])
        if item is None:
            raise InputError(f"item id {s['item_id']!r} is not in the task file", path=store, field="item_id")
        if item.label is None:
            raise InputError(f"item {item.id!r} has no gold label, so its rationales cannot be checked",
                             field="label")
    rows = [{"item_id": s["item_id"], "sample": s["sample"], "text": s["text"], "filters": {}} for s in samples]
    dropped: list[dict[str, Any]] = []
    timing: dict[str, dict[str, float]] = {}

    def run(name: str, fn: Any, alive: list[dict[str, Any]]) -> list[dict[str, Any]]:
        start = time.perf_counter()
        kept = fn(alive)
        seconds = time.perf_counter() - start
        timing[name] = {"seen": len(alive), "kept": len(kept), "seconds": round(seconds, 3),
                        "ms_per_rationale": round(1000 * seconds / max(1, len(alive)), 3),
                        "keep_rate": round(len(kept) / len(alive), 4) if alive else None}
        return kept

    def drop(row: dict[str, Any], name: str, reason: str) -> None:
        row["filters"][name] = "fail"
        dropped.append({**row, "filter": name, "reason": reason})

    def degenerate(alive: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = []
        for row in alive:
            reason = degenerate_reason(row["text"], min_chars=min_chars, min_words=min_words)
            if reason:
                drop(row, "degenerate", reason)
            else:
                row["filters"]["degenerate"] = "pass"
                kept.append(row)
        return kept

    def stated(alive: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = []
        for row in alive:
            verdict, reason = check_answer(row["text"], by_id[row["item_id"]])
            if verdict == "fail":
                drop(row, "stated", reason or "contradicts the gold answer")
            else:
                row["filters"]["stated"] = verdict
                kept.append(row)
        return kept

    judge_name = None

    def judged(alive: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nonlocal judge_name
        model = judge if isinstance(judge, Judge) else Judge(str(judge), batch_size=batch_size)
        judge_name = model.name
        scores = model.scores([(by_id[r["item_id"]], r["text"]) for r in alive], progress=progress)
        kept = []
        for row, s in zip(alive, scores, strict=True):
            item = by_id[row["item_id"]]
            pick = max(range(len(s)), key=s.__getitem__)
            row["judge"] = {"letter": LETTERS[pick], "p_gold": round(math.exp(s[item.label]), 4)}
            if pick != item.label:
                drop(row, "judge", f"judge picks ({LETTERS[pick]}), gold is ({item.answer_letter})")
            else:
                row["filters"]["judge"] = "pass"
                kept.append(row)
        return kept

    alive = rows
    steps = {"degenerate": degenerate, "stated": stated, "judge": judged}
    for name in FILTERS:
        if name in filters and (name != "judge" or judge is not None):
            alive = run(name, steps[name], alive)

    stats = _stats(items, samples, alive, dropped, timing)
    if "stated" in filters:
        # How many kept texts had their answer checked at all ("none stated" passed unchecked).
        stats["kept_by_answer_check"] = dict(Counter(r["filters"].get("stated") for r in alive).most_common())
    stats["judge_model"] = judge_name
    if out_dir is not None:
        with atomic_dir(out_dir) as tmp:
            _write_jsonl(tmp / "kept.jsonl", alive)
            _write_jsonl(tmp / "dropped.jsonl", dropped)
            atomic_write_json(tmp / "stats.json", stats)
    return stats


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    import json

    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _stats(items: Sequence[QAItem], samples: list[dict[str, Any]], kept: list[dict[str, Any]],
           dropped: list[dict[str, Any]], timing: dict[str, Any]) -> dict[str, Any]:
    in_store = Counter(s["item_id"] for s in samples)
    per_q = Counter(r["item_id"] for r in kept)
    questions = [i.id for i in items if i.id in in_store]
    histogram = Counter(per_q.get(q, 0) for q in questions)
    return {
        "rationales": len(samples),
        "kept": len(kept),
        "keep_rate": round(len(kept) / len(samples), 4) if samples else None,
        "questions": len(questions),
        "questions_without_rationales_in_store": len(items) - len(questions),
        "questions_with_none_kept": histogram.get(0, 0),
        "kept_per_question_histogram": {str(k): histogram[k] for k in sorted(histogram)},
        "per_question_keep_rate_mean": round(sum(per_q.get(q, 0) / in_store[q] for q in questions) / len(questions), 4)
        if questions else None,
        "filters": timing,
        "drop_reasons": dict(Counter(d["reason"] if d["filter"] == "degenerate" else d["filter"]
                                     for d in dropped).most_common()),
    }
