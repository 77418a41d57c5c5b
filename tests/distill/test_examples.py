from __future__ import annotations

import json

import pytest

from kardlite.data.records import QAItem
from kardlite.distill.examples import build_examples, read_examples, read_kept_rationales, save_examples
from kardlite.errors import ArtifactError, InputError
from tests.distill.conftest import ITEMS, write_rationales


def test_kard_queries_with_the_rationale_not_the_question(tmp_path, tiny_kb):
    kept = read_kept_rationales(write_rationales(tmp_path / "kept.jsonl"))
    rows = build_examples(ITEMS, kept, "kard", kb=tiny_kb, k=2, kb_path="kb")
    assert len(rows) == sum(len(v) for v in kept.values())  # one example per kept rationale
    by_key = {(r["item_id"], r["rationale_index"]): r for r in rows}
    # q4's question mentions no fact words; its rationale names "metal conducts electricity".
    q4 = by_key[("q4", 0)]
    assert q4["passages"][0]["text"] == "metal conducts electricity and heat"
    for r in rows:
        expected = tiny_kb.search(r["rationale"], 2, retriever="bm25")
        assert [p["id"] for p in r["passages"]] == [h["id"] for h in expected]
        assert r["retrieval"] == {"query": "rationale", "retriever": "bm25", "k": 2, "kb": "kb"}
        assert "Answer:" not in r["rationale"]


def test_ft_and_rd_examples_and_limits(tmp_path):
    kept = read_kept_rationales(write_rationales(tmp_path / "kept.jsonl"))
    ft = build_examples(ITEMS, kept, "ft")
    assert [r["item_id"] for r in ft] == [it.id for it in ITEMS] and all(r["passages"] == [] for r in ft)
    rd = build_examples(ITEMS, kept, "rd", max_items=2, per_item=1)
    assert [(r["item_id"], r["rationale_index"]) for r in rd] == [("q1", 0), ("q2", 0)]


def test_save_and_read_round_trip_with_provenance(tmp_path, tiny_kb):
    kept_path = write_rationales(tmp_path / "kept.jsonl")
    rows = build_examples(ITEMS, read_kept_rationales(kept_path), "kard", kb=tiny_kb, k=3)
    out = save_examples(rows, tmp_path / "ex.jsonl", sources={"rationales": kept_path})
    meta = json.loads((tmp_path / "ex.jsonl.meta.json").read_text())
    assert meta["examples"] == len(rows) and meta["sources"]["rationales"]["sha256"]
    back = read_examples(out)
    assert isinstance(back[0]["item"], QAItem) and back[0]["item"] == ITEMS[0]
    assert back[0]["passages"] == rows[0]["passages"]


def test_bad_inputs(tmp_path, tiny_kb):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="no kept rationales"):
        read_kept_rationales(empty)
    only_dropped = tmp_path / "dropped.jsonl"
    only_dropped.write_text(json.dumps({"item_id": "q1", "rationale_index": 0, "text": "x", "kept": False}) + "\n")
    with pytest.raises(InputError, match="no kept rationales"):
        read_kept_rationales(only_dropped)
    kept = {"zz": [(0, "a rationale")]}
    with pytest.raises(InputError, match="none of the"):
        build_examples(ITEMS, kept, "rd")
    kept = read_kept_rationales(write_rationales(tmp_path / "kept.jsonl"))
    with pytest.raises(ArtifactError, match="knowledge base"):
        build_examples(ITEMS, kept, "kard", kb=None)
    # wrong option count in an examples file
    rows = build_examples(ITEMS, kept, "rd")
    rows[1] = {**rows[1], "item": {**rows[1]["item"], "options": ["only one"]}}
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({**r, "item": r["item"]}) + "\n" for r in rows))
    with pytest.raises(InputError, match="1 options") as err:
        read_examples(bad)
    assert err.value.line == 2 and err.value.field == "item.options"
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(InputError, match="not found"):
        read_kept_rationales(missing)


def test_rationale_selection_first_shortest_random():
    from kardlite.distill.examples import select_rationales

    kept = [(0, "a rather long rationale text"), (1, "short"), (2, "medium text"), (5, "tiny")]
    assert select_rationales(kept, 2, "first") == [(0, kept[0][1]), (1, "short")]
    assert select_rationales(kept, 2, "shortest") == [(1, "short"), (5, "tiny")]
    assert select_rationales(kept, None, "shortest") == kept and select_rationales(kept, 9, "random") == kept
    picks = {tuple(select_rationales(kept, 2, "random", key=f"q{i}")) for i in range(20)}
    assert len(picks) > 1  # depends on the question
    # ...but not on anything else: the same question gets the same pick in any run
    assert select_rationales(kept, 2, "random", key="q3") == select_rationales(kept, 2, "random", key="q3")
    assert all(list(p) == sorted(p) for p in picks)
    with pytest.raises(InputError, match="select"):
        select_rationales(kept, 1, "longest")


def test_ka_ft_rows_are_kard_rows_with_the_answer_alone(tmp_path, tiny_kb):
    from kardlite.prompts import build_prompt

    kept = read_kept_rationales(write_rationales(tmp_path / "kept.jsonl"))
    kard = build_examples(ITEMS, kept, "kard", kb=tiny_kb, k=2, per_item=1, select="shortest")
    kaft = build_examples(ITEMS, kept, "ka-ft", kb=tiny_kb, k=2, per_item=1, select="shortest")
    assert [(r["item_id"], r["rationale_index"], r["passages"]) for r in kard] == \
           [(r["item_id"], r["rationale_index"], r["passages"]) for r in kaft]
    assert kard[0]["rationale_index"] == 1  # q1's second rationale is the shorter one
    out = save_examples(kaft, tmp_path / "kaft.jsonl")
    row = read_examples(out)[0]
    from kardlite.kb.passage import Passage

    passages = [Passage(id=p["id"], title="", text=p["text"]) for p in row["passages"]]
    prompt = build_prompt(row["item"], "ka-ft", passages=passages, rationale=row["rationale"], with_target=True)
    assert "Knowledge:" in prompt.text and prompt.text.endswith("Answer:") and prompt.target == " A"
    with pytest.raises(ArtifactError, match="knowledge base"):
        build_examples(ITEMS, kept, "ka-ft")
