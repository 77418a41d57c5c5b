"""What the demo web app shows, as plain functions of the runtime's results (so the app stays a layout file).

Every function takes the runtime's TypedDicts (``Answer``, ``PassageShown``, ``Candidate``, ``Hit``) and returns
text or HTML; nothing here imports Gradio. All text from the knowledge base or the model is HTML-escaped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

MAX_QUESTION_CHARS = 2000  # the app refuses longer input: far beyond any question the student was trained on
MAX_OPTIONS_CHARS = 2000

_LABEL = re.compile(r"^(?:[A-J][.)]|\([A-J]\))\s+")  # a typed "A. " / "B) " / "(C) " option label
_SHOWN = "background:#fff4c2"  # rows / cards of the passages that went into the student's prompt
_TABLE = "border-collapse:collapse;width:100%;font-size:0.9em"
_CELL = "border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top"


def parse_options(text: str | None) -> list[str]:
    """Answer options from a text box: one per line, blank lines dropped, a leading ``A.``/``(B)`` removed."""
    options = []
    for line in (text or "").splitlines():
        line = _LABEL.sub("", line.strip(), count=1).strip()
        if line:
            options.append(line)
    return options


def check_input(question: str | None, options_text: str | None) -> str | None:
    """Why the input is refused (a message for the user), or None when it may be asked."""
    if not question or not question.strip():
        return "Type a question (and, optionally, answer options one per line)."
    if len(question) > MAX_QUESTION_CHARS:
        return (f"The question is {len(question):,} characters; the demo accepts at most {MAX_QUESTION_CHARS:,}. "
                "Shorten it to the question itself.")
    if options_text and len(options_text) > MAX_OPTIONS_CHARS:
        return f"The options are {len(options_text):,} characters; at most {MAX_OPTIONS_CHARS:,} are accepted."
    if len(parse_options(options_text)) == 1:
        return "One option is not a choice: give two or more options (one per line), or none for a free answer."
    return None


def examples(items: Sequence[Any]) -> list[list[str]]:
    """``[question, options one per line]`` rows for the app's example list, from QAItems."""
    return [[item.question, "\n".join(item.options)] for item in items]


def bundle_line(manifest: Mapping[str, Any]) -> str:
    """One line (markdown) saying what answers: student, quantisation, retrieval, and the demo build mode."""
    student = manifest.get("student", {})
    retrieval = manifest.get("retrieval", {})
    demo = manifest.get("demo") or {}
    rr = retrieval.get("reranker")
    kind = f"{rr['kind']} " if isinstance(rr, Mapping) and rr.get("kind") else ""
    reranker = f"a trained {kind}reranker" if rr else "no reranker"
    mode = f" Demo bundle built in **{demo['mode']}** mode ({demo.get('student', '')})." if demo.get("mode") else ""
    params = student.get("parameters")
    size = f"{params / 1e6:.0f}M parameters, " if isinstance(params, int | float) else ""
    return (f"Student: {size}{student.get('quant', '?')} GGUF; first stage "
            f"**{retrieval.get('first_stage', '?')}**, {reranker}, {retrieval.get('n_docs', '?')} passages shown "
            f"to the student.{mode}")


def about_markdown(manifest: Mapping[str, Any], card: Any, settings: Any = None) -> str:
    """The About tab: the bundle line, then its evaluation card (measured numbers, or plainly that there are none;
    intended use; known limits), with stale or differently-measured numbers flagged.

    Args:
        manifest: the bundle's manifest.
        card: its :class:`~kardlite.card.EvaluationCard` (``Pipeline.card``).
        settings: the bundle's :class:`~kardlite.settings.InferenceSettings` (``Pipeline.settings``).
    """
    from kardlite.card import summary

    head = "## Measured numbers" if card.measured else "## No measured numbers"
    out = [f"{bundle_line(manifest)}", "", head, ""]
    for line in summary(card, manifest, settings):
        text = escape(line.text, quote=False)
        if line.label:
            out += ["", f"**{line.label}:** {text}".rstrip()]
        elif line.warning:
            out.append(f"{'  ' * line.level}- **{text}**" if line.level else f"**{text}**")
        else:
            out.append(f"{'  ' * line.level}- {text}")
    return "\n".join(out) + "\n"


def audit_line(path: Any) -> str:
    """Where answers are logged (markdown, after the bundle line), or that they are not."""
    if path is None:
        return " Answers are not logged (start with `--audit-log FILE` to keep a record of each)."
    return f" Every answer is logged to `{escape(str(path))}`."


def answer_markdown(answer: Mapping[str, Any] | None, *, streaming: bool = False) -> str:
    """The answer line: the letter and option text, or why there is none, and the vote count when sampling."""
    if answer is None:
        return "*Reading the passages and writing a rationale ...*" if streaming else ""
    abstention = answer.get("abstention")
    if abstention:
        text = f"### Abstained\n{escape(str(abstention.get('reason', '')))}"
        if abstention.get("withheld"):
            text += f" (withheld: {escape(str(abstention['withheld']))})"
    elif answer.get("options"):
        if answer.get("letter"):
            text = f"### Answer: {answer['letter']}. {escape(str(answer.get('answer') or ''))}"
            if answer.get("forced"):
                text += ("\n*The student wrote no `Answer:` line; this option is the one it finds most likely after "
                         "its rationale (a forced answer).*")
        else:
            text = "### No valid answer\nThe student did not end with `Answer: <letter>` (counted as wrong)."
    else:
        text = f"### Answer\n{escape(str(answer.get('answer') or '(none)'))}"
    if isinstance(answer.get("confidence"), int | float):
        text += f"\n\nConfidence **{answer['confidence']:.2f}**"
    votes = answer.get("votes")
    if votes:
        total = sum(votes.values())
        n = len(answer.get("samples") or [])
        text += "\n\nVotes over " + f"{n} samples: " + ", ".join(
            f"**{k}** {v}" for k, v in sorted(votes.items(), key=lambda kv: -kv[1]))
        if total < n:
            text += f", no letter {n - total}"
    return text


def passages_html(passages: Sequence[Mapping[str, Any]]) -> str:
    """The passages shown to the student, as highlighted cards with their first-stage and rerank scores."""
    if not passages:
        return "<p><i>No passages yet.</i></p>"
    cards = []
    for p in passages:
        rerank = p.get("rerank_score")
        scores = f"first stage {p.get('first_stage_score', 0.0):.4f}" + (
            f" · rerank {rerank:.3f}" if rerank is not None else "")
        cards.append(f'<div class="kard-passage" style="{_SHOWN};border-radius:6px;padding:8px;margin:6px 0">'
                     f"<b>[{p.get('rank')}] {escape(str(p.get('title', '')))}</b> "
                     f"<small>({escape(str(p.get('id')))}; {scores})</small><br>{escape(str(p.get('text', '')))}"
                     "</div>")
    return "".join(cards)


def candidates_html(candidates: Sequence[Mapping[str, Any]], shown: Sequence[Mapping[str, Any]],
                    first_stage: str = "first stage") -> str:
    """The first-stage pool the reranker chose from; the rows shown to the student are highlighted."""
    if not candidates:
        return ""
    rerank = {p["id"]: p.get("rerank_score") for p in shown}
    head = "".join(f'<th style="{_CELL}">{h}</th>' for h in ("rank", "id", "title", f"{first_stage} score",
                                                              "rerank score"))
    rows = []
    for c in candidates:
        style = _CELL + (";" + _SHOWN if c["id"] in rerank else "")
        r = rerank.get(c["id"])
        cells = (c.get("rank"), escape(str(c["id"])), escape(str(c.get("title", ""))), f"{c.get('score', 0.0):.4f}",
                 "" if r is None else f"{r:.3f}")
        rows.append("<tr>" + "".join(f'<td style="{style}">{v}</td>' for v in cells) + "</tr>")
    return f'<table style="{_TABLE}"><tr>{head}</tr>{"".join(rows)}</table>'


def timings_markdown(answer: Mapping[str, Any]) -> str:
    """Per-stage seconds and token numbers of one answer, as a small markdown table."""
    t, tok = answer.get("timings") or {}, answer.get("tokens") or {}
    stages = [("first-stage retrieval", "retrieve"), ("rerank", "rerank"), ("prompt", "prompt"),
              ("prefill (prompt evaluation)", "prefill"), ("generation (all samples)", "generate"), ("total", "total")]
    lines = ["| stage | ms |", "|---|---:|"] + [f"| {name} | {1000 * float(t.get(key, 0.0)):,.0f} |"
                                               for name, key in stages]
    if tok:
        lines.append(f"\nPrompt {tok.get('prompt')} tokens (budget {tok.get('budget')}), generated "
                     f"{tok.get('generated')} tokens at {tok.get('decode_per_s', 0):.1f} tokens/s"
                     + ("; passages trimmed to fit" if tok.get("passages_trimmed") else "") + ".")
    return "\n".join(lines)


def hits_html(hits: Sequence[Mapping[str, Any]]) -> str:
    """Knowledge-base search results (the app's search tab): rank, id, title, text, score."""
    if not hits:
        return "<p><i>No results.</i></p>"
    head = "".join(f'<th style="{_CELL}">{h}</th>' for h in ("rank", "id", "title", "text", "score"))
    rows = ["<tr>" + "".join(f'<td style="{_CELL}">{v}</td>' for v in (
        h.get("rank"), escape(str(h["id"])), escape(str(h.get("title", ""))), escape(str(h.get("text", ""))),
        f"{h.get('score', 0.0):.4f}")) + "</tr>" for h in hits]
    return f'<table style="{_TABLE}"><tr>{head}</tr>{"".join(rows)}</table>'
