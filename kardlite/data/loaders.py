"""Loaders for the published task formats, each producing a list of QAItem.

Every loader is strict: a malformed line, a missing field, a wrong option count or an out-of-range
label raises InputError naming the file, line and field, and nothing is returned half-loaded. Nothing is
dropped or converted silently: ids are strings or integers (surrounding whitespace stripped), never floats,
booleans or lists; every option column counts; an answer index is ASCII digits.
"""

from __future__ import annotations

import csv
import io
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from kardlite._io import iter_jsonl, read_json, read_text
from kardlite.data.records import LETTERS, MAX_OPTIONS, QAItem
from kardlite.errors import InputError

TaskFormat = Literal["auto", "obqa", "strategyqa", "medqa", "medqa-hf", "generic"]
# An answer index written as text: ASCII digits only (str.isdigit also accepts "²" and "①", which int() refuses),
# and few of them (no task has 1,000 options; int() refuses 4,300 digits and more).
_INDEX = re.compile(r"[0-9]{1,3}")


def _require(obj: dict[str, Any], key: str, path: Path, line: int | None, kind: type | tuple[type, ...] = str) -> Any:
    if key not in obj:
        raise InputError("missing", path=path, line=line, field=key)
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputError(f"expected {names}, got {type(value).__name__}", path=path, line=line, field=key)
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise InputError(f"expected {kind.__name__ if isinstance(kind, type) else 'text'}, got bool", path=path,
                         line=line, field=key)
    if isinstance(value, str):
        if not value.strip():
            raise InputError("empty", path=path, line=line, field=key)
        _check_text(value, path, line, key)
    return value


def _check_text(value: str, path: Path, line: int | None, field: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate, e.g. JSON "\ud800": cannot be tokenised or stored
        raise InputError(f"not valid Unicode: a lone surrogate at character {err.start}", path=path, line=line,
                         field=field) from None


def _item_id(obj: dict[str, Any], path: Path, line: int | None, default: str) -> str:
    """An optional ``id``: a non-empty string or an integer; missing or null gives ``default``."""
    value = obj.get("id")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"expected a string or an integer, got {type(value).__name__}", path=path, line=line,
                         field="id")
    text = str(value).strip()
    if not text:
        raise InputError("empty", path=path, line=line, field="id")
    _check_text(text, path, line, "id")
    return text


def _check_options(options: list[str], path: Path, line: int | None, field: str = "options") -> tuple[str, ...]:
    if not 2 <= len(options) <= MAX_OPTIONS:
        raise InputError(f"{len(options)} options, expected 2 to {MAX_OPTIONS}", path=path, line=line, field=field)
    for i, opt in enumerate(options):
        if not isinstance(opt, str) or not opt.strip():
            raise InputError(f"option {i} is empty or not text", path=path, line=line, field=field)
        _check_text(opt, path, line, field)
    return tuple(opt.strip() for opt in options)


def _resolve_answer(answer: Any, options: tuple[str, ...], path: Path, line: int | None, field: str) -> int:
    """An answer given as a letter ('C'), a 0-based index (2) or the option's own text."""
    if isinstance(answer, bool):
        raise InputError("a boolean is not an answer here", path=path, line=line, field=field)
    if isinstance(answer, int) or (isinstance(answer, str) and _INDEX.fullmatch(answer.strip())):
        index = int(answer)
        if not 0 <= index < len(options):
            raise InputError(f"label {index} out of range for {len(options)} options", path=path, line=line,
                             field=field)
        return index
    if isinstance(answer, str):
        text = answer.strip()
        if len(text) == 1 and text.upper() in LETTERS:
            index = LETTERS.index(text.upper())
            if index >= len(options):
                raise InputError(f"answer letter {text!r} out of range for {len(options)} options", path=path,
                                 line=line, field=field)
            return index
        matches = [i for i, opt in enumerate(options) if opt.casefold() == text.casefold()]
        if len(matches) == 1:
            return matches[0]
        raise InputError(f"answer {text!r} is neither a letter, an index nor one option's text", path=path,
                         line=line, field=field)
    raise InputError(f"unreadable answer {answer!r}", path=path, line=line, field=field)


def _unique(items: list[QAItem], path: Path) -> list[QAItem]:
    if not items:
        raise InputError("no questions in file", path=path)
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise InputError(f"duplicate id {item.id!r}", path=path, field="id")
        seen.add(item.id)
    return items


def load_obqa(path: str | Path) -> list[QAItem]:
    """OpenBookQA JSONL (Main or Additional). ``fact1``, ``humanScore`` and ``clarity`` go to ``meta``."""
    path = Path(path)
    items = []
    for line, obj in iter_jsonl(path):
        qid = _require(obj, "id", path, line).strip()
        q = _require(obj, "question", path, line, dict)
        stem = _require(q, "stem", path, line)
        choices = _require(q, "choices", path, line, list)
        for i, c in enumerate(choices):
            if not isinstance(c, dict) or "text" not in c:
                raise InputError(f"choice {i} has no 'text'", path=path, line=line, field="question.choices")
        options = _check_options([c["text"] for c in choices], path, line, "question.choices")
        labels = [c.get("label", LETTERS[i]) for i, c in enumerate(choices)]
        if not all(isinstance(label, str) for label in labels) or len(set(labels)) != len(labels):
            raise InputError(f"choice labels {labels} are not distinct strings", path=path, line=line,
                             field="question.choices")
        key = _require(obj, "answerKey", path, line)
        if key not in labels:
            raise InputError(f"answerKey {key!r} is not one of the choice labels {labels}", path=path, line=line,
                             field="answerKey")
        meta = {k: obj[k] for k in ("fact1", "humanScore", "clarity") if k in obj}
        items.append(QAItem(id=qid, question=stem.strip(), options=options, label=labels.index(key), meta=meta))
    return _unique(items, path)


def load_strategyqa(path: str | Path, *, split: Literal["train", "test", "all"] = "all",
                    split_file: str | Path | None = None, seed: int = 42, train_fraction: float = 0.7) -> list[QAItem]:
    """StrategyQA's official JSON list. Options are ("yes", "no"); A = yes.

    Only the official train set has labels, so the paper splits it 7:3. Ours: sort the qids, shuffle them
    with ``random.Random(seed)``, the first ``round(train_fraction * n)`` are train. ``split_file`` (JSON
    ``{"train": [qid...], "test": [qid...]}``) overrides that with a split of your own.
    """
    path = Path(path)
    rows = read_json(path)
    if not isinstance(rows, list):
        raise InputError(f"expected a JSON list of questions, got {type(rows).__name__}", path=path)
    items = []
    for i, obj in enumerate(rows):
        where = i + 1  # position in the list stands in for a line number
        if not isinstance(obj, dict):
            raise InputError("expected an object", path=path, line=where)
        qid = _require(obj, "qid", path, where).strip()
        question = _require(obj, "question", path, where)
        answer = obj.get("answer")
        if answer is not None and not isinstance(answer, bool):
            raise InputError(f"expected true/false, got {answer!r}", path=path, line=where, field="answer")
        meta = {k: obj[k] for k in ("term", "description", "facts", "decomposition") if k in obj}
        items.append(QAItem(id=qid, question=question.strip(), options=("yes", "no"),
                            label=None if answer is None else (0 if answer else 1), meta=meta))
    items = _unique(items, path)
    if split == "all":
        return items
    if split_file is not None:
        spec = read_json(split_file)
        if not isinstance(spec, dict) or split not in spec:
            raise InputError(f"split file has no '{split}' list", path=split_file, field=split)
        if not isinstance(spec[split], list) or not all(isinstance(q, str) for q in spec[split]):
            raise InputError("expected a list of qids (strings)", path=split_file, field=split)
        wanted = set(spec[split])
        unknown = wanted - {it.id for it in items}
        if unknown:
            raise InputError(f"{len(unknown)} qids not in {path.name}, e.g. {sorted(unknown)[0]!r}", path=split_file,
                             field=split)
        return [it for it in items if it.id in wanted]
    qids = sorted(it.id for it in items)
    random.Random(seed).shuffle(qids)
    train_ids = set(qids[: round(train_fraction * len(qids))])
    return [it for it in items if (it.id in train_ids) == (split == "train")]


def load_medqa(path: str | Path) -> list[QAItem]:
    """MedQA-USMLE JSONL: ``{"question", "options": {"A": ..}, "answer_idx"}``; ids are ``<file stem>-<line>``."""
    path = Path(path)
    items = []
    for line, obj in iter_jsonl(path):
        question = _require(obj, "question", path, line)
        opts = _require(obj, "options", path, line, dict)
        keys = sorted(opts)
        if keys != list(LETTERS[: len(keys)]):
            raise InputError(f"option keys {keys} are not consecutive letters from A", path=path, line=line,
                             field="options")
        options = _check_options([opts[k] for k in keys], path, line)
        label = _resolve_answer(_require(obj, "answer_idx", path, line), options, path, line, "answer_idx")
        qid = _item_id(obj, path, line, f"{path.stem}-{line}")
        meta = {k: obj[k] for k in ("meta_info",) if k in obj}
        items.append(QAItem(id=qid, question=question.strip(), options=options, label=label, meta=meta))
    return _unique(items, path)


def load_medqa_hf(path: str | Path) -> list[QAItem]:
    """The SWAG-style layout of MedQA: ``{"id", "sent1", ["sent2"], "ending0".."endingN", "label"}``."""
    path = Path(path)
    items = []
    for line, obj in iter_jsonl(path):
        stem = _require(obj, "sent1", path, line)
        if obj.get("sent2") is not None and obj.get("sent2") != "":
            stem = f"{stem} {_require(obj, 'sent2', path, line)}"
        endings = []
        while f"ending{len(endings)}" in obj:
            endings.append(obj[f"ending{len(endings)}"])
        if not endings:
            raise InputError("missing", path=path, line=line, field="ending0")
        options = _check_options(endings, path, line, "ending0")
        label = _resolve_answer(_require(obj, "label", path, line, (int, str)), options, path, line, "label")
        qid = _item_id(obj, path, line, f"{path.stem}-{line}")
        items.append(QAItem(id=qid, question=stem.strip(), options=options, label=label))
    return _unique(items, path)


def _generic_row(obj: dict[str, Any], path: Path, line: int, auto_id: str) -> QAItem:
    question = _require(obj, "question", path, line)
    if "options" in obj and obj["options"] not in (None, ""):
        raw = obj["options"]
        if isinstance(raw, str):  # a CSV cell may hold the list as "a|b|c"
            raw = raw.split("|")
        if not isinstance(raw, list):
            raise InputError(f"expected a list, got {type(raw).__name__}", path=path, line=line, field="options")
        options = _check_options(raw, path, line)
    else:
        options = _option_columns(obj, path, line)
    field = "answer" if "answer" in obj else "label"
    if field not in obj or obj[field] in (None, ""):
        label = None
    else:
        label = _resolve_answer(obj[field], options, path, line, field)
    meta = {k: v for k, v in obj.items() if k not in {"id", "question", "options", "answer", "label"}
            and not (len(k) == 1 and k.upper() in LETTERS)}
    # An empty id cell (CSV) means "no id" like a missing one.
    qid = auto_id if obj.get("id") == "" else _item_id(obj, path, line, auto_id)
    return QAItem(id=qid, question=question.strip(), options=options, label=label, meta=meta)


def _option_columns(obj: dict[str, Any], path: Path, line: int) -> tuple[str, ...]:
    """Options given as one column per letter (A, B, ... in either case). Every letter column counts: a filled
    column after an empty one, or past the last supported letter, is an error, never a silently dropped option."""
    filled: dict[int, Any] = {}
    for key, value in obj.items():
        if len(key) == 1 and key.upper() in LETTERS and value not in (None, ""):
            index = LETTERS.index(key.upper())
            if index in filled:
                raise InputError(f"option {key.upper()} is given twice (columns {key.upper()} and {key.lower()})",
                                 path=path, line=line, field=key)
            filled[index] = value
    if not filled:
        raise InputError("missing (give 'options' as a list, or columns A, B, C...)", path=path, line=line,
                         field="options")
    last = max(filled)
    if last >= MAX_OPTIONS:
        raise InputError(f"option column {LETTERS[last]} is past {LETTERS[MAX_OPTIONS - 1]}: at most {MAX_OPTIONS} "
                         "options are supported", path=path, line=line, field=LETTERS[last])
    gaps = [LETTERS[i] for i in range(last) if i not in filled]
    if gaps:
        raise InputError(f"option {gaps[0]} is empty but a later option ({LETTERS[last]}) is given", path=path,
                         line=line, field=gaps[0])
    return _check_options([filled[i] for i in range(last + 1)], path, line, "A..")


def load_generic(path: str | Path) -> list[QAItem]:
    """Your own task as JSONL or CSV: ``question``, ``options`` (a list, or columns A-E), ``answer``
    (letter, 0-based index or option text; ``label`` is accepted too), optional ``id``. Other fields go to meta.
    """
    path = Path(path)
    items = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        try:
            if not reader.fieldnames or "question" not in reader.fieldnames:
                raise InputError("CSV header has no 'question' column", path=path, line=1, field="question")
            if len(set(reader.fieldnames)) != len(reader.fieldnames):
                raise InputError(f"CSV header repeats a column name: {reader.fieldnames}", path=path, line=1)
            for row_no, row in enumerate(reader, start=2):
                if None in row:
                    raise InputError("more cells than header columns", path=path, line=row_no)
                items.append(_generic_row(dict(row), path, row_no, f"{path.stem}-{row_no}"))
        except csv.Error as err:  # e.g. a cell over the csv module's 131,072-character limit
            # line_num counts the lines read before the one that failed
            raise InputError(f"unreadable CSV ({err})", path=path, line=reader.line_num + 1) from None
    else:
        for line, obj in iter_jsonl(path):
            items.append(_generic_row(obj, path, line, f"{path.stem}-{line}"))
    return _unique(items, path)


_LOADERS: dict[str, Callable[..., list[QAItem]]] = {
    "obqa": load_obqa, "strategyqa": load_strategyqa, "medqa": load_medqa, "medqa-hf": load_medqa_hf,
    "generic": load_generic,
}


def _sniff(path: Path) -> str:
    if path.suffix.lower() == ".csv":
        return "generic"
    if path.suffix.lower() == ".json":
        return "strategyqa"
    for _, obj in iter_jsonl(path):
        if isinstance(obj.get("question"), dict) and "answerKey" in obj:
            return "obqa"
        if "sent1" in obj:
            return "medqa-hf"
        if isinstance(obj.get("options"), dict) and "answer_idx" in obj:
            return "medqa"
        return "generic"
    raise InputError("no questions in file", path=path)


def load_task(path: str | Path, format: TaskFormat = "auto", **kwargs: Any) -> list[QAItem]:
    """Load questions from any supported format.

    Args:
        path: the task file.
        format: one of ``obqa``, ``strategyqa``, ``medqa``, ``medqa-hf``, ``generic``; ``auto`` guesses from
            the extension and the first record.
        **kwargs: passed to the format's loader (e.g. ``split="train"`` for StrategyQA).

    Returns:
        The questions, in file order.

    Example:
        >>> items = load_task("obqa/Additional/dev_complete.jsonl")  # doctest: +SKIP
        >>> items[0].linearize().splitlines()[1]  # doctest: +SKIP
        'A. Deep sea animals'
    """
    path = Path(path)
    name = _sniff(path) if format == "auto" else format
    if name not in _LOADERS:
        raise InputError(f"unknown task format {format!r}; choose from {sorted(_LOADERS)} or 'auto'", field="format")
    return _LOADERS[name](path, **kwargs)
