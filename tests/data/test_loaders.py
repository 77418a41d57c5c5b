from __future__ import annotations

import json
from pathlib import Path

import pytest

from kardlite.data import QAItem, load_generic, load_medqa, load_medqa_hf, load_obqa, load_strategyqa, load_task
from kardlite.errors import InputError
from tests.conftest import needs_shared

OBQA_ROW = {"id": "7-980", "question": {"stem": "The sun is responsible for", "choices": [
    {"text": "puppies learning new tricks", "label": "A"}, {"text": "children growing up", "label": "B"},
    {"text": "flowers wilting in a vase", "label": "C"}, {"text": "plants sprouting and blooming", "label": "D"}]},
    "answerKey": "D"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_obqa_main_and_additional(tmp_path: Path) -> None:
    items = load_obqa(write_jsonl(tmp_path / "train.jsonl", [OBQA_ROW, {**OBQA_ROW, "id": "x", "fact1": "f"}]))
    assert items[0] == QAItem("7-980", "The sun is responsible for", (
        "puppies learning new tricks", "children growing up", "flowers wilting in a vase",
        "plants sprouting and blooming"), 3)
    assert items[1].meta == {"fact1": "f"}
    assert items[0].linearize().splitlines() == ["The sun is responsible for", "A. puppies learning new tricks",
                                                "B. children growing up", "C. flowers wilting in a vase",
                                                "D. plants sprouting and blooming"]


def test_strategyqa_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    rows = [{"qid": f"q{i}", "term": "t", "description": "d", "question": f"Is {i} even?", "answer": i % 2 == 0,
             "facts": [], "decomposition": []} for i in range(100)]
    path = tmp_path / "strategyqa_train.json"
    path.write_text(json.dumps(rows))
    train, test = load_strategyqa(path, split="train"), load_strategyqa(path, split="test")
    assert (len(train), len(test)) == (70, 30)
    assert not {i.id for i in train} & {i.id for i in test}
    assert [i.id for i in load_strategyqa(path, split="train")] == [i.id for i in train]
    assert load_task(path)[0].options == ("yes", "no") and load_task(path)[0].label == 0
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ["q1", "q2"], "test": ["q3"]}))
    assert [i.id for i in load_strategyqa(path, split="test", split_file=split_file)] == ["q3"]
    split_file.write_text(json.dumps({"train": ["nope"]}))
    with pytest.raises(InputError, match="not in"):
        load_strategyqa(path, split="train", split_file=split_file)


def test_medqa_both_layouts(tmp_path: Path) -> None:
    orig = write_jsonl(tmp_path / "test.jsonl", [{"question": "Q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"},
                                                "answer_idx": "C", "answer": "c", "meta_info": "step1"}])
    item = load_task(orig)[0]
    assert (item.id, item.label, item.meta) == ("test-1", 2, {"meta_info": "step1"})
    hf = write_jsonl(tmp_path / "hf.jsonl", [{"id": "m1", "sent1": "Q?", "sent2": "", "ending0": "a", "ending1": "b",
                                             "ending2": "c", "ending3": "d", "label": 3}])
    assert load_task(hf)[0] == QAItem("m1", "Q?", ("a", "b", "c", "d"), 3)
    assert load_medqa(orig)[0].options == ("a", "b", "c", "d")
    assert load_medqa_hf(hf)[0].label == 3


@pytest.mark.parametrize("answer,expected", [("B", 1), ("b", 1), (1, 1), ("1", 1), ("beta", 1)])
def test_generic_answer_forms(tmp_path: Path, answer: object, expected: int) -> None:
    path = write_jsonl(tmp_path / "mine.jsonl", [{"question": "Which?", "options": ["alpha", "beta", "gamma"],
                                                 "answer": answer, "topic": "greek"}])
    item = load_generic(path)[0]
    assert item.label == expected and item.meta == {"topic": "greek"} and item.id == "mine-1"


def test_generic_csv_with_letter_columns(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("id,question,A,B,C,D,E,answer\nq1,Which?,w,x,y,z,,C\nq2,Other?,1,2,3,4,5,E\n", encoding="utf-8")
    items = load_task(path)
    assert items[0].options == ("w", "x", "y", "z") and items[0].label == 2
    assert len(items[1].options) == 5 and items[1].answer_letter == "E"


@pytest.mark.parametrize("content,line,field,message", [
    ('{"question": "Q", "options": ["a", "b"], "answer": "A"}\n{not json\n', 2, None, "malformed JSON"),
    ('{"options": ["a", "b"], "answer": "A"}\n', 1, "question", "missing"),
    ('{"question": "Q", "options": ["a"], "answer": "A"}\n', 1, "options", "1 options"),
    ('{"question": "Q", "options": ["a", "b"], "answer": "C"}\n', 1, "answer", "out of range"),
    ('{"question": "Q", "options": ["a", "b"], "answer": 5}\n', 1, "answer", "out of range"),
    ('{"question": "Q", "options": ["a", "b"], "answer": "delta"}\n', 1, "answer", "neither"),
    ('[1, 2]\n', 1, None, "JSON object"),
    ('\n\n', None, None, "no questions"),
])
def test_generic_bad_input_names_file_line_field(tmp_path: Path, content: str, line: int | None, field: str | None,
                                                 message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message) as err:
        load_task(path, format="generic")
    assert err.value.path == str(path) and err.value.line == line and err.value.field == field
    assert "bad.jsonl" in str(err.value)


def test_obqa_bad_answer_key_and_twenty_options(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="answerKey") as err:
        load_obqa(write_jsonl(tmp_path / "a.jsonl", [OBQA_ROW, {**OBQA_ROW, "id": "y", "answerKey": "E"}]))
    assert err.value.line == 2
    many = {**OBQA_ROW, "question": {"stem": "s", "choices": [{"text": str(i), "label": str(i)} for i in range(20)]},
            "answerKey": "0"}
    with pytest.raises(InputError, match="20 options"):
        load_obqa(write_jsonl(tmp_path / "b.jsonl", [many]))


def test_duplicate_ids_non_utf8_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="duplicate id"):
        load_obqa(write_jsonl(tmp_path / "dup.jsonl", [OBQA_ROW, OBQA_ROW]))
    raw = tmp_path / "latin.jsonl"
    raw.write_bytes(b'{"question": "ok", "options": ["a", "b"], "answer": "A"}\n{"question": "caf\xe9"}\n')
    with pytest.raises(InputError, match="not valid UTF-8") as err:
        load_task(raw)
    assert err.value.line == 2
    with pytest.raises(InputError, match="file not found"):
        load_task(tmp_path / "missing.jsonl", format="generic")
    with pytest.raises(InputError, match="directory"):
        load_task(tmp_path, format="generic")
    locked = write_jsonl(tmp_path / "locked.jsonl", [OBQA_ROW])
    locked.chmod(0)
    try:
        if locked.stat().st_uid == 0:  # root reads anything, so exercise the error path another way
            locked.chmod(0o644)
            (tmp_path / "dir.jsonl").mkdir()
            with pytest.raises(InputError, match="is a directory, expected a file"):
                load_task(tmp_path / "dir.jsonl", format="obqa")
        else:
            with pytest.raises(InputError, match="cannot read"):
                load_task(locked)
    finally:
        locked.chmod(0o644)


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown task format"):
        load_task("x.jsonl", format="nope")  # type: ignore[arg-type]


@needs_shared
def test_real_obqa_files(obqa_dir: Path) -> None:
    sizes = {"train": 4957, "dev": 500, "test": 500}
    for split, n in sizes.items():
        main = load_task(obqa_dir / "Main" / f"{split}.jsonl")
        extra = load_task(obqa_dir / "Additional" / f"{split}_complete.jsonl")
        assert len(main) == n == len(extra)
        assert all(len(i.options) == 4 and i.label is not None for i in main)
        assert all(i.meta.get("fact1") for i in extra)
        assert [i.id for i in main] == [i.id for i in extra]


# --- hardening: inputs that used to crash or be changed silently -----------------------------------------------
@pytest.mark.parametrize(("name", "content", "field", "message"), [
    ("sup.jsonl", '{"question": "q", "options": ["a", "b"], "answer": "\u00b2"}\n', "answer", "neither a letter"),
    ("circ.jsonl", '{"question": "q", "options": ["a", "b"], "answer": "\u2460"}\n', "answer", "neither a letter"),
    ("deep.jsonl", '{"question": "q", "answer": ' + "[" * 100_000 + "}\n", None, "nested too deeply|malformed"),
    ("big.jsonl", '{"question": "q", "options": ["a", "b"], "answer": ' + "9" * 5000 + "}\n", None, "4300 digits"),
    ("cell.csv", 'question,A,B\n"' + "x" * 5_000_000 + '",a,b\n', None, "field larger than field limit"),
    ("k.csv", "question,A,B,C,D,E,F,G,H,I,J,K\nq,1,2,3,4,5,6,7,8,9,10,11\n", "K", "past J"),
    ("gap.csv", "question,A,B,C,D\nq,1,2,,4\n", "C", "option C is empty but a later option"),
    ("float.jsonl", '{"id": 1.5, "question": "q", "options": ["a", "b"]}\n', "id", "got float"),
    ("bool.jsonl", '{"id": true, "question": "q", "options": ["a", "b"]}\n', "id", "got bool"),
    ("list.jsonl", '{"id": [1], "question": "q", "options": ["a", "b"]}\n', "id", "got list"),
    ("blank.jsonl", '{"id": "  ", "question": "q", "options": ["a", "b"]}\n', "id", "empty"),
    ("sur.jsonl", '{"question": "q\\ud800", "options": ["a", "b"]}\n', "question", "lone surrogate"),
    ("sur2.jsonl", '{"question": "q", "options": ["a", "b\\udfff"]}\n', "options", "lone surrogate"),
])
def test_hostile_task_files_are_input_errors(tmp_path: Path, name: str, content: str, field: str | None,
                                             message: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message) as info:
        load_task(path, "generic")
    assert info.value.path == str(path) and info.value.line is not None
    if field:
        assert info.value.field == field


def test_trailing_empty_option_columns_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("id,question,A,B,C,D,answer\n 7 ,q,x,y,z,,C\n,r,x,y,,,1\n", encoding="utf-8")
    items = load_task(path, "generic")
    assert [(it.id, it.options, it.label) for it in items] == [("7", ("x", "y", "z"), 2), ("t-3", ("x", "y"), 1)]
