"""Does another way of reading an answer-only demo student's option scores answer better, and do the passages hold
the answer at all? Scored on the demo dev and test questions, chosen on dev.

For each question the bundle answers as it ships (its passages, its prompt); then each option's text is scored
twice with the bundle's own GGUF: after the prompt with the passages shown, and after the same prompt with no
passage. Ways of picking an option from those scores:

- ``mean``: mean log-likelihood per token after the prompt with passages (what the bundle does);
- ``sum``: the summed log-likelihood (no length normalisation);
- ``pmi``: summed log-likelihood with passages minus without: how much the passages raise each option;
- ``mean+pmi``: ``mean`` plus ``pmi`` per token;
- ``no-passages``: ``mean`` after the prompt without passages (what the student knows on its own);
- ``word-overlap``: not the student: the share of an option's words found in the shown passages, a reading of the
  passages that needs no model (ties go to the first option).

    OMP_NUM_THREADS=2 python bench/demo_scoring.py exports/demo --out docs/results/demo-scoring.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

WAYS = ("mean", "sum", "pmi", "mean+pmi", "no-passages", "word-overlap")
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def pick(way: str, row: dict[str, Any]) -> int:
    """The option index ``way`` picks from one question's scores (``row``: ``with``/``without`` as
    [total, n_tokens] per option, ``options``, ``passages``)."""
    with_, without = row["with"], row["without"]

    def score(i: int) -> float:
        total, n = with_[i]
        if way == "mean":
            return total / n
        if way == "sum":
            return total
        if way == "pmi":
            return total - without[i][0]
        if way == "mean+pmi":
            return (2 * total - without[i][0]) / n
        if way == "no-passages":
            return without[i][0] / without[i][1]
        if way == "word-overlap":
            words = _words(row["options"][i])
            return len(words & _words(" ".join(row["passages"]))) / max(1, len(words))
        raise ValueError(f"unknown way {way!r}")

    return max(range(len(row["options"])), key=score)


def measure(bundle: Path, threads: int = 2, limit: int | None = None) -> list[dict[str, Any]]:
    from kardlite.answers import option_continuations
    from kardlite.data.records import LETTERS
    from kardlite.demo import demo_questions
    from kardlite.runtime import load
    from kardlite.runtime.pipeline import _PassageView

    rows = []
    with load(bundle, threads=threads) as pipe:
        if not pipe.answer_only:
            raise SystemExit(f"{bundle}: its student writes a rationale; this bench reads answer-only students")
        for split in ("dev", "test"):
            for q in demo_questions(split)[:limit]:
                ans = pipe.ask(q.question, list(q.options), temperature=0.0)
                conts = option_continuations([list(q.options)], pipe.settings.answer_format)[0]
                scores = {}
                for name, shown in (("with", ans["passages"]), ("without", [])):
                    ids = pipe._tokenize(pipe._build(q, [_PassageView(p) for p in shown]).segments)
                    pipe.student.begin(ids)
                    scores[name] = [[c.total, c.n_tokens] for c in pipe.student.continuation_scores(ids, conts)]
                rows.append({"split": split, "id": q.id, "gold": LETTERS[q.label], "bundle": ans["letter"],
                             "options": list(q.options), "passages": [p["text"] for p in ans["passages"]], **scores})
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from kardlite.data.records import LETTERS

    out: dict[str, Any] = {}
    for way in WAYS:
        out[way] = {}
        for split in ("dev", "test"):
            part = [r for r in rows if r["split"] == split]
            out[way][split] = sum(LETTERS[pick(way, r)] == r["gold"] for r in part) / len(part)
    # the bench's "mean" must be the bundle's own answer, or these scores are not the bundle's
    agree = sum(LETTERS[pick("mean", r)] == r["bundle"] for r in rows) / len(rows)
    chosen = max((w for w in WAYS if w != "word-overlap"), key=lambda w: out[w]["dev"])
    return {"accuracy": out, "mean_is_the_bundle_s_answer": agree, "chosen_on_dev": chosen,
            "n": {s: sum(r["split"] == s for r in rows) for s in ("dev", "test")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, help="only the first N questions of each split")
    ap.add_argument("--out", type=Path, help="write the summary and per-question scores here (JSON)")
    args = ap.parse_args()
    started = time.time()
    rows = measure(args.bundle, args.threads, args.limit)
    result = {"bundle": str(args.bundle), **summarise(rows), "seconds": round(time.time() - started, 1),
              "questions": [{k: r[k] for k in ("split", "id", "gold", "bundle", "with", "without")} for r in rows]}
    print(f"{'way':14s} {'dev':>6s} {'test':>6s}")
    for way, acc in result["accuracy"].items():
        print(f"{way:14s} {acc['dev']:6.1%} {acc['test']:6.1%}")
    print(f"chosen on dev (student ways): {result['chosen_on_dev']}; 'mean' agrees with the bundle's answers on "
          f"{result['mean_is_the_bundle_s_answer']:.0%}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"written {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
