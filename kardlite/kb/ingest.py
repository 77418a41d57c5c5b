"""Read a corpus into passages: a fact-per-line file, a JSONL file, or a folder of .txt/.md documents."""

from __future__ import annotations

import bisect
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
# Folder chunks, in the dense encoder's tokens: 126 + [CLS] + [SEP] fit the late-interaction reranker's 128 (and
# the encoder's 256), so every token of a passage is seen by both.
CHUNK_TOKENS = 126
OVERLAP_TOKENS = 24

# Linear time: the paragraph's lazy scan runs its lookahead only after a non-space character, and each lookahead
# reads one run of whitespace (tests feed these 100,000-character adversarial inputs). Headings are parsed
# without a regular expression (_md_title).
_PARAGRAPH = re.compile(r"\S(?:.*?\S)?(?=[ \t\r]*\n[ \t\r]*\n|\s*\Z)", re.DOTALL)
_WORD = re.compile(r"\S+")
_WORDLIKE = re.compile(r"\w")
# Line breaks of a one-fact-per-line file: what editors and Python's text mode break at. str.splitlines() also
# breaks at U+2028, U+0085, form feed, U+001E ..., which would cut one fact in two.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def read_passages(path: str | Path, format: SourceFormat = "auto", *, chunk_tokens: int = CHUNK_TOKENS,
                  overlap_tokens: int = OVERLAP_TOKENS, chunk_words: int | None = None,
                  overlap_words: int | None = None) -> list[Passage]:
    """Read a corpus into passages.

    Args:
        path: a text file with one fact per line (OpenBookQA's ``openbook.txt``), a JSONL file of
            ``{"id", "title"?, "text", ...}`` objects, or a folder of ``.txt``/``.md`` files.
        format: "lines", "jsonl", "folder", or "auto" (a folder is a folder; a ``.jsonl`` or ``.json`` file, or one
            whose first non-blank character is ``{``, is JSONL, and a malformed line in it is an error; any other
            file is read as lines).
        chunk_tokens: folders only: the most tokens per passage, counted with the dense encoder's tokenizer
            (all-MiniLM-L6-v2's; [CLS] and [SEP] not included; without that tokenizer on the machine, half as many
            words). Paragraphs are packed whole up to this size; a
            longer paragraph is cut at word boundaries (a single word longer than that, at token boundaries). The
            default, 126, fits whole in the encoder's 256 tokens and in the late-interaction reranker's 128, so
            no passage tail goes unseen.
        overlap_tokens: folders only: tokens of the previous passage repeated at the start of the next (whole
            trailing paragraphs, or words inside a long paragraph), so a fact on a boundary stays whole.
        chunk_words, overlap_words: the older sizing in words (deprecated: a word count can exceed the encoder's
            token limit); when ``chunk_words`` is given, sizes are counted in words.

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
    if chunk_words is not None:
        chunk, overlap, unit = chunk_words, overlap_words if overlap_words is not None else 40, "words"
    else:
        chunk, overlap, unit = chunk_tokens, overlap_tokens, "tokens"
    if chunk < 1:
        raise InputError("must be >= 1", field=f"chunk_{unit}")
    if not 0 <= overlap < chunk:
        raise InputError(f"must be >= 0 and < chunk_{unit} ({chunk})", field=f"overlap_{unit}")
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    if format == "auto":
        format = _sniff(path)
    if format == "folder":
        if not path.is_dir():
            raise InputError("expected a folder of .txt/.md files", path=path)
        tokenizer = encoder_tokenizer() if unit == "tokens" else None
        if unit == "tokens" and tokenizer is None:
            # No MiniLM tokenizer on this machine: words, at half the budget (a word is at least one token, and
            # English text averages about 1.3), so chunks still fit the encoder.
            chunk, overlap = max(chunk // 2, 1), overlap // 2
        passages = _read_folder(path, chunk, overlap, tokenizer)
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
    """The format of ``format="auto"``: decided by the file's name and first non-blank character only, never by
    whether its JSON parses (a malformed JSON line must be an error naming it, not a reason to read the file as
    one passage per line)."""
    if path.is_dir():
        return "folder"
    if path.suffix.lower() in (".jsonl", ".json"):
        return "jsonl"
    text = read_text(path)
    first = text.lstrip()[:1]
    return "jsonl" if first == "{" else "lines"


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


def _read_folder(root: Path, chunk: int, overlap: int, tokenizer: Any) -> list[Passage]:
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
        for n, (start, end) in enumerate(chunk_spans(text, chunk, overlap, tokenizer=tokenizer)):
            passages.append(Passage(id=f"{rel}#{n}", title=title, text=text[start:end], source=str(file),
                                    meta={"path": rel, "start": start, "end": end}))
    return passages


def encoder_tokenizer() -> Any:
    """The default dense encoder's tokenizer (all-MiniLM-L6-v2's ``tokenizer.json``), without truncation.

    From the packaged model (the ``train`` extra), else from a cached export of it (:func:`kardlite.kb.encoder.
    cache_dir`); None when neither is on this machine.
    """
    from tokenizers import Tokenizer

    from kardlite.errors import MissingExtraError
    from kardlite.kb.encoder import PACKAGED, cache_dir, packaged_model_dir

    try:
        path = packaged_model_dir() / "tokenizer.json"
    except MissingExtraError:
        found = [f.parent / "tokenizer.json" for f in sorted((cache_dir() / "encoders").glob("*/encoder.json"))
                 if str(_read_json_safe(f).get("source", "")).startswith(PACKAGED)]
        if not found or not found[0].is_file():
            return None
        path = found[0]
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    tok.no_padding()
    return tok


def _read_json_safe(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _atoms(text: str, para: re.Match[str], chunk: int, token_starts: list[int] | None) -> list[tuple[int, int, int]]:
    """(start, end, size) of each word of a paragraph: 1, or its tokens; a word over ``chunk`` tokens is cut at token
    boundaries into pieces that fit."""
    out = []
    for m in _WORD.finditer(para.group()):
        start, end = m.start() + para.start(), m.end() + para.start()
        if token_starts is None:
            out.append((start, end, 1))
            continue
        lo, hi = bisect.bisect_left(token_starts, start), bisect.bisect_left(token_starts, end)
        for i in range(lo, max(hi, lo + 1), chunk):
            piece_end = token_starts[i + chunk] if i + chunk < hi else end
            out.append((start if i == lo else token_starts[i], piece_end, max(min(chunk, hi - i), 1)))
    return out


def chunk_spans(text: str, chunk_words: int, overlap_words: int, *, tokenizer: Any = None) -> list[tuple[int, int]]:
    """Character spans of the chunks of one document (paragraph-aware; see ``read_passages``).

    Args:
        text: the document.
        chunk_words: the most words per chunk, or tokens when ``tokenizer`` is given.
        overlap_words: words (tokens) repeated from the end of one chunk at the start of the next.
        tokenizer: a ``tokenizers.Tokenizer`` that sizes chunks in its tokens (no special tokens); None = words.

    Returns:
        (start, end) offsets into ``text``; each chunk is ``text[start:end]`` and has no edge whitespace.
    """
    starts = None
    if tokenizer is not None:
        starts = [s for s, e in tokenizer.encode(text, add_special_tokens=False).offsets if e > s]
    # Units: whole paragraphs, or windows of the words of a paragraph longer than a chunk.
    units: list[tuple[int, int, int]] = []  # (start, end, size)
    for para in _PARAGRAPH.finditer(text):
        atoms = _atoms(text, para, chunk_words, starts)
        if not atoms:
            continue
        total = sum(a[2] for a in atoms)
        if total <= chunk_words:
            units.append((para.start(), para.end(), total))
            continue
        i = 0
        while i < len(atoms):
            j, size = i, 0
            while j < len(atoms) and size + atoms[j][2] <= chunk_words:
                size += atoms[j][2]
                j += 1
            units.append((atoms[i][0], atoms[j - 1][1], size))
            if j >= len(atoms):
                break
            back, carried = j, 0  # the next window repeats trailing words up to the overlap, and moves on
            while back - 1 > i and carried + atoms[back - 1][2] <= overlap_words:
                back -= 1
                carried += atoms[back][2]
            i = back
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
