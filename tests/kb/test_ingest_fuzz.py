"""Fuzzed corpora: read_passages either returns the corpus unchanged (facts whole, ids and texts as given) or raises
InputError, fast; a KB built from what it returns stores exactly that."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from kardlite.kb.ingest import chunk_spans, read_passages
from tests.fuzz import Tally, attempt, fuzz_settings, json_value, text

WORK = Path(tempfile.mkdtemp(prefix="kardlite-fuzz-ingest-"))
_BREAK = re.compile(r"\r\n|\r|\n")


def test_one_fact_per_line() -> None:
    tally = Tally()

    @fuzz_settings()
    @given(st.lists(text, min_size=1, max_size=6), st.sampled_from(["\n", "\r\n", "\r"]))
    def case(facts: list[str], newline: str) -> None:
        body = newline.join(facts)
        path = WORK / "facts.txt"
        try:
            path.write_bytes(body.encode("utf-8"))
        except UnicodeEncodeError:
            return  # a lone surrogate cannot be in a UTF-8 file
        passages, err = tally.attempt(read_passages, path, "lines")
        if err:
            return
        lines = _BREAK.split(body.removeprefix("\ufeff"))
        for p in passages:
            n = p.meta["line"]
            raw = lines[n - 1].strip()
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = raw[1:-1].strip()
            assert p.text == raw and p.id == f"facts-{n}"  # a whole line, never a piece of one
            assert not _BREAK.search(p.text)
        assert len(passages) == sum(1 for line in lines if re.search(r"\w", line.strip().strip('"')))

    case()
    tally.require(0.5)  # 149 of 166 accepted when written


record = st.fixed_dictionaries({}, optional={"id": st.one_of(json_value, st.sampled_from([" ", "p1", 3, 2.5])),
                                             "text": st.one_of(text, json_value), "title": st.one_of(text, json_value),
                                             "source": json_value, "extra": json_value})
clean = text.filter(lambda s: s.strip() != "" and "\ud800" not in s and "\udfff" not in s)
good_record = st.fixed_dictionaries({"id": st.one_of(clean, st.integers(0, 10**6)), "text": clean},
                                    optional={"title": st.one_of(clean, st.just("")), "extra": json_value})


def test_jsonl() -> None:
    tally = Tally()

    @fuzz_settings()
    @given(st.booleans(), st.lists(record, min_size=1, max_size=4), st.lists(good_record, min_size=1, max_size=4))
    def case(well_formed: bool, records: list[dict[str, Any]], good: list[dict[str, Any]]) -> None:
        if well_formed:  # every field present and of its type, values still fuzzed: mostly accepted
            records = [{**r, "id": f"{r['id']}-{i}"} for i, r in enumerate(good)]
        path = WORK / "corpus.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8", errors="surrogatepass")
        passages, err = tally.attempt(read_passages, path, "jsonl")
        if err:
            return
        assert len(passages) == len(records)
        for p, r in zip(passages, records, strict=True):
            assert isinstance(r["id"], str | int) and not isinstance(r["id"], bool) and p.id == str(r["id"]).strip()
            assert p.text == r["text"].strip() and p.title == (r.get("title") or "").strip()
            assert r.get("title") in (None, "") or isinstance(r["title"], str)

    case()
    tally.require(0.2)  # 91 of 200 accepted when written


def test_folder() -> None:
    tally = Tally()

    @fuzz_settings()
    @given(st.lists(st.one_of(text, st.sampled_from(["# T", "## Head ##", "\n\n", "   ", "word " * 30, "#tag"])),
                    max_size=12).map("".join),
           st.sampled_from([".md", ".txt"]), st.integers(1, 30), st.data())
    def case(doc: str, suffix: str, chunk: int, data: Any) -> None:
        overlap = data.draw(st.integers(0, chunk - 1))
        root = WORK / "docs"
        root.mkdir(exist_ok=True)
        for old in root.iterdir():
            old.unlink()
        try:
            (root / f"doc{suffix}").write_bytes(doc.encode("utf-8"))
        except UnicodeEncodeError:
            return
        passages, err = tally.attempt(read_passages, root, "folder", chunk_words=chunk, overlap_words=overlap)
        if err:
            return
        source = doc.removeprefix("\ufeff")
        for p in passages:  # each chunk is a span of the file, as its offsets say
            assert p.text == source[p.meta["start"]:p.meta["end"]] and p.text == p.text.strip()
            assert len(p.text.split()) <= chunk
        words = source.split()
        covered = " ".join(p.text for p in passages).split()
        assert set(words) <= set(covered)  # no word lost between chunks
        assert chunk_spans(source, chunk, overlap) == [(p.meta["start"], p.meta["end"]) for p in passages]

    case()
    tally.require(0.5)  # 150 of 177 accepted when written


@fuzz_settings(cases=200)
@given(st.binary(max_size=300), st.sampled_from(["auto", "lines", "jsonl"]))
def test_raw_bytes(data: bytes, fmt: str) -> None:
    path = WORK / "raw.txt"
    path.write_bytes(data)
    attempt(read_passages, path, fmt)  # type: ignore[arg-type]
