"""Read a corpus into passages: a fact-per-line file, a JSONL file, or a folder of .txt/.md documents."""

from __future__ import annotations

import json
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Any, Literal

from kardlite._io import iter_jsonl, read_text
from kardlite.errors import InputError
from kardlite.kb.passage import Passage

SourceFormat = Literal["auto", "lines", "jsonl", "folder"]
FOLDER_SUFFIXES = (".txt", ".md")

# Linear time: the paragraph's lazy scan runs its lookahead only after a non-space character, and each lookahead
# reads one run of whitespace (tests feed these 100,000-character adversarial inputs). Headings are parsed
# without a regular expression (_md_title).
_PARAGRAPH = re.compile(r"\S(?:.*?\S)?(?=[ \t\r]*\n[ \t\r]*\n|\s*\Z)", re.DOTALL)
_WORD = re.compile(r"\S+")
_WORDLIKE = re.compile(r"\w")
# Line breaks of a one-fact-per-line file: what editors and Python's text mode break at. str.splitlines() also
# breaks at U+2028, U+0085, form feed, U+001E ..., which would cut one fact in two.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def read_passages(path: str | Path, format: SourceFormat = "auto", *, chunk_words: int = 200,
                  overlap_words: int = 40) -> list[Passage]:
    """Read a corpus into passages.

    Args:
        path: a text file with one fact per line (OpenBookQA's ``openbook.txt``), a JSONL file of
            ``{"id", "title"?, "text", ...}`` objects, or a folder of ``.txt``/``.md`` files.
        format: "lines", "jsonl", "folder", or "auto" (a folder, a ``.jsonl`` file, or a file whose first
            non-blank line is a JSON object is read as such; any other file as lines).
        chunk_words: folders only: the most words per passage. Paragraphs are packed whole up to this size;
            a longer paragraph is cut at word boundaries.
        overlap_words: folders only: words of the previous passage repeated at the start of the next
            (whole trailing paragraphs, or words inside a long paragraph), so a fact on a boundary stays whole.

    Returns:
        The passages, in file order. Lines give ids ``<stem>-<lineno>`` (surrounding double quotes stripped;
        blank or punctuation-only lines skipped); JSONL keeps extra keys in ``meta``; folders give
        ``<relpath>#<n>`` with ``source`` the file and ``meta`` holding ``path`` and the character offsets
        ``start``/``end`` of the chunk in that file. Titles of folder passages: the first markdown heading of a
        ``.md`` file, else the file name without suffix.

    Raises:
        InputError: unreadable or undecodable file, malformed JSONL, a missing field, a duplicate id, or no
            passages at all; the message names the file, line and field.
    """
    path = Path(path)
    if chunk_words < 1:
        raise InputError("must be >= 1", field="chunk_words")
    if not 0 <= overlap_words < chunk_words:
        raise InputError(f"must be >= 0 and < chunk_words ({chunk_words})", field="overlap_words")
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    if format == "auto":
        format = _sniff(path)
    if format == "folder":
        if not path.is_dir():
            raise InputError("expected a folder of .txt/.md files", path=path)
        passages = _read_folder(path, chunk_words, overlap_words)
    elif format in ("lines", "jsonl"):
        if path.is_dir():
            raise InputError(f"is a folder; use format 'folder' or give a {format} file", path=path)
        passages = _read_lines(path) if format == "lines" else _read_jsonl(path)
    else:
        raise InputError(f"unknown format {format!r} (expected auto, lines, jsonl or folder)", field="format")
    if not passages:
        raise InputError("no passages found (empty corpus)", path=path)
    return passages


def _sniff(path: Path) -> str:
    if path.is_dir():
        return "folder"
    if path.suffix.lower() == ".jsonl":
        return "jsonl"
    for line in _LINE_BREAK.split(read_text(path)):
        if line.strip():
            if line.lstrip().startswith("{"):
                try:
                    return "jsonl" if isinstance(json.loads(line), dict) else "lines"
                except (ValueError, RecursionError):  # malformed, a huge number, or nested too deeply
                    return "lines"
            return "lines"
    return "lines"


def _read_lines(path: Path) -> list[Passage]:
    passages = []
    for lineno, raw in enumerate(_LINE_BREAK.split(read_text(path)), start=1):
        text = raw.strip()
        # openbook.txt wraps every fact in double quotes; they are not part of the fact.
        if len(text) >= 2 and text[0] == text[-1] == '"':
            text = text[1:-1].strip()
        if not _WORDLIKE.search(text):  # blank, or only punctuation such as a stray quote
            continue
        passages.append(Passage(id=f"{path.stem}-{lineno}", title="", text=text, source=str(path),
                                meta={"line": lineno}))
    return passages


def _read_jsonl(path: Path) -> list[Passage]:
    passages = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        pid = _field(obj, "id", path, lineno, (str, int))
        pid = str(pid).strip()
        if not pid:
            raise InputError("empty", path=path, line=lineno, field="id")
        if pid in seen:
            raise InputError(f"duplicate id {pid!r} (first on line {seen[pid]})", path=path, line=lineno, field="id")
        seen[pid] = lineno
        text = _field(obj, "text", path, lineno, str).strip()
        if not text:
            raise InputError("empty", path=path, line=lineno, field="text")
        # Only a missing or null title/source is empty; 0, false or [] are mistakes, not "no title".
        title = "" if obj.get("title") is None else obj["title"]
        if not isinstance(title, str):
            raise InputError(f"expected a string, got {type(title).__name__}", path=path, line=lineno, field="title")
        source = obj.get("source")
        source = str(path) if source is None or source == "" else source
        if not isinstance(source, str):
            raise InputError(f"expected a string, got {type(source).__name__}", path=path, line=lineno,
                             field="source")
        for key, value in (("id", pid), ("text", text), ("title", title), ("source", source)):
            check_text(value, path=path, line=lineno, field=key)
        meta = {k: v for k, v in obj.items() if k not in ("id", "title", "text", "source")}
        passages.append(Passage(id=pid, title=title.strip(), text=text, source=source, meta=meta))
    return passages


def _field(obj: dict[str, Any], key: str, path: Path, line: int, kind: type | tuple[type, ...]) -> Any:
    if key not in obj or obj[key] is None:
        raise InputError("missing", path=path, line=line, field=key)
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InputError(f"expected {'a string' if kind is str else 'a string or integer'}, "
                         f"got {type(value).__name__}", path=path, line=line, field=key)
    return value


def check_text(text: str, *, path: str | Path | None = None, line: int | None = None, field: str | None = None) -> None:
    """Raise InputError if ``text`` holds a lone surrogate (JSON ``"\\ud800"``): it cannot be stored or tokenised."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(f"not valid Unicode: a lone surrogate U+{ord(text[err.start]):04X} at character {err.start}",
                         path=path, line=line, field=field) from None


def _md_title(text: str) -> str | None:
    """The text of a Markdown document's first ATX heading (``# Title``, ``## Title ##``), or None.

    CommonMark's rule: up to three spaces, one to six ``#``, then a space or tab; a closing run of ``#`` counts
    only after a space. Parsed by hand, line by line: linear in the document (a regular expression for this
    took 18 s on one line of 2,000 spaces).
    """
    for line in _LINE_BREAK.split(text):
        body = line.lstrip(" ")
        if len(line) - len(body) > 3 or not body.startswith("#"):
            continue
        rest = body.lstrip("#")
        if len(body) - len(rest) > 6 or (rest and rest[0] not in " \t"):
            continue  # "####### x" or "#hashtag": not a heading
        title = rest.strip(" \t")
        closed = title.rstrip("#")
        if closed != title and (not closed or closed[-1] in " \t"):
            title = closed.rstrip(" \t")
        if title:
            return title
    return None


def _list_folder(root: Path) -> list[Path]:
    found = []

    def fail(err: OSError) -> None:
        raise InputError(f"cannot read folder ({err.strerror})", path=err.filename or root)

    # os.walk rather than rglob: it reports unreadable sub-folders (onerror) instead of skipping them.
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(FOLDER_SUFFIXES):
                file = Path(dirpath) / name
                try:
                    mode = file.stat().st_mode  # follows a link: a link to a regular file is read
                except OSError:
                    mode = None  # a dangling link: read_text names it
                if mode is not None and not stat.S_ISREG(mode):
                    # A FIFO would block the read forever; a socket or device is not a document either.
                    warnings.warn(f"{file}: not a regular file (FIFO, socket or device); skipped", stacklevel=4)
                    continue
                found.append(file)
    return found


def _read_folder(root: Path, chunk_words: int, overlap_words: int) -> list[Passage]:
    files = _list_folder(root)
    if not files:
        raise InputError(f"no {'/'.join(FOLDER_SUFFIXES)} files in folder", path=root)
    passages = []
    for file in files:
        text = read_text(file)
        rel = file.relative_to(root).as_posix()
        title = file.stem
        if file.suffix.lower() == ".md" and (heading := _md_title(text)):
            title = heading
        for n, (start, end) in enumerate(chunk_spans(text, chunk_words, overlap_words)):
            passages.append(Passage(id=f"{rel}#{n}", title=title, text=text[start:end], source=str(file),
                                    meta={"path": rel, "start": start, "end": end}))
    return passages


def chunk_spans(text: str, chunk_words: int, overlap_words: int) -> list[tuple[int, int]]:
    """Character spans of the chunks of one document (paragraph-aware; see ``read_passages``).

    Args:
        text: the document.
        chunk_words: the most words per chunk.
        overlap_words: words repeated from the end of one chunk at the start of the next.

    Returns:
        (start, end) offsets into ``text``; each chunk is ``text[start:end]`` and has no edge whitespace.
    """
    # Units: whole paragraphs, or word windows of a paragraph longer than a chunk.
    units: list[tuple[int, int, int]] = []  # (start, end, words)
    for para in _PARAGRAPH.finditer(text):
        words = [(m.start() + para.start(), m.end() + para.start()) for m in _WORD.finditer(para.group())]
        if len(words) <= chunk_words:
            units.append((para.start(), para.end(), len(words)))
            continue
        step = chunk_words - overlap_words
        for i in range(0, len(words), step):
            window = words[i:i + chunk_words]
            units.append((window[0][0], window[-1][1], len(window)))
            if i + chunk_words >= len(words):
                break
    spans = []
    i = 0
    while i < len(units):
        j, size = i, 0
        while j < len(units) and (j == i or size + units[j][2] <= chunk_words):
            size += units[j][2]
            j += 1
        spans.append((units[i][0], units[j - 1][1]))
        if j >= len(units):
            break
        # Carry back whole trailing units that fit the overlap, but never the whole chunk (progress).
        back, carried = j, 0
        # The carry must also leave room for the next unit, or the chunk would only repeat the carry.
        while (back - 1 > i and carried + units[back - 1][2] <= overlap_words
               and carried + units[back - 1][2] + units[j][2] <= chunk_words):
            back -= 1
            carried += units[back][2]
        i = back
    return spans
