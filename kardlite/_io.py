"""File helpers shared by every stage: strict JSONL reading, atomic writes, append-only logs."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kardlite.errors import InputError


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file; undecodable bytes and unreadable files become InputError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a file", path=path) from None
    except OSError as err:
        raise InputError(f"cannot read file ({err.strerror})", path=path) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(f"not valid UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start})",
                         path=path, line=line) from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line, streaming; a ``.gz`` file is read decompressed.

    A malformed line, undecodable bytes, a truncated archive or an unreadable file is an InputError.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    offset = 0
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    raise InputError(f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {offset + err.start})",
                                     path=path, line=lineno) from None
                offset += len(raw)
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(f"malformed JSON ({err.msg} at column {err.colno})", path=path,
                                     line=lineno) from None
                except (ValueError, RecursionError) as err:  # a number over 4,300 digits; nesting too deep
                    raise InputError(f"unreadable JSON ({_json_problem(err)})", path=path, line=lineno) from None
                if not isinstance(obj, dict):
                    raise InputError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno)
                yield lineno, obj
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a file", path=path) from None
    except (OSError, EOFError) as err:  # includes gzip.BadGzipFile and a truncated archive
        raise InputError(f"cannot read file ({getattr(err, 'strerror', None) or err})", path=path) from None


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json.loads``: an object with a key twice is a ValueError, not "last one wins"
    (two readers of the same file could otherwise disagree on what it says)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def read_json(path: str | Path) -> Any:
    """Read a JSON file; malformed JSON, a duplicate key, an undecodable or unreadable file is an InputError."""
    try:
        return json.loads(read_text(path), object_pairs_hook=unique_keys)
    except json.JSONDecodeError as err:
        raise InputError(f"malformed JSON ({err.msg})", path=path, line=err.lineno) from None
    except (ValueError, RecursionError) as err:
        raise InputError(f"unreadable JSON ({_json_problem(err)})", path=path) from None


def _json_problem(err: Exception) -> str:
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return str(err).split(";")[0]  # "Exceeds the limit (4300 digits) for integer string conversion"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text so that readers see the old file or the new one, never half of it."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes so that readers see the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write all rows atomically; returns the row count."""
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


@contextlib.contextmanager
def atomic_dir(final: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Build a directory under a temporary name beside `final`, then swap it in with a rename.

    A crash leaves the previous directory untouched (and a `.tmp` sibling that the next build removes).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
    # A killed build leaves its temp folder behind; sweep those before starting a new one.
    for stale in final.parent.glob(f".{final.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def work_dir(beside: str | Path) -> Iterator[Path]:
    """A scratch folder for building ``beside``: in the same parent folder (same disk, no /tmp), removed at the end.

    Named ``.<name>.work.<random>.tmp``: the ones a killed run left behind are swept by the next ``work_dir`` and
    ``atomic_dir`` for the same name, so an interrupted export (hundreds of MB) does not stay on disk for ever.
    """
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    for stale in beside.parent.glob(f".{beside.name}.work.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=beside.parent, prefix=f".{beside.name}.work.", suffix=".tmp"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
