"""What the demo app shows: input checks and the HTML/markdown built from runtime results (pure functions)."""

from __future__ import annotations

from kardlite.demo import demo_questions, view


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
    assert withheld.startswith("### Abstained\nconfidence 0.20 is below the threshold 0.50 (withheld: B)")
    assert "No valid answer" not in withheld


def test_audit_line_says_where_answers_are_logged() -> None:
    assert "not logged" in view.audit_line(None) and "--audit-log" in view.audit_line(None)
    assert view.audit_line("/var/log/<kard>.jsonl") == " Every answer is logged to `/var/log/&lt;kard&gt;.jsonl`."


def test_about_tab_shows_the_card_or_says_plainly_that_nothing_was_measured() -> None:
    from kardlite.card import EvaluationCard, Task, measure
    from kardlite.settings import InferenceSettings

    manifest = {"student": {"quant": "Q4_K_M", "parameters": 135e6}, "retrieval": {"first_stage": "bm25"},
                "files": {"student.gguf": {"sha256": "1" * 64, "bytes": 9}}}
    blank = view.about_markdown(manifest, EvaluationCard.unmeasured("b"))
    assert "## No measured numbers" in blank and "**no measured numbers:" in blank and "% (95% CI" not in blank
    assert "**Known limits:**" in blank and "not a medical device" in blank and "**Intended use:**" in blank
    settings = InferenceSettings().resolve(mode="kard", has_dense=False)
    e = measure([True, False, True, True], split="test", task=Task("<b>toy</b>"), settings=settings,
                manifest=manifest, measured_by="test", confidence=[0.9, 0.1, 0.8, 0.7], confidence_raw=[0.6] * 4)
    card = EvaluationCard.unmeasured("b").with_evaluations([e])
    shown = view.about_markdown(manifest, card, settings)
    assert "## Measured numbers" in shown and "- test: accuracy 75.0% (95% CI " in shown
    assert "&lt;b&gt;toy&lt;/b&gt;" in shown and "<b>toy" not in shown  # text from the card is escaped
    assert "stale" not in shown and "other settings" not in shown
    # after a KB update and with other settings, the numbers are flagged, in bold
    changed = {**manifest, "files": {**manifest["files"], "kb/manifest.json": {"sha256": "2" * 64, "bytes": 1}}}
    flagged = view.about_markdown(changed, card, settings.updated(n_docs=2))
    assert "  - **stale: kb changed since it was measured**" in flagged
    assert "**measured with other settings than the bundle's: n_docs 5 (bundle: 2)**" in flagged
