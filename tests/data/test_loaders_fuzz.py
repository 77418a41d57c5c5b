"""Fuzzed task files: every loader either returns exactly what the file says or raises InputError, fast."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from kardlite.data.loaders import load_task
from kardlite.data.records import LETTERS
from tests.fuzz import Tally, attempt, fuzz_settings, json_value, text

WORK = Path(tempfile.mkdtemp(prefix="kardlite-fuzz-loaders-"))
LETTER_KEYS = [*LETTERS[:11], "a", "k"]
answerish = st.one_of(st.sampled_from(["A", "b", "K", "0", "1", "²", "①", "9" * 5000, " 1 ", "", "x"]),
                      st.integers(-2, 12), json_value)
record = st.fixed_dictionaries({}, optional={
    "id": st.one_of(json_value, st.sampled_from([" ", "q1", " q2 ", 7, 1.5, True, [1]])),
    "question": st.one_of(text, json_value),
    "options": st.one_of(st.lists(st.one_of(text, json_value), max_size=12), text, json_value),
    "answer": answerish,
    "label": answerish,
    **{k: st.one_of(text, st.just(""), json_value) for k in LETTER_KEYS},
    "extra": json_value,
})


# Well-formed records and cells (any text, nothing missing), mixed with the arbitrary ones above, so that a good
# share of the files is accepted and the checks on what the loader returns actually run.
clean = text.filter(lambda s: s.strip() != "" and "\ud800" not in s and "\udfff" not in s)
good_record = st.fixed_dictionaries(
    {"question": clean, "options": st.lists(clean, min_size=2, max_size=5)},
    optional={"answer": st.sampled_from(["A", "b", "0", "1", 0, 1]), "extra": json_value})
task_records = st.one_of(st.lists(good_record, min_size=1, max_size=3),
                         st.lists(st.one_of(good_record, record), min_size=1, max_size=3))


def _norm(value: Any) -> str:
    return value.strip() if isinstance(value, str) else value


def _expected_options(rec: dict[str, Any]) -> tuple[str, ...]:
    if rec.get("options") not in (None, ""):
        raw = rec["options"].split("|") if isinstance(rec["options"], str) else rec["options"]
        return tuple(_norm(o) for o in raw)
    cols = {LETTERS.index(k.upper()): v for k, v in rec.items() if len(k) == 1 and k.upper() in LETTERS
            and v not in (None, "")}
    return tuple(_norm(cols[i]) for i in range(len(cols)))  # a gap or a column past J must have been refused


def _check_item(item: Any, rec: dict[str, Any], auto_id: str) -> None:
    """An accepted record is the record: no option dropped, no id or answer reinterpreted."""
    assert item.question == rec["question"].strip()
    assert item.options == _expected_options(rec)
    rid = rec.get("id")
    if rid is None or rid == "":
        assert item.id == auto_id
    else:
        assert isinstance(rid, str | int) and not isinstance(rid, bool) and item.id == str(rid).strip()
    key = "answer" if "answer" in rec else "label"
    answer = rec.get(key)
    if answer is None or answer == "":
        assert item.label is None
    elif isinstance(answer, int):
        assert not isinstance(answer, bool) and item.label == answer
    else:
        a = answer.strip()
        if a.isascii() and a.isdigit():
            assert item.label == int(a)
        elif len(a) == 1 and a.upper() in LETTERS:
            assert item.label == LETTERS.index(a.upper())
        else:
            assert item.options[item.label].casefold() == a.casefold()


def test_generic_jsonl() -> None:
    tally = Tally()

    @fuzz_settings()
    @given(task_records)
    def case(records: list[dict[str, Any]]) -> None:
        path = WORK / "task.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8", errors="surrogatepass")
        items, err = tally.attempt(load_task, path, "generic")
        if err:
            return
        assert len(items) == len(records)
        for line, (item, rec) in enumerate(zip(items, records, strict=True), start=1):
            _check_item(item, rec, f"task-{line}")

    case()
    tally.require(0.3)  # 138 of 200 accepted when written


cell = st.one_of(text.filter(lambda s: "\ud800" not in s and "\udfff" not in s), st.just(""))
clean_cell = clean.filter(lambda s: s.strip() not in LETTERS)  # not a letter: an option that reads as an answer
good_header = st.sampled_from([["question", "A", "B"], ["id", "question", "A", "B", "C"],
                               ["question", "a", "b", "c", "d"]])
good_rows = st.lists(st.lists(clean_cell, min_size=8, max_size=8), min_size=1, max_size=3)


def test_generic_csv() -> None:
    tally = Tally()

    @fuzz_settings()
    @given(st.booleans(), st.lists(st.sampled_from(["id", "question", "options", "answer", *LETTER_KEYS]), min_size=1,
                                   max_size=8, unique=True),
           st.lists(st.lists(st.one_of(clean_cell, cell), min_size=8, max_size=8), min_size=1, max_size=3),
           good_header, good_rows, st.integers(0, 3).map(lambda n: n == 0))
    def case(well_formed: bool, header: list[str], rows: list[list[str]], good_head: list[str],
             good_body: list[list[str]], huge: bool) -> None:
        if well_formed:
            header, rows = good_head, good_body
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        for row in rows:
            writer.writerow(row[: len(header)])
        if huge:  # one cell over the csv module's field limit
            writer.writerow(["x" * 200_000] + [""] * (len(header) - 1))
        path = WORK / "task.csv"
        path.write_text(buf.getvalue(), encoding="utf-8")
        items, err = tally.attempt(load_task, path, "generic")
        if err:
            return
        assert not huge and len(items) == len(rows)
        for row_no, (item, row) in enumerate(zip(items, rows, strict=True), start=2):
            _check_item(item, dict(zip(header, row, strict=False)), f"task-{row_no}")

    case()
    tally.require(0.2)  # 81 of 200 accepted when written


def _mutate(base: dict[str, Any], draw: Any) -> dict[str, Any]:
    obj = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(0, 3))):
        target, keys = obj, draw(st.lists(st.sampled_from(["question", "choices", "stem", "text", "label", "0",
                                                              "answerKey", "id", "options", "A", "answer_idx",
                                                              "sent1", "sent2", "ending0", "ending1", "qid",
                                                              "answer"]), min_size=1, max_size=3))
        for key in keys[:-1]:
            target = target.get(key) if isinstance(target, dict) else None
            if not isinstance(target, dict):
                break
        if isinstance(target, dict):
            if draw(st.booleans()):
                target.pop(keys[-1], None)
            else:
                target[keys[-1]] = draw(json_value)
    return obj


BASES = {
    "obqa": {"id": "7-1", "question": {"stem": "What?", "choices": [{"text": "a", "label": "A"},
                                                                   {"text": "b", "label": "B"}]}, "answerKey": "B"},
    "medqa": {"question": "What?", "options": {"A": "a", "B": "b", "C": "c"}, "answer_idx": "C"},
    "medqa-hf": {"id": "m1", "sent1": "What?", "sent2": "", "ending0": "a", "ending1": "b", "label": 1},
}


def test_published_formats() -> None:
    tally = Tally()

    @fuzz_settings()
    @given(st.sampled_from(sorted(BASES)), st.data())
    def case(fmt: str, data: Any) -> None:
        obj = _mutate(BASES[fmt], data.draw)
        path = WORK / f"{fmt}.jsonl"
        path.write_text(json.dumps(obj) + "\n", encoding="utf-8", errors="surrogatepass")
        items, err = tally.attempt(load_task, path, fmt)
        if err:
            return
        (item,) = items
        if fmt == "obqa":
            choices = obj["question"]["choices"]
            assert item.question == obj["question"]["stem"].strip() and item.id == obj["id"].strip()
            assert item.options == tuple(c["text"].strip() for c in choices)
            assert choices[item.label].get("label", LETTERS[item.label]) == obj["answerKey"]
        elif fmt == "medqa":
            assert item.options == tuple(obj["options"][k].strip() for k in sorted(obj["options"]))
            assert item.question == obj["question"].strip()
        else:
            assert item.options == tuple(obj[f"ending{i}"].strip() for i in range(len(item.options)))
            assert f"ending{len(item.options)}" not in obj

    case()
    tally.require(0.4)  # 155 of 200 accepted when written


@fuzz_settings(cases=200)
@given(st.binary(max_size=300), st.sampled_from(["obqa", "medqa", "medqa-hf", "generic", "strategyqa", "auto"]),
       st.sampled_from([".jsonl", ".csv", ".json"]))
def test_raw_bytes(data: bytes, fmt: str, suffix: str) -> None:
    path = WORK / f"raw{suffix}"
    path.write_bytes(data)
    attempt(load_task, path, fmt)


@fuzz_settings(cases=10)
@given(st.integers(1, 3), st.sampled_from(["[", "{\"a\":"]))
def test_deep_nesting_and_huge_numbers(kind: int, opener: str) -> None:
    body = {1: opener * 100_000, 2: "9" * 5_000, 3: "[" * 50}[kind]
    path = WORK / "deep.jsonl"
    path.write_text('{"question": "q", "options": ["a", "b"], "answer": ' + body + "\n", encoding="utf-8")
    _, err = attempt(load_task, path, "generic")
    assert err is not None and err.line == 1
