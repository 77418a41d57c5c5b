from __future__ import annotations

import json
from pathlib import Path

import pytest

from kardlite.errors import InputError
from kardlite.kb import read_passages
from kardlite.kb.ingest import chunk_spans


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- one fact per line ---------------------------------------------------------------------------------------


def test_lines_strip_quotes_skip_blanks_and_number_by_line(tmp_path: Path) -> None:
    text = '"A bee is a pollinating animal"\n\n  "the sun is a star"  \nplain fact\n"\n'
    book = _write(tmp_path / "openbook.txt", text)
    passages = read_passages(book)
    assert [p.id for p in passages] == ["openbook-1", "openbook-3", "openbook-4"]
    assert [p.text for p in passages] == ["A bee is a pollinating animal", "the sun is a star", "plain fact"]
    assert passages[0].title == "" and passages[0].meta == {"line": 1} and passages[0].source == str(book)


def test_lines_keep_inner_quotes(tmp_path: Path) -> None:
    book = _write(tmp_path / "b.txt", 'the word "hot" means high temperature\n')
    assert read_passages(book, "lines")[0].text == 'the word "hot" means high temperature'


# --- JSONL ---------------------------------------------------------------------------------------------------


def test_jsonl_title_optional_and_extra_fields_in_meta(tmp_path: Path) -> None:
    rows = [{"id": "p1", "title": "Bees", "text": "Bees pollinate.", "url": "u"}, {"id": 7, "text": "No title."}]
    path = _write(tmp_path / "kb.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    passages = read_passages(path)
    assert [(p.id, p.title, p.text) for p in passages] == [("p1", "Bees", "Bees pollinate."), ("7", "", "No title.")]
    assert passages[0].meta == {"url": "u"}
    assert passages[0].contents == "Bees. Bees pollinate."


def test_jsonl_sniffed_from_content_without_suffix(tmp_path: Path) -> None:
    path = _write(tmp_path / "corpus.txt", '{"id": "a", "text": "x y"}\n')
    assert read_passages(path)[0].id == "a"


@pytest.mark.parametrize(("name", "content", "line"), [
    ("facts.txt", '{"id": "a", "text": \n{"id": "b", "text": "valid"}\n', 1),  # line 1 malformed, line 2 fine
    ("facts.txt", '\n  {"id": "a" "text": "x"}\nplain fact\n', 2),  # first non-blank character "{"
    ("corpus.jsonl", 'plain fact one\n', 1),
    ("corpus.json", 'plain fact one\n{"id": "a", "text": "x"}\n', 1),
    ("corpus.JSON", '{"id": "a", "text": "x"}\n{"id": "b", "text": "y",}\n', 2),
])
def test_a_json_source_with_a_bad_line_is_an_error_not_lines(tmp_path: Path, name: str, content: str,
                                                              line: int) -> None:
    path = _write(tmp_path / name, content)
    with pytest.raises(InputError, match="malformed JSON") as info:
        read_passages(path)
    assert info.value.path == str(path) and info.value.line == line


def test_cli_kb_add_of_a_bad_json_source_fails_naming_file_and_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kardlite.cli import app
    from kardlite.kb import KBConfig, KnowledgeBase, Passage

    KnowledgeBase.build([Passage("bee", "", "A bee pollinates flowers")], tmp_path / "kb",
                        config=KBConfig(dense=None), progress=False).close()
    facts = _write(tmp_path / "facts.txt", '{"id": "a", "text": \n{"id": "b", "text": "valid"}\n')
    result = CliRunner().invoke(app, ["kb", "add", str(facts), str(tmp_path / "kb")])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"error: {facts}, line 1: malformed JSON (Expecting value")
    with KnowledgeBase.load(tmp_path / "kb") as kb:
        assert len(kb) == 1  # nothing added


@pytest.mark.parametrize(
    ("content", "line", "field", "words"),
    [
        ('{"id": "a", "text": "ok"}\n{"id": "b", "text": \n', 2, None, "malformed JSON"),
        ('{"id": "a", "text": "ok"}\n{"text": "no id"}\n', 2, "id", "missing"),
        ('{"id": "a"}\n', 1, "text", "missing"),
        ('{"id": "a", "text": "   "}\n', 1, "text", "empty"),
        ('{"id": "a", "text": 5}\n', 1, "text", "expected a string"),
        ('{"id": "a", "text": "x"}\n\n{"id": "a", "text": "y"}\n', 3, "id", "duplicate id 'a' (first on line 1)"),
        ('["not", "an", "object"]\n', 1, None, "expected a JSON object"),
        ('{"id": "a", "text": "x", "title": 3}\n', 1, "title", "expected a string"),
    ],
)
def test_jsonl_errors_name_file_line_field(tmp_path: Path, content: str, line: int, field: str | None,
                                           words: str) -> None:
    path = _write(tmp_path / "bad.jsonl", content)
    with pytest.raises(InputError) as err:
        read_passages(path, "jsonl")
    assert err.value.path == str(path) and err.value.line == line and err.value.field == field
    assert words in str(err.value) and str(path) in str(err.value)


# --- folders -------------------------------------------------------------------------------------------------


def test_folder_chunks_keep_offsets_titles_and_sources(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    md = _write(root / "guide.md", "# Plant Guide\n\nPlants need light.\nThey also need water.\n\n\nRoots take up "
                                   "minerals from soil.\n")
    txt = _write(root / "sub" / "notes.txt", "Owls hunt at night.")
    _write(root / "image.png", b"\x89PNG")  # ignored: not .txt/.md
    _write(root / ".hidden.md", "secret")  # ignored: hidden
    passages = read_passages(root, chunk_words=6, overlap_words=0)
    by_file: dict[str, list] = {}
    for p in passages:
        by_file.setdefault(p.meta["path"], []).append(p)
    assert sorted(by_file) == ["guide.md", "sub/notes.txt"]
    for rel, chunks in by_file.items():
        source = (root / rel).read_text(encoding="utf-8")
        for p in chunks:
            assert source[p.meta["start"]:p.meta["end"]] == p.text
            assert p.source == str(root / rel)
    guide = by_file["guide.md"]
    assert all(p.title == "Plant Guide" for p in guide)
    assert [p.id for p in guide] == [f"guide.md#{i}" for i in range(len(guide))]
    # Paragraph-aware: the two-line paragraph (7 words > 6) is cut, but no chunk mixes the heading paragraph's
    # text with a cut half, and the last paragraph stays whole.
    assert guide[-1].text == "Roots take up minerals from soil."
    assert by_file["sub/notes.txt"][0].title == "notes" and by_file["sub/notes.txt"][0].text == txt.read_text()
    assert md.exists()


def test_folder_packs_small_paragraphs_and_overlaps() -> None:
    text = "\n\n".join(f"p{i} w w w" for i in range(6))  # six paragraphs of 4 words
    spans = chunk_spans(text, chunk_words=8, overlap_words=4)
    chunks = [text[s:e] for s, e in spans]
    assert chunks[0] == "p0 w w w\n\np1 w w w"
    # The last paragraph of each chunk opens the next (overlap of 4 words).
    assert chunks[1].startswith("p1") and chunks[1].endswith("p2 w w w")
    assert chunks[-1].endswith("p5 w w w")
    assert all(len(c.split()) <= 8 for c in chunks)


def test_folder_long_paragraph_split_with_word_overlap() -> None:
    text = " ".join(f"w{i}" for i in range(25))
    chunks = [text[s:e].split() for s, e in chunk_spans(text, chunk_words=10, overlap_words=3)]
    assert chunks[0] == [f"w{i}" for i in range(10)]
    assert chunks[1][0] == "w7"  # 3 words repeated
    assert chunks[-1][-1] == "w24"
    assert all(len(c) <= 10 for c in chunks)


def test_chunk_sizes_validated(tmp_path: Path) -> None:
    _write(tmp_path / "a.txt", "x")
    with pytest.raises(InputError, match="overlap_words"):
        read_passages(tmp_path, chunk_words=10, overlap_words=10)


# --- bad inputs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "\n\n  \n", '""\n'])
def test_empty_lines_file_is_an_error(tmp_path: Path, content: str) -> None:
    path = _write(tmp_path / "empty.txt", content)
    with pytest.raises(InputError, match="empty corpus") as err:
        read_passages(path)
    assert err.value.path == str(path)


def test_empty_jsonl_and_folder_are_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="empty corpus"):
        read_passages(_write(tmp_path / "e.jsonl", "\n"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match=r"no \.txt/\.md files"):
        read_passages(tmp_path / "nothing")
    _write(tmp_path / "blank" / "a.md", "   \n")
    with pytest.raises(InputError, match="empty corpus"):
        read_passages(tmp_path / "blank")


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path / "latin1.txt", "caf\xe9 is a word\n".encode("latin-1"))
    with pytest.raises(InputError, match="not valid UTF-8") as err:
        read_passages(path)
    assert err.value.path == str(path) and err.value.line == 1
    _write(tmp_path / "docs" / "bad.md", b"ok\n\xff\xfe")
    with pytest.raises(InputError, match="not valid UTF-8") as err:
        read_passages(tmp_path / "docs")
    assert err.value.path == str(tmp_path / "docs" / "bad.md") and err.value.line == 2


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or folder"):
        read_passages(tmp_path / "missing.txt")
    (tmp_path / "adir").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        read_passages(tmp_path / "adir", "lines")
    afile = _write(tmp_path / "afile.txt", "x")
    with pytest.raises(InputError, match="expected a folder"):
        read_passages(afile, "folder")
    # A listed document that cannot be read (a dangling link) is an error naming it, not a silent skip.
    docs = tmp_path / "docs"
    _write(docs / "good.txt", "fine")
    (docs / "gone.txt").symlink_to(tmp_path / "does-not-exist.txt")
    with pytest.raises(InputError, match="file not found") as err:
        read_passages(docs)
    assert err.value.path == str(docs / "gone.txt")


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown format"):
        read_passages(_write(tmp_path / "a.txt", "x"), "csv")  # type: ignore[arg-type]


# --- hardening ------------------------------------------------------------------------------------------------
def test_only_cr_and_lf_end_a_fact(tmp_path: Path) -> None:
    """U+2028, NEL, form feed and record separators are inside a fact (str.splitlines would cut it in two)."""
    book = _write(tmp_path / "book.txt", "the cat\u2028sat\x0con the mat\nsecond\x1efact\x85end\r\nthird\rfourth\n")
    assert [(p.id, p.text) for p in read_passages(book)] == [
        ("book-1", "the cat\u2028sat\x0con the mat"), ("book-2", "second\x1efact\x85end"), ("book-3", "third"),
        ("book-4", "fourth")]


def test_fifo_in_a_folder_is_skipped_with_a_warning(tmp_path: Path) -> None:
    import os

    _write(tmp_path / "docs" / "a.md", "# Title\n\nbody text\n")
    os.mkfifo(tmp_path / "docs" / "pipe.txt")  # reading it would block for ever
    with pytest.warns(UserWarning, match=r"pipe\.txt: not a regular file"):
        passages = read_passages(tmp_path / "docs")
    assert [p.id for p in passages] == ["a.md#0"] and passages[0].title == "Title"


@pytest.mark.parametrize(("row", "field"), [
    ({"id": "a", "text": "x\ud800"}, "text"), ({"id": "a", "text": "x", "title": 0}, "title"),
    ({"id": "a", "text": "x", "title": []}, "title"), ({"id": "a\udfff", "text": "x"}, "id"),
])
def test_jsonl_bad_text_is_named(tmp_path: Path, row: dict, field: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_passages(path)
    assert info.value.field == field and info.value.line == 1


def test_store_refuses_bad_passages_through_the_api(tmp_path: Path) -> None:
    from kardlite.kb import KBConfig, KnowledgeBase, Passage

    cfg = KBConfig(dense=None)
    for passage, field in ((Passage("a", None, "text"), "title"), (Passage("a", "", ["x"]), "text"),  # type: ignore[arg-type]
                           (Passage(7, "", "text"), "id"), (Passage("a", "", "bad \ud800"), "text"),  # type: ignore[arg-type]
                           (Passage(" a", "", "text"), "id")):
        with pytest.raises(InputError) as info:
            KnowledgeBase.build([passage], tmp_path / "kb", config=cfg, progress=False)
        assert info.value.field == field
    with pytest.raises(InputError, match="has a word BM25 can index"):
        KnowledgeBase.build([Passage("a", "", "the and of"), Passage("b", "", "a")], tmp_path / "kb", config=cfg,
                            progress=False)
    assert not (tmp_path / "kb").exists() and not list(tmp_path.iterdir())


def test_folder_chunks_fit_the_encoder_and_the_reranker_in_tokens(tmp_path: Path) -> None:
    from kardlite.kb.encoder import _model_max_length, packaged_model_dir
    from kardlite.kb.ingest import CHUNK_TOKENS, encoder_tokenizer

    # Long words split into many word pieces: 200 of them (the old word budget) are far over 256 tokens.
    words = [f"electroencephalographically{i}" for i in range(180)] + ["x" * 600]  # and one word of ~150 tokens
    _write(tmp_path / "doc.txt", " ".join(words) + "\n\nA short closing paragraph.")
    tok = encoder_tokenizer()
    limit = _model_max_length(packaged_model_dir())  # 256, [CLS] and [SEP] included
    old = tok.encode(" ".join(words[:200]), add_special_tokens=True)
    assert len(old.ids) > limit  # what word-sized chunks did: the tail was never embedded
    passages = read_passages(tmp_path)
    sizes = [len(tok.encode(p.text, add_special_tokens=True).ids) for p in passages]
    assert len(passages) > 10 and max(sizes) <= CHUNK_TOKENS + 2 <= 128 <= limit
    # Nothing is lost: every word of the document is in some chunk.
    text = (tmp_path / "doc.txt").read_text()
    covered = set()
    for p in passages:
        covered.update(range(p.meta["start"], p.meta["end"]))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())
