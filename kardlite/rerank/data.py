"""Reranker training data: for each (question, kept rationale), 8 candidate passages labelled by rationale BM25.

docs/method.md §6: candidates are sampled from BM25(rationale) top-32 and BM25(question) top-32 (4 + 4 by
default); the label of every candidate is the BM25 score of the RATIONALE against it, from the same index,
so a question-retrieved candidate is re-scored against the rationale. The reranker then learns to score from
the question alone what BM25 would give against the unseen rationale. The query the reranker sees is the
linearised question (the same text used for first-stage retrieval at test time).

Splits are by question (item id), never by (question, rationale) pair (§8).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from tqdm.auto import tqdm

from kardlite._io import atomic_write_text, iter_jsonl
from kardlite.data.rationales import read_kept_rationales
from kardlite.data.records import QAItem
from kardlite.data.split import split_by_question
from kardlite.errors import InputError


class _KBLike(Protocol):  # the part of kardlite.kb.KnowledgeBase this module uses
    def search_many(self, queries: list[str], k: int, retriever: str = ...) -> list[list[Any]]: ...
    def bm25_scores(self, text: str, passage_ids: Sequence[str]) -> Any: ...
    def dense_scores(self, text: str, passage_ids: Sequence[str]) -> Any: ...
    def get(self, ids: Sequence[str]) -> list[Any]: ...


# Dense labels are cosines; a candidate list's cosines with a rationale differ by ~0.05-0.3, BM25 scores by a
# few units. x50 puts them on BM25's scale, so the same tau1 gives a similarly peaked target (on OpenBookQA the
# scale matching the BM25 labels' mean top-candidate probability at tau1 = 2 was 54).
DENSE_SCALE = 50.0


@dataclass
class CandidateConfig:
    """How candidates are drawn for one (question, rationale) pair.

    Attributes:
        pool: depth of each BM25 list the candidates are sampled from (paper: 32).
        from_rationale: candidates sampled from BM25(rationale) top-``pool`` (paper: 4).
        from_question: candidates sampled from BM25(question) top-``pool`` (paper: 4).
        seed: sampling seed; each pair gets its own stream (seed, item id, rationale index), so the result
            does not depend on the order of the input.
        dev_fraction: share of questions (by item id) held out as dev.
        labels: "bm25" (the paper's: BM25 of the rationale against each candidate) or "dense" (``DENSE_SCALE`` ×
            the cosine of the rationale with each candidate under the KB's encoder; needs a dense index). On
            OpenBookQA, dense(rationale) finds the gold fact more often than BM25(rationale), and a reranker trained
            on dense labels beat every first stage at recall@1 (docs/results/reranker-obqa.md, GPU runs).
    """

    pool: int = 32
    from_rationale: int = 4
    from_question: int = 4
    seed: int = 42
    dev_fraction: float = 0.1
    labels: Literal["bm25", "dense"] = "bm25"

    @property
    def per_query(self) -> int:
        return self.from_rationale + self.from_question

    def validate(self) -> None:
        if self.pool < 1:
            raise InputError(f"pool must be >= 1, got {self.pool}", field="pool")
        if self.from_rationale < 0 or self.from_question < 0 or self.per_query < 2:
            raise InputError("need from_rationale, from_question >= 0 and at least 2 candidates in all",
                             field="from_rationale")
        if not 0 <= self.dev_fraction < 1:
            raise InputError(f"dev_fraction must be in [0, 1), got {self.dev_fraction}", field="dev_fraction")
        if self.labels not in ("bm25", "dense"):
            raise InputError(f"labels must be 'bm25' or 'dense', got {self.labels!r}", field="labels")


@dataclass
class RerankQuery:
    """One training query: the linearised question, its candidates and their rationale-BM25 labels.

    Attributes:
        item_id: question id (the split key).
        rationale_index: which kept rationale of the question produced this query.
        query: the linearised question (what the reranker sees).
        ids: candidate passage ids.
        texts: candidate passage contents (title + text), in the order of ``ids``.
        labels: BM25 score of the rationale against each candidate (or the scaled dense cosine: ``labels="dense"``).
        origin: "r" (from the rationale's list), "q" (from the question's) or "rq" (in both) per candidate.
    """

    item_id: str
    rationale_index: int
    query: str
    ids: list[str]
    texts: list[str]
    labels: list[float]
    origin: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_rationales(path: str | Path) -> list[tuple[str, int, str]]:
    """Read a kept-rationales JSONL into (item id, rationale index, text) triples, sorted by item and index.

    The file is read by :func:`kardlite.data.rationales.read_kept_rationales` (the reader distillation uses), so
    lines marked ``"kept": false`` are skipped and a missing field or empty text is an InputError naming the line.
    """
    return [(item_id, index, text) for item_id, rows in read_kept_rationales(path).items() for index, text in rows]


def _hit_ids(hits: Iterable[Any]) -> list[str]:
    return [h["id"] if isinstance(h, Mapping) else h.id for h in hits]


def _sample(rng: random.Random, ids: list[str], n: int, taken: set[str]) -> list[str]:
    free = [i for i in ids if i not in taken]
    return rng.sample(free, min(n, len(free)))


def build_queries(kb: _KBLike, items: Sequence[QAItem], rationales: Iterable[tuple[str, int, str]],
                  config: CandidateConfig | None = None, *, progress: bool = True) -> list[RerankQuery]:
    """Build one RerankQuery per (question, rationale) pair.

    Args:
        kb: a loaded ``kardlite.kb.KnowledgeBase`` (its BM25 index gives both the candidates and the labels).
        items: the questions; each rationale's item id must be among them.
        rationales: (item id, rationale index, text) triples, e.g. from :func:`read_rationales`.
        config: sampling settings (defaults: 4 + 4 from the top 32).
        progress: show a progress bar.

    Returns:
        The queries, in input order. Duplicates between the two lists are removed and the shortfall is
        refilled from the rest of both lists, so each query keeps ``per_query`` candidates when the pools allow.
    """
    config = config or CandidateConfig()
    config.validate()
    by_id = {it.id: it for it in items}
    rats = list(rationales)
    for item_id, index, text in rats:
        if item_id not in by_id:
            raise InputError(f"rationale {index} refers to unknown item {item_id!r}", field="item_id")
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"rationale {index} of item {item_id!r} is empty", field="text")
    if not rats:
        return []
    qtexts = {iid: by_id[iid].linearize() for iid in dict.fromkeys(r[0] for r in rats)}
    q_order = list(qtexts)
    q_hits = dict(zip(q_order, kb.search_many([qtexts[i] for i in q_order], config.pool, "bm25"), strict=True))
    r_hits = kb.search_many([t for _, _, t in rats], config.pool, "bm25")
    out: list[RerankQuery] = []
    for (item_id, index, text), rh in tqdm(list(zip(rats, r_hits, strict=True)), desc="candidates",
                                           disable=not progress):
        rng = random.Random(f"{config.seed}:{item_id}:{index}")
        r_ids, q_ids = _hit_ids(rh), _hit_ids(q_hits[item_id])
        chosen = _sample(rng, r_ids, config.from_rationale, set())
        chosen += _sample(rng, q_ids, config.from_question, set(chosen))
        # refill: a passage in both lists counts once; draw the missing ones from what is left of both
        rest = list(dict.fromkeys(r_ids + q_ids))
        chosen += _sample(rng, rest, config.per_query - len(chosen), set(chosen))
        if len(chosen) < 2:
            continue  # nothing to rank (tiny KB); such a query teaches nothing
        scores = (kb.bm25_scores(text, chosen) if config.labels == "bm25"
                  else DENSE_SCALE * kb.dense_scores(text, chosen))
        labels = [float(x) for x in scores]
        passages = kb.get(chosen)
        r_set, q_set = set(r_ids), set(q_ids)
        origin = [("r" if c in r_set else "") + ("q" if c in q_set else "") for c in chosen]
        out.append(RerankQuery(item_id=item_id, rationale_index=index, query=qtexts[item_id], ids=chosen,
                               texts=[p.contents for p in passages], labels=labels, origin=origin))
    return out


def split_by_item(queries: Sequence[RerankQuery], dev_fraction: float = 0.1,
                  seed: int = 42) -> tuple[list[RerankQuery], list[RerankQuery]]:
    """Question-disjoint train/dev split (:func:`kardlite.data.split.split_by_question`, the one distillation uses).

    Returns:
        (train, dev); every query of one item lands on the same side.
    """
    return split_by_question(queries, dev_fraction, seed)


def save_queries(path: str | Path, queries: Iterable[RerankQuery]) -> int:
    """Write queries as JSONL (atomically); returns the count."""
    lines = [json.dumps(q.to_dict(), ensure_ascii=False) for q in queries]
    atomic_write_text(path, "".join(x + "\n" for x in lines))
    return len(lines)


def load_queries(path: str | Path) -> list[RerankQuery]:
    """Read queries written by :func:`save_queries`; a malformed line is an InputError naming it."""
    out = []
    for line, obj in iter_jsonl(path):
        try:
            q = RerankQuery(item_id=str(obj["item_id"]), rationale_index=int(obj["rationale_index"]),
                            query=obj["query"], ids=[str(i) for i in obj["ids"]], texts=list(obj["texts"]),
                            labels=[float(x) for x in obj["labels"]], origin=list(obj.get("origin") or []))
        except KeyError as err:
            raise InputError("missing", path=path, line=line, field=str(err.args[0])) from None
        except (TypeError, ValueError) as err:
            raise InputError(f"bad value ({err})", path=path, line=line) from None
        if not (len(q.ids) == len(q.texts) == len(q.labels)) or len(q.ids) < 2:
            raise InputError("ids, texts and labels must have the same length (>= 2)", path=path, line=line,
                             field="labels")
        if not isinstance(q.query, str) or not q.query.strip():
            raise InputError("empty", path=path, line=line, field="query")
        out.append(q)
    return out
