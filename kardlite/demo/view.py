"""What the demo web app shows, as plain functions of the runtime's results (so the app stays a layout file).

Every function takes the runtime's TypedDicts (``Answer``, ``PassageShown``, ``Candidate``, ``Hit``) and returns
text or HTML; nothing here imports Gradio. Text from the knowledge base, the model, a bundle or a file is data,
never markup: in HTML it is escaped (:func:`html.escape`), in markdown every ASCII punctuation character is
backslash-escaped and ``& < >`` become entities (:func:`md_text`), so no link, image, emphasis, heading, table or
tag can come from it.

What the page says about an answer is measured, not guessed: the passage sentences the rationale repeats and the
options the passages support are the word-overlap rules of the runtime's support signals
(:mod:`kardlite.runtime.confidence`), and the vote share is the runtime's count.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from kardlite.data.records import LETTERS
from kardlite.runtime.confidence import carried, content_words, options_support

# Said where a rationale would be (page and terminal) when the student is answer-only (FT, KA-FT) and has options.
ANSWER_ONLY_NOTE = ("This student writes no rationale: it was trained to answer from the passages alone, and each "
                    "option's text is scored after them.")

MAX_QUESTION_CHARS = 2000  # the app refuses longer input: far beyond any question the student was trained on
MAX_OPTIONS_CHARS = 2000

_LABEL = re.compile(r"^(?:[A-J][.)]|\([A-J]\))\s+")  # a typed "A. " / "B) " / "(C) " option label
_SHOWN = "background:#fff4c2"  # rows / cards of the passages that went into the student's prompt
_TABLE = "border-collapse:collapse;width:100%;font-size:0.9em"
_CELL = "border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top"
_REPEATED = "background:#ffcf5c;padding:0 1px;border-radius:2px"  # a passage sentence the rationale repeats
# The chosen option counts as supported by the passages shown when at least this share of its content words occur
# in them (kardlite.runtime.confidence.options_support); below it the page says so.
SUPPORTED = 0.5

_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_MD_ESCAPED = frozenset(string.punctuation) - set(_MD_ENTITIES)
_SENTENCE_ENDS = frozenset(".!?")
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


def md_text(text: Any) -> str:
    """``text`` as inline markdown that shows exactly its characters (runs of whitespace, line breaks included,
    become one space): ASCII punctuation backslash-escaped (CommonMark escapes all of it), ``& < >`` as entities.
    Nothing in it can start a link, image, heading, list, table, emphasis, code span, autolink or HTML tag."""
    return " ".join("".join(_MD_ENTITIES.get(ch) or ("\\" + ch if ch in _MD_ESCAPED else ch) for ch in word)
                    for word in str(text).split())


def md_lines(text: Any) -> str:
    """Like :func:`md_text`, keeping the line breaks (as markdown hard breaks); blank lines are dropped."""
    return "  \n".join(md_text(line) for line in str(text).splitlines() if line.strip())


def sentences(text: str) -> list[str]:
    """``text`` cut into sentences, every character kept (``"".join(sentences(t)) == t``): a sentence ends at a
    line break, or after a run of ``. ! ?`` followed by white space or the end; the white space after it stays
    with it. One pass over the text (no backtracking)."""
    pieces: list[str] = []
    start, i, n = 0, 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _LINE_BREAKS or ch in _SENTENCE_ENDS:
            j = i + 1
            if ch in _SENTENCE_ENDS:
                while j < n and text[j] in _SENTENCE_ENDS:  # "?!", "..."
                    j += 1
            if ch in _LINE_BREAKS or j == n or text[j].isspace():
                while j < n and text[j].isspace():
                    j += 1
                pieces.append(text[start:j])
                start = j
            i = j
        else:
            i += 1
    if start < n:
        pieces.append(text[start:])
    return pieces


def repeated_sentences(text: str, rationale: str) -> list[tuple[str, bool]]:
    """The sentences of a passage, each with whether the rationale repeats it: at least 60 % of its content words
    (two or more) occur in the rationale (:func:`kardlite.runtime.confidence.carried`, the rule of the
    ``claim_support`` signal, read from the passage's side)."""
    seen = content_words(rationale) if rationale else set()
    return [(s, bool(seen) and carried(content_words(s), seen)) for s in sentences(text)]


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
    mode = (f" Demo bundle built in **{md_text(demo['mode'])}** mode ({md_text(demo.get('student', ''))})."
            if demo.get("mode") else "")
    params = student.get("parameters")
    size = f"{params / 1e6:.0f}M parameters, " if isinstance(params, int | float) else ""
    return (f"Student: {size}{md_text(student.get('quant', '?'))} GGUF; first stage "
            f"**{md_text(retrieval.get('first_stage', '?'))}**, {md_text(reranker)}, "
            f"{md_text(retrieval.get('n_docs', '?'))} passages shown to the student.{mode}")


def audit_line(path: Any) -> str:
    """Where answers are logged (markdown, after the bundle line), or that they are not."""
    if path is None:
        return " Answers are not logged (start with `--audit-log FILE` to keep a record of each)."
    return f" Every answer is logged to `{escape(str(path))}`."


def answer_markdown(answer: Mapping[str, Any] | None, *, streaming: bool = False) -> str:
    """The answer line: the letter and option text, or why there is none; a notice when the passages shown do not
    support the chosen option or support another one better; the confidence; the votes and the answer's share of
    them when several samples were drawn."""
    if answer is None:
        return "*Reading the passages and writing a rationale ...*" if streaming else ""
    abstention = answer.get("abstention")
    if abstention:
        text = f"### Abstained\n{md_text(abstention.get('reason', ''))}"
        if abstention.get("withheld"):
            text += f" (withheld: {md_text(abstention['withheld'])})"
    elif answer.get("options"):
        if answer.get("letter"):
            text = f"### Answer: {md_text(answer['letter'])}. {md_text(answer.get('answer') or '')}"
            if answer.get("forced"):
                text += ("\n*The student wrote no `Answer:` line; this option is the one it finds most likely after "
                         "its rationale (a forced answer).*")
        else:
            text = "### No valid answer\nThe student did not end with `Answer: <letter>` (counted as wrong)."
    else:
        text = f"### Answer\n{md_lines(answer.get('answer') or '(none)')}"
    notice = support_notice(answer)
    if notice:
        text += f"\n\n{notice}"
    if isinstance(answer.get("confidence"), int | float):
        text += f"\n\nConfidence **{answer['confidence']:.2f}**"
    return text + votes_markdown(answer)


def support_notice(answer: Mapping[str, Any]) -> str:
    """A warning (markdown) when the chosen option is not supported by the passages shown (under
    :data:`SUPPORTED` of its content words occur in them) or another option is better supported; "" otherwise,
    and for an answer without a chosen option (none valid, withheld, free text) or without passages.

    Support is word overlap (:func:`kardlite.runtime.confidence.options_support`, the ``option_support`` signal):
    a hint that the answer does not follow from what the student read, not a proof either way.
    """
    options, index, passages = answer.get("options") or [], answer.get("index"), answer.get("passages") or []
    if not options or not isinstance(index, int) or not 0 <= index < len(options) or not passages \
            or answer.get("abstention"):
        return ""
    shares = options_support([str(o) for o in options], [str(p.get("text", "")) for p in passages])
    chosen = shares[index]
    if chosen is None:  # only stop words ("none of these"): nothing to look for
        return ""
    letter = LETTERS[index]
    notes = []
    if chosen < SUPPORTED:
        where = "none of" if chosen == 0 else f"only {chosen:.0%} of"
        notes.append(f"**Not supported by the passages shown:** {where} the content words of {letter} occur in them.")
    better = [i for i, s in enumerate(shares) if i != index and s is not None and s > chosen and s >= SUPPORTED]
    if better:
        top = max(shares[i] or 0.0 for i in better)
        best = [LETTERS[i] for i in better if shares[i] == top]  # all of them when several tie
        who = f"Option {best[0]} is" if len(best) == 1 else f"Options {', '.join(best[:-1])} and {best[-1]} are"
        notes.append(f"**{who} better supported by the passages shown:** {top:.0%} of "
                     f"{'its' if len(best) == 1 else 'their'} content words occur in them, against {chosen:.0%} "
                     f"for {letter}.")
    if not notes:
        return ""
    return "⚠ " + " ".join(notes) + " *(Word overlap with the passages: a hint, not a proof.)*"


def votes_markdown(answer: Mapping[str, Any]) -> str:
    """The vote count over the samples and the answer's share of it (markdown, with its leading blank line); ""
    for one sample."""
    votes = answer.get("votes")
    if not votes:
        return ""
    total = sum(votes.values())
    n = len(answer.get("samples") or []) or total
    text = "\n\nVotes over " + f"{n} samples: " + ", ".join(
        f"**{md_text(k)}** {v}" for k, v in sorted(votes.items(), key=lambda kv: -kv[1]))
    if total < n:
        text += f", no letter {n - total}"
    abstention = answer.get("abstention") or {}
    chosen = answer.get("letter") or abstention.get("withheld")
    if chosen in votes and n:
        share = votes[chosen]
        text += f". {md_text(chosen)} has {share} of {n} votes ({share / n:.0%})"
        if sum(v == share for v in votes.values()) > 1:
            text += ": a tie, broken by the sample that reached its letter first"
        text += "."
    return text


def passages_html(passages: Sequence[Mapping[str, Any]], rationale: str | None = None) -> str:
    """The passages shown to the student, as highlighted cards with their first-stage and rerank scores; given the
    rationale, the sentences it repeats are marked (:func:`repeated_sentences`) and each card says how many."""
    if not passages:
        return "<p><i>No passages yet.</i></p>"
    cards = []
    for p in passages:
        rerank = p.get("rerank_score")
        scores = f"first stage {p.get('first_stage_score', 0.0):.4f}" + (
            f" · rerank {rerank:.3f}" if rerank is not None else "")
        text = str(p.get("text", ""))
        if rationale is None:
            body, note = escape(text), ""
        else:
            marked = repeated_sentences(text, rationale)
            body = "".join(_mark(s) if hit else escape(s) for s, hit in marked)
            n_hit = sum(hit for _, hit in marked)
            note = (f'<br><small class="kard-repeats">the rationale repeats {n_hit} of its {len(marked)} '
                    f"sentence{'s' if len(marked) != 1 else ''}</small>")
        cards.append(f'<div class="kard-passage" style="{_SHOWN};border-radius:6px;padding:8px;margin:6px 0">'
                     f"<b>[{escape(str(p.get('rank')))}] {escape(str(p.get('title', '')))}</b> "
                     f"<small>({escape(str(p.get('id')))}; {scores})</small><br>{body}{note}</div>")
    return "".join(cards)


def _mark(sentence: str) -> str:
    """A repeated sentence, marked; the white space after it stays outside the mark."""
    core = sentence.rstrip()
    return (f'<mark class="kard-repeated" style="{_REPEATED}" title="the rationale repeats this sentence">'
            f"{escape(core)}</mark>{escape(sentence[len(core):])}")


def candidates_html(candidates: Sequence[Mapping[str, Any]], shown: Sequence[Mapping[str, Any]],
                    first_stage: str = "first stage") -> str:
    """The first-stage pool the reranker chose from; the rows shown to the student are highlighted."""
    if not candidates:
        return ""
    rerank = {p["id"]: p.get("rerank_score") for p in shown}
    head = "".join(f'<th style="{_CELL}">{escape(h)}</th>' for h in ("rank", "id", "title", f"{first_stage} score",
                                                                      "rerank score"))
    rows = []
    for c in candidates:
        style = _CELL + (";" + _SHOWN if c["id"] in rerank else "")
        r = rerank.get(c["id"])
        cells = (escape(str(c.get("rank"))), escape(str(c["id"])), escape(str(c.get("title", ""))),
                 f"{c.get('score', 0.0):.4f}", "" if r is None else f"{r:.3f}")
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
        escape(str(h.get("rank"))), escape(str(h["id"])), escape(str(h.get("title", ""))),
        escape(str(h.get("text", ""))), f"{h.get('score', 0.0):.4f}")) + "</tr>" for h in hits]
    return f'<table style="{_TABLE}"><tr>{head}</tr>{"".join(rows)}</table>'


_EVAL_COLUMNS = ("questions", "accuracy (95% CI)", "gold passage shown", "invalid", "forced", "median answer time")


def about_markdown(manifest: Mapping[str, Any], card: Any, settings: Any = None, *,
                   evaluation: Mapping[str, Any] | None = None, manifest_sha256: str | None = None,
                   eval_file: Any = None, problem: str | None = None) -> str:
    """The About tab: what answers; how well it did on the demo questions (``kardlite demo eval``'s summary,
    :func:`kardlite.demo.evaluate.read_demo_eval`, or plainly that it was not measured yet); the bundle's
    evaluation card (the numbers recorded in the bundle, or plainly that there are none; intended use; known
    limits; stale or differently-measured numbers flagged); what the page's marks and notices mean.

    Args:
        manifest: the bundle's manifest.
        card: its :class:`~kardlite.card.EvaluationCard` (``Pipeline.card``).
        settings: the bundle's :class:`~kardlite.settings.InferenceSettings` (``Pipeline.settings``): card numbers
            measured with other settings are flagged.
        evaluation: the demo evaluation summary, or None when there is none ("not measured yet").
        manifest_sha256: the loaded bundle's manifest digest; a summary of another digest is flagged as measured
            on another build.
        eval_file: where ``kardlite demo eval`` writes the summary (shown when there is none).
        problem: why an existing summary could not be read (shown instead of numbers).
    """
    lines = ["### What answers", bundle_line(manifest), "", "### How it does on the demo questions"]
    where = f" (it writes {md_text(eval_file)})" if eval_file is not None else ""
    if problem:
        lines.append(f"The evaluation file could not be read: {md_text(problem)}. Re-run `kardlite demo eval`.")
    elif not evaluation:
        lines.append(f"Not measured yet — run `kardlite demo eval`{where}: it asks the demo's dev and test questions "
                     "through this bundle, as this page does, and this panel then shows the numbers.")
    else:
        lines += _evaluation_lines(evaluation, manifest_sha256)
    lines += ["", *_card_lines(card, manifest, settings)]
    lines += ["", "### What the page shows",
              "- **Passages shown to the student**: the cards are the passages in the student's prompt. Once the "
              "answer is written, the sentences the rationale repeats are marked (at least 60% of a sentence's "
              "content words occur in the rationale) and each card says how many.",
              f"- **A warning under the answer** when under {SUPPORTED:.0%} of the chosen option's content words "
              "occur in the passages shown, or another option's occur more. It is word overlap: a hint that the "
              "answer does not follow from what the student read, not a proof.",
              "- **Votes**: with more than one sample, the count per letter and the answer's share of the votes.",
              "- **Confidence**: the student's probability of its letter (calibrated when the bundle has a "
              "calibrator); a forced answer is one read by likelihood because the student wrote no answer line."]
    return "\n".join(lines)


def _evaluation_lines(evaluation: Mapping[str, Any], manifest_sha256: str | None) -> list[str]:
    results = evaluation.get("results") if isinstance(evaluation.get("results"), Mapping) else {}
    settings = evaluation.get("settings") if isinstance(evaluation.get("settings"), Mapping) else {}
    lines = ["| " + " | ".join(("split", *_EVAL_COLUMNS)) + " |", "|---|" + "---:|" * len(_EVAL_COLUMNS)]
    for name, m in results.items():
        if not isinstance(m, Mapping):
            continue
        ci = m.get("accuracy_ci95")
        ci_text = (f" ({_pct(ci[0])}–{_pct(ci[1])})" if isinstance(ci, Sequence) and len(ci) == 2 else "")
        seconds = m.get("p50_seconds")
        cells = (md_text(name), f"{_count(m.get('n'))} of {_count(m.get('questions'))}",
                 _pct(m.get("accuracy")) + ci_text, _pct(m.get("gold_shown_rate")), _pct(m.get("invalid_rate")),
                 _pct(m.get("forced_rate")),
                 f"{seconds:.1f} s" if isinstance(seconds, int | float) and not isinstance(seconds, bool) else "—")
        lines.append("| " + " | ".join(cells) + " |")
    samples = settings.get("samples")
    created = evaluation.get("created")
    when = f"{created[:16].replace('T', ' ')} UTC" if isinstance(created, str) else "?"  # utc_now()'s ISO form
    lines += ["", f"Measured by `kardlite demo eval` at {md_text(when)} on "
                  f"{md_text(evaluation.get('student', '?'))}"
                  + (f" (demo bundle, {md_text(evaluation['mode'])} mode)" if evaluation.get("mode") else "")
                  + (f", {_count(samples)} sample{'s' if samples != 1 else ''} per question" if samples else "")
                  + ". Accuracy's interval: " + md_text(evaluation.get("ci_method", "95% CI")) + "."]
    limit = settings.get("limit")
    if limit:
        lines.append(f"\n⚠ Only the first {_count(limit)} questions of each split were asked (`--limit`): run "
                     "`kardlite demo eval` without it for all of them.")
    if manifest_sha256 and evaluation.get("manifest_sha256") != manifest_sha256:
        lines.append("\n⚠ **Measured on another build of this bundle** (its manifest has changed since): re-run "
                     "`kardlite demo eval` for numbers of the bundle answering here.")
    return lines


def _card_lines(card: Any, manifest: Mapping[str, Any], settings: Any) -> list[str]:
    """The evaluation card (:func:`kardlite.card.summary`, as ``kardlite info`` prints it) in markdown; its text
    escaped like model text, since task names, file names and notes come from whoever measured the bundle."""
    from kardlite.card import summary

    head = "measured numbers" if card.measured else "no measured numbers"
    out = [f"### Evaluation card: {head}",
           "The numbers recorded in the bundle itself (by `kardlite eval --bundle` on a task file; `kardlite info` "
           "prints the same); the demo questions' numbers above are kept beside the bundle instead.", ""]
    for line in summary(card, manifest, settings):
        text = md_text(line.text)
        if line.label:
            out += ["", f"**{md_text(line.label)}:** {text}".rstrip()]
        elif line.warning:
            out.append(f"{'  ' * line.level}- **{text}**" if line.level else f"**{text}**")
        else:
            out.append(f"{'  ' * line.level}- {text}")
    return out


def _pct(value: Any) -> str:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
    return f"{value:.1%}" if ok else "—"


def _count(value: Any) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "?"
