"""What the demo app shows: input checks and the HTML/markdown built from runtime results (pure functions).

Markdown is checked as rendered (markdown-it-py, CommonMark plus GFM tables and strikethrough: the syntax the
page's renderer knows), HTML as parsed: text from passages, options and the model must come out as the same text,
inside only the tags the view writes.
"""

from __future__ import annotations

from html.parser import HTMLParser

from hypothesis import given
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from kardlite.demo import demo_questions, view
from tests.fuzz import attempt, fuzz_settings, text

_MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])
_VOID = {"br"}


class _Parsed(HTMLParser):
    """Tags (start and end, in order) and text of an HTML fragment; character references decoded."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text = ""
        self.marks: list[str] = []
        self._in_mark = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag == "mark":
            self._in_mark, self.marks = True, [*self.marks, ""]

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        self.tags.append("/" + tag)
        self._in_mark = self._in_mark and tag != "mark"

    def handle_data(self, data: str) -> None:
        self.text += data
        if self._in_mark:
            self.marks[-1] += data


def _balanced(tags: list[str]) -> bool:
    stack: list[str] = []
    for tag in tags:
        if tag.startswith("/"):
            if not stack or stack.pop() != tag[1:]:
                return False
        elif tag not in _VOID:
            stack.append(tag)
    return not stack


def _rendered(markdown: str) -> _Parsed:
    return _Parsed(_MD.render(markdown).rstrip("\n"))  # markdown-it ends each block with a line break


def test_options_are_one_per_line_with_typed_labels_removed() -> None:
    assert view.parse_options("A. one\n(B) two\n\n  C) three \nApple pie\n") == ["one", "two", "three", "Apple pie"]
    assert view.parse_options(None) == []


def test_over_long_or_malformed_input_is_refused_with_a_reason() -> None:
    assert view.check_input("x" * 2000, None) is None
    assert "at most 2,000" in view.check_input("x" * 2001, None)
    assert "at most 2,000" in view.check_input("Why?", "y\n" * 1001)
    assert "Type a question" in view.check_input("   ", "a\nb")
    assert "One option" in view.check_input("Why?", "only one")
    assert view.check_input("Why?", "a\nb") is None


def test_examples_are_the_demo_test_questions_with_their_options() -> None:
    items = demo_questions("test")
    rows = view.examples(items)
    assert len(rows) == len(items)
    assert rows[0] == [items[0].question, "\n".join(items[0].options)]
    assert view.parse_options(rows[0][1]) == list(items[0].options)


def _answer(**kw):
    base = {"options": ["red", "blue"], "letter": "B", "answer": "blue", "votes": None, "samples": None,
            "timings": {"retrieve": 0.01, "rerank": 0.02, "prompt": 0.001, "prefill": 0.5, "generate": 1.5,
                        "total": 2.1},
            "tokens": {"prompt": 300, "budget": 384, "generated": 40, "decode_per_s": 80.0,
                       "passages_trimmed": True}}
    return {**base, **kw}


def test_answer_line_letter_invalid_and_votes() -> None:
    assert view.answer_markdown(_answer()).startswith("### Answer: B. blue")
    assert "No valid answer" in view.answer_markdown(_answer(letter=None, answer=None))
    voted = view.answer_markdown(_answer(votes={"A": 1, "B": 3}, samples=["", "", "", "", ""]))
    assert "Votes over 5 samples: **B** 3, **A** 1, no letter 1" in voted
    assert view.answer_markdown(None, streaming=True)
    assert "forced answer" in view.answer_markdown(_answer(forced=True))
    assert "forced" not in view.answer_markdown(_answer(forced=False))


def test_model_and_kb_text_is_escaped_and_shown_passages_highlighted() -> None:
    shown = [{"id": "p<1>", "title": "<script>x</script>", "text": "a & b", "rank": 1, "first_stage_score": 0.5,
              "rerank_score": 2.25}]
    html = view.passages_html(shown)
    assert "<script>" not in html and "&lt;script&gt;" in html and "a &amp; b" in html
    assert "rerank 2.250" in html and "kard-passage" in html
    table = view.candidates_html([{"id": "p<1>", "title": "t", "rank": 1, "score": 0.5},
                                  {"id": "p2", "title": "u", "rank": 2, "score": 0.4}], shown, "hybrid")
    assert table.count("fff4c2") == 5  # the five cells of the one shown row
    assert "hybrid score" in table
    assert "| total | 2,100 |" in view.timings_markdown(_answer())
    assert "trimmed" in view.timings_markdown(_answer())


def test_confidence_and_abstention_are_shown() -> None:
    assert "Confidence **0.73**" in view.answer_markdown(_answer(confidence=0.734))
    withheld = view.answer_markdown(_answer(letter=None, answer=None, confidence=0.2, abstention={
        "reason": "confidence 0.20 is below the threshold 0.50", "threshold": 0.5, "withheld": "B"}))
    assert withheld.startswith("### Abstained\n")
    assert _rendered(withheld).text.startswith("Abstained\nconfidence 0.20 is below the threshold 0.50 (withheld: B)")
    assert "No valid answer" not in withheld


def test_audit_line_says_where_answers_are_logged() -> None:
    assert "not logged" in view.audit_line(None) and "--audit-log" in view.audit_line(None)
    assert view.audit_line("/var/log/<kard>.jsonl") == " Every answer is logged to `/var/log/&lt;kard&gt;.jsonl`."


# --- what the page says about each answer ---------------------------------------------------------------------
PASSAGES = [{"id": "cr-p091", "title": "Furosemide", "rank": 1, "first_stage_score": 0.5, "rerank_score": None,
             "text": "Furosemide is a loop diuretic. It blocks the Na-K-2Cl cotransporter (NKCC2) in the thick "
                     "ascending limb!  Thiazides act on the distal convoluted tubule.\nA dose of 2.5 mg..."},
            {"id": "cr-p040", "title": "ACE inhibitors", "rank": 2, "first_stage_score": 0.4, "rerank_score": None,
             "text": "ACE inhibitors raise bradykinin, which causes a dry cough."}]
OPTIONS = ["Sodium-chloride cotransporter in the distal convoluted tubule",
           "Na-K-2Cl cotransporter in the thick ascending limb", "Epithelial sodium channel", "It is not"]


def test_sentences_keep_every_character() -> None:
    text = PASSAGES[0]["text"]
    parts = view.sentences(text)
    assert "".join(parts) == text
    assert parts == ["Furosemide is a loop diuretic. ",
                     "It blocks the Na-K-2Cl cotransporter (NKCC2) in the thick ascending limb!  ",
                     "Thiazides act on the distal convoluted tubule.\n", "A dose of 2.5 mg..."]  # "2.5" is no end
    assert view.sentences("") == [] and view.sentences("a?!\n\nb") == ["a?!\n\n", "b"]
    assert view.sentences("no end") == ["no end"] and view.sentences("\n\n") == ["\n\n"]


def test_passage_sentences_the_rationale_repeats_are_marked() -> None:
    rationale = "Furosemide blocks the NKCC2 cotransporter in the thick ascending limb of the loop. Answer: B"
    marked = view.repeated_sentences(PASSAGES[0]["text"], rationale)
    assert [hit for _, hit in marked] == [True, True, False, False]
    assert view.repeated_sentences(PASSAGES[0]["text"], "") == [(s, False) for s in view.sentences(
        PASSAGES[0]["text"])]
    html = view.passages_html(PASSAGES, rationale)
    parsed = _Parsed(html)
    assert parsed.marks == ["Furosemide is a loop diuretic.",
                            "It blocks the Na-K-2Cl cotransporter (NKCC2) in the thick ascending limb!"]
    assert "the rationale repeats 2 of its 4 sentences" in parsed.text
    assert "the rationale repeats 0 of its 1 sentence" in parsed.text  # the other card: nothing repeated
    assert html.count('class="kard-passage"') == 2 and _balanced(parsed.tags)
    assert "<mark" not in view.passages_html(PASSAGES)  # while streaming: no rationale yet, nothing marked


def _chosen(index: int, **kw):
    return _answer(**{"options": OPTIONS, "index": index, "letter": "ABCD"[index], "answer": OPTIONS[index],
                      "passages": PASSAGES, **kw})


def test_a_notice_when_the_passages_do_not_support_the_chosen_option_or_support_another_better() -> None:
    assert view.support_notice(_chosen(1)) == ""  # all its content words are in the passages: nothing to say
    unsupported = view.support_notice(_chosen(2))  # "Epithelial sodium channel": no word of it in the passages
    assert "Not supported by the passages shown:** none of the content words of C" in unsupported
    assert "Option B is better supported" in unsupported and "100% of its content words" in unsupported
    partly = view.support_notice(_chosen(0))  # the thiazide target: "distal convoluted tubule" is in passage 1
    assert "Not supported" not in partly and "Option B is better supported" in partly
    assert view.support_notice(_chosen(3)) == ""  # only stop words: nothing to look for
    tied = view.support_notice(_answer(options=["loop diuretic", "thick ascending limb", "Epithelial sodium channel"],
                                       index=2, letter="C", passages=PASSAGES))
    assert "Options A and B are better supported by the passages shown:** 100% of their content words" in tied
    # no chosen option, no passages, a withheld answer, a free-text answer: no notice
    for answer in ({**_chosen(2), "index": None, "letter": None}, _chosen(2, passages=[]), _answer(options=[], index=0),
                   _chosen(2, abstention={"reason": "r", "threshold": 0.5, "withheld": "C"})):
        assert view.support_notice(answer) == ""
    shown = _rendered(view.answer_markdown(_chosen(2))).text
    assert shown.startswith("Answer: C. Epithelial sodium channel\n") and "better supported" in shown


def test_the_vote_share_of_the_answer_and_ties() -> None:
    voted = view.answer_markdown(_answer(votes={"A": 1, "B": 3}, samples=["", "", "", "", ""]))
    assert "B has 3 of 5 votes (60%)." in _rendered(voted).text and "tie" not in voted
    tie = _rendered(view.answer_markdown(_answer(votes={"A": 2, "B": 2}, samples=["", "", "", ""]))).text
    assert "B has 2 of 4 votes (50%): a tie, broken by the sample that reached its letter first." in tie
    withheld = view.votes_markdown(_answer(letter=None, votes={"A": 1, "B": 2}, samples=["", "", ""],
                                           abstention={"reason": "r", "threshold": 0.9, "withheld": "B"}))
    assert "B has 2 of 3 votes (67%)" in _rendered(withheld).text
    assert view.votes_markdown(_answer()) == ""  # one sample: no votes line


HOSTILE = ["![t](http://evil.example/t.png)", "[click](javascript:alert(1))", "<img src=x onerror=alert(1)>",
           "<script>alert(1)</script>", "# Heading", "| a | b |\n|---|---|", "`code`", "**bold** _it_ ~~s~~",
           "<http://evil.example>", "&lt;b&gt; &amp;", "1. item\n- item\n> quote", "$$x^2$$", "\\*not*\\",
           "line\n\n    indented code", "www.evil.example", "a\u2028b\x85c"]


def test_markdown_text_is_shown_as_written_and_never_as_markup() -> None:
    for s in HOSTILE:
        parsed = _rendered(view.md_text(s))
        assert parsed.tags in ([], ["p", "/p"]), (s, parsed.tags)
        assert parsed.text == " ".join(s.split()), s
        lines = _rendered(view.md_lines(s))
        assert set(lines.tags) <= {"p", "/p", "br"}, (s, lines.tags)
    answer = _answer(options=HOSTILE[:4], index=0, letter="A", answer=HOSTILE[0], passages=[
        {"id": "<i>", "title": "[x](y)", "text": HOSTILE[2], "rank": "<b>", "first_stage_score": 0.1,
         "rerank_score": None}])
    rendered = _rendered(view.answer_markdown(answer))
    assert {t.strip("/") for t in rendered.tags} <= {"h3", "p", "strong", "em", "code"}
    assert "Answer: A. " + HOSTILE[0] in rendered.text


@fuzz_settings(100)
@given(text, text)
def test_fuzz_markdown_text(s: str, t: str) -> None:
    for md in (view.md_text(s), view.md_lines(s)):
        parsed = _rendered(md)
        assert set(parsed.tags) <= {"p", "/p", "br"}, (s, parsed.tags)
    expected = " ".join(s.split()).replace("\x00", "\ufffd")  # CommonMark replaces NUL
    assert _rendered(view.md_text(s)).text == expected
    reason = _rendered(view.answer_markdown(_answer(letter=None, abstention={"reason": s, "withheld": t,
                                                                             "threshold": 0.5})))
    assert {tag.strip("/") for tag in reason.tags} <= {"h3", "p"}


_WORDS = st.sampled_from(["Furosemide", "loop", "diuretic", "blocks", "NKCC2", "limb", "thick", "ascending",
                          ". ", "! ", "? ", "\n", " ", "...", "<b>", "&amp;", "</div>", "<mark>"])
_PASSAGE = st.lists(st.one_of(_WORDS, text), max_size=12).map(" ".join)


def test_fuzz_passages_never_break_the_markup() -> None:
    marked_cases = []

    @fuzz_settings(100)
    @given(_PASSAGE, _PASSAGE, text, text)
    def case(passage: str, rationale: str, title: str, pid: str) -> None:
        p = {"id": pid, "title": title, "text": passage, "rank": 1, "first_stage_score": 0.5, "rerank_score": None}
        html, err = attempt(view.passages_html, [p], rationale)
        assert err is None
        parsed = _Parsed(html)
        assert {t.strip("/") for t in parsed.tags} <= {"div", "b", "small", "br", "mark"} and _balanced(parsed.tags)
        marked = view.repeated_sentences(passage, rationale)
        n = len(marked)
        note = f"the rationale repeats {sum(h for _, h in marked)} of its {n} sentence{'s' if n != 1 else ''}"
        # every character of the title, id and passage comes back as text, in place
        assert parsed.text == f"[1] {title} ({pid}; first stage 0.5000){passage}{note}"
        assert parsed.marks == [s.rstrip() for s, hit in marked if hit]
        marked_cases.append(bool(parsed.marks))

    case()
    assert sum(marked_cases) >= 5, "too few cases marked a sentence to test the marks"


@fuzz_settings(50)
@given(st.lists(_PASSAGE, min_size=2, max_size=4), _PASSAGE, st.integers(0, 3))
def test_fuzz_support_notice(options: list[str], passage: str, index: int) -> None:
    index = min(index, len(options) - 1)
    answer = _answer(options=options, index=index, letter="ABCD"[index], answer=options[index], passages=[
        {"id": "p", "title": "t", "text": passage, "rank": 1, "first_stage_score": 0.5, "rerank_score": None}])
    md, err = attempt(view.answer_markdown, answer)
    assert err is None
    rendered = _rendered(md)
    assert {t.strip("/") for t in rendered.tags} <= {"h3", "p", "strong", "em"}
    assert rendered.text.startswith(f"Answer: {'ABCD'[index]}. {' '.join(options[index].split())}".rstrip()
                                    .replace("\x00", "\ufffd"))


# --- the About panel ------------------------------------------------------------------------------------------
MANIFEST = {"student": {"quant": "Q4_K_M"}, "retrieval": {"first_stage": "hybrid", "n_docs": 2, "reranker": None},
            "demo": {"mode": "fast", "student": "untrained"}}


def _evaluation(**kw):
    m = {"questions": 27, "n": 27, "correct": 9, "accuracy": 0.3333, "accuracy_ci95": [0.1481, 0.519],
         "gold_shown": 19, "gold_shown_rate": 0.7037, "invalid": 3, "invalid_rate": 0.1111, "forced": 7,
         "forced_rate": 0.2593, "p50_seconds": 4.21}
    base = {"kind": "kardlite.demo_eval", "version": 1, "created": "2026-01-01T00:00:00.000+00:00",
            "manifest_sha256": "abc", "mode": "fast", "student": "SmolLM2 Q4_K_M", "ci_method": "95% bootstrap",
            "settings": {"limit": None, "samples": 1}, "results": {"test": m}}
    return {**base, **kw}


def _card():
    from kardlite.card import EvaluationCard

    return EvaluationCard.unmeasured("demo")


def test_about_panel_says_when_there_are_no_numbers_yet() -> None:
    about = _rendered(view.about_markdown(MANIFEST, _card(), eval_file="exports/demo-eval.json")).text
    assert "Not measured yet — run kardlite demo eval (it writes exports/demo-eval.json)" in about
    assert "%" not in about.split("Evaluation card")[0]  # no number is made up
    broken = _rendered(view.about_markdown(MANIFEST, _card(), problem="x.json: not a kardlite demo evaluation")).text
    assert "could not be read: x.json: not a kardlite demo evaluation" in broken


def test_about_panel_shows_the_demo_eval_numbers() -> None:
    md = view.about_markdown(MANIFEST, _card(), evaluation=_evaluation(), manifest_sha256="abc")
    assert "| test | 27 of 27 | 33.3% (14.8%–51.9%) | 70.4% | 11.1% | 25.9% | 4.2 s |" in md
    assert "<table>" in _MD.render(md) and "another build" not in md and "--limit" not in md
    limited = view.about_markdown(MANIFEST, _card(), evaluation=_evaluation(settings={"limit": 3, "samples": 1}),
                                manifest_sha256="x")
    assert "first 3 questions" in limited and "Measured on another build of this bundle" in limited
    odd = view.about_markdown(MANIFEST, _card(), evaluation=_evaluation(results={"test": {"accuracy": "lots",
                                                                                           "n": True}}))
    assert "| test | ? of ? | — |" in odd  # a malformed file shows dashes, not a crash or its text as markup


def test_about_tab_shows_the_card_or_says_plainly_that_nothing_was_measured() -> None:
    from kardlite.card import EvaluationCard, Task, measure
    from kardlite.settings import InferenceSettings

    manifest = {"student": {"quant": "Q4_K_M", "parameters": 135e6}, "retrieval": {"first_stage": "bm25"},
                "files": {"student.gguf": {"sha256": "1" * 64, "bytes": 9}}}
    blank = view.about_markdown(manifest, EvaluationCard.unmeasured("b"))
    blank_html = _MD.render(blank)
    assert "<h3>Evaluation card: no measured numbers</h3>" in blank_html
    assert "<strong>no measured numbers: nothing has been evaluated" in blank_html and "% (95% CI" not in blank
    assert "<strong>Known limits:</strong>" in blank_html and "<strong>Intended use:</strong>" in blank_html
    assert "not a medical device" in _rendered(blank).text
    settings = InferenceSettings().resolve(mode="kard", has_dense=False)
    e = measure([True, False, True, True], split="test", task=Task("<b>toy</b> [x](y)"), settings=settings,
                manifest=manifest, measured_by="test", confidence=[0.9, 0.1, 0.8, 0.7], confidence_raw=[0.6] * 4)
    card = EvaluationCard.unmeasured("b").with_evaluations([e])
    shown = view.about_markdown(manifest, card, settings)
    parsed = _rendered(shown)
    assert "<h3>Evaluation card: measured numbers</h3>" in _MD.render(shown)
    assert "\ntest: accuracy 75.0% (95% CI " in parsed.text and "li" in parsed.tags
    # text from the card is shown as written, never as markup
    assert "task <b>toy</b> [x](y): no file recorded" in parsed.text and not {"b", "a"} & set(parsed.tags)
    assert "stale" not in shown and "other settings" not in shown
    # after a KB update and with other settings, the numbers are flagged, in bold
    changed = {**manifest, "files": {**manifest["files"], "kb/manifest.json": {"sha256": "2" * 64, "bytes": 1}}}
    flagged = _MD.render(view.about_markdown(changed, card, settings.updated(n_docs=2)))
    assert "<li><strong>stale: kb changed since it was measured</strong></li>" in flagged
    assert "<strong>measured with other settings than the bundle's: n_docs 5 (bundle: 2)</strong>" in flagged
