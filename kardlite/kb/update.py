"""Knowledge-base updates without retraining: add passages, remove passages, on a KB folder or inside a bundle.

An update embeds only the new passages (the KB's own encoder), appends them to SQLite and to the HNSW graph,
rebuilds BM25 (its statistics are global: every idf moves when the corpus does; re-tokenising 20,000 short
passages takes about a second), and marks removed passages deleted: their rows leave SQLite, their HNSW nodes are
marked deleted and their BM25 documents become empty, so row n stays document n of every index. In a bundle the
late-interaction reranker's passage cache gains only the new passages' matrices and the manifest is re-hashed.
Neither the student nor the reranker is retrained.

Atomic: the updated folder is written beside the old one (unchanged files hard-linked, never written to), then
the two are swapped with one ``renameat2(RENAME_EXCHANGE)`` call, so a process killed at any moment leaves the old
folder or the new one, never a mix. Where the kernel or file system has no exchange (not Linux), two renames are
used and :func:`recover` (run by every update) puts the old folder back if a kill fell between them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from kardlite._io import atomic_write_json, read_json, sha256_file, work_dir
from kardlite.errors import ArtifactError, InputError
from kardlite.kb.passage import Passage

_KB_FILES_CHANGED = ("passages.sqlite", "bm25", "hnsw.bin", "manifest.json")


class UpdateReport(TypedDict):
    """What an update did."""

    path: str
    added: int
    removed: int
    passages: int        # live passages after the update
    encoded: int         # passages embedded (dense encoder); the reranker cache encodes as many
    seconds: float


# --------------------------------------------------------------------------------------------------- public API
def add_passages(path: str | Path, passages: Iterable[Passage], *, progress: bool = False) -> UpdateReport:
    """Add passages to a knowledge-base folder or to a bundle's KB (the path decides), atomically.

    Args:
        path: a KB folder (``KnowledgeBase.build``) or a bundle folder (``export_bundle``).
        passages: new passages; ids must be new and texts non-empty.
        progress: show the encoder's progress bar.

    Returns:
        An :class:`UpdateReport`.

    Raises:
        InputError: no passages, an id already in the KB or repeated, an empty text.
        ArtifactError: the folder is not a (valid) KB or bundle.
    """
    return update(path, add=list(passages), remove=(), progress=progress)


def remove_passages(path: str | Path, ids: Sequence[str]) -> UpdateReport:
    """Remove passages by id from a knowledge-base folder or a bundle's KB, atomically (marked deleted).

    Raises:
        InputError: no ids, or an id that is not in the KB.
    """
    if isinstance(ids, str):
        raise InputError("expected a list of ids, got one string", field="ids")
    return update(path, add=(), remove=list(ids))


def update(path: str | Path, *, add: Sequence[Passage] = (), remove: Sequence[str] = (),
           progress: bool = False) -> UpdateReport:
    """Remove ``remove`` then add ``add`` in one atomic update of a KB folder or a bundle (see the module doc)."""
    given, path = Path(path), _resolved(path)
    started = time.perf_counter()
    if not add and not remove:
        raise InputError("nothing to update: give passages to add or ids to remove")
    with _exclusive(path):
        recover(path)
        if not path.is_dir():
            raise ArtifactError(f"{path}: no such knowledge base or bundle folder")
        bundle = _is_bundle(path)
        with work_dir(path) as tmp:  # swept of any a killed update left (we hold the lock)
            if bundle:
                counts = _update_bundle(path, tmp, list(add), list(remove), progress)
            else:
                _link_tree(path, tmp, skip=_KB_FILES_CHANGED)
                counts = _update_kb(path, tmp, list(add), list(remove), progress)
            _swap(tmp, path)
    return UpdateReport(path=str(given), added=len(add), removed=len(remove), passages=counts["passages"],
                        encoded=counts["encoded"], seconds=round(time.perf_counter() - started, 3))


def rewrite_folder(path: str | Path, edit: Callable[[Path, Path], Any], *, skip: Iterable[str] = ()) -> Any:
    """Change a folder atomically: ``edit(old, new)`` writes the changed files into ``new``, which already holds
    hard links of every file of ``old`` except ``skip`` (relative paths); then ``new`` is swapped in.

    ``edit`` must replace a linked file (write a new file, e.g. ``atomic_write_json``), never write into one.

    Returns:
        What ``edit`` returned.
    """
    path = _resolved(path)
    with _exclusive(path):
        recover(path)
        if not path.is_dir():
            raise ArtifactError(f"{path}: no such folder")
        with work_dir(path) as tmp:  # swept of any a killed update left (we hold the lock)
            _link_tree(path, tmp, skip=skip)
            result = edit(path, tmp)
            _swap(tmp, path)
    return result


def recover(path: str | Path) -> bool:
    """Finish an update that was killed between its two renames (systems without an atomic exchange).

    Returns:
        True when the old folder was put back in place.
    """
    path = Path(path)
    old = _old_name(path)
    if not path.exists() and old.is_dir():
        os.replace(old, path)
        return True
    return False


# ---------------------------------------------------------------------------------------------------- the KB
def _update_kb(src: Path, dst: Path, add: list[Passage], remove: list[str], progress: bool) -> dict[str, int]:
    """Write the updated KB of ``src`` into ``dst`` (which already holds hard links of the unchanged files)."""
    from kardlite.kb import bm25 as _bm25
    from kardlite.kb import hnsw as _hnsw
    from kardlite.kb import store as _store
    from kardlite.kb.base import MANIFEST, SCHEMA_VERSION, _files, _verify
    from kardlite.kb.config import KBConfig

    # Checked like KnowledgeBase.load(verify=True) (never extend a corrupt KB), without building the search
    # objects (an ONNX session, BM25 arrays) that the update does not use.
    try:
        manifest = read_json(src / MANIFEST)
        if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
            raise ValueError("not a knowledge base of this schema version")
        _verify(src, manifest["files"])
        config = KBConfig.from_dict(manifest["config"])
        rows_before = int(manifest["counts"].get("rows", manifest["counts"]["passages"]))
    except (InputError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ArtifactError(f"{src}: not a valid knowledge base ({err})") from None
    store = _store.PassageStore(src / _store.FILENAME)
    try:
        existing = {p.id for p in add if _known(store, p.id)}
        removing = set(remove)
        if len(removing) != len(remove):
            raise InputError("an id is repeated in the removal list", field="ids")
        remove_rows = store.rows_of(list(remove)) if remove else []  # unknown ids are an InputError
    finally:
        store.close()
    _check_new(add, existing - removing)

    # SQLite: a copy (the old file stays as it was), new rows appended after the last row ever used
    shutil.copyfile(src / _store.FILENAME, dst / _store.FILENAME)
    con = sqlite3.connect(dst / _store.FILENAME)
    try:
        if remove_rows:
            con.executemany("DELETE FROM passages WHERE row = ?", [(r,) for r in remove_rows])
        new_rows = list(range(rows_before, rows_before + len(add)))
        con.executemany("INSERT INTO passages VALUES (?, ?, ?, ?, ?, ?)",
                        [(r, p.id, p.title, p.text, p.source, _meta_json(p)) for r, p in zip(new_rows, add,
                                                                                             strict=True)])
        con.commit()
        live = con.execute("SELECT COUNT(*) FROM passages").fetchone()[0]
        if live == 0:
            raise InputError("the update would remove every passage; build a new knowledge base instead", field="ids")
        contents = [""] * (rows_before + len(add))
        for row, title, text in con.execute("SELECT row, title, text FROM passages"):
            contents[row] = f"{title}. {text}" if title else text  # Passage.contents
    finally:
        con.close()
    rows_after = len(contents)

    # BM25: rebuilt over every row; a deleted row is an empty document, so it never scores
    tick = time.perf_counter()
    _bm25.BM25Index.build(contents, config.bm25, progress=False).save(dst / _bm25.DIRNAME)
    bm25_s = time.perf_counter() - tick

    encoded = 0
    if config.dense is not None:
        import hnswlib

        from kardlite.kb import encoder as _encoder

        tick = time.perf_counter()
        encoder = _encoder.Encoder(src / _encoder.DIRNAME)
        index = hnswlib.Index(space="cosine", dim=encoder.dim)
        index.load_index(str(src / _hnsw.FILENAME), max_elements=max(1, rows_after))
        if add:
            vectors = encoder.encode([p.contents for p in add], batch_size=config.dense.batch_size,
                                     progress=progress)
            index.add_items(vectors, new_rows)
            encoded = len(add)
        for r in remove_rows:
            index.mark_deleted(r)
        index.save_index(str(dst / _hnsw.FILENAME))
        dense_s = time.perf_counter() - tick
    else:
        dense_s = 0.0

    counts = dict(manifest["counts"], passages=live, rows=rows_after, deleted=rows_after - live)
    history = list(manifest.get("updates", []))
    history.append({"time": datetime.now(UTC).isoformat(timespec="seconds"), "added": len(add),
                    "removed": len(remove), "bm25_s": round(bm25_s, 3), "dense_s": round(dense_s, 3)})
    manifest.update(counts=counts, updates=history[-100:])
    manifest["files"] = {rel: {"sha256": sha256_file(dst / rel), "bytes": (dst / rel).stat().st_size}
                         for rel in _files(dst)}
    atomic_write_json(dst / MANIFEST, manifest)
    return {"passages": live, "encoded": encoded}


def _known(store: Any, pid: str) -> bool:
    try:
        store.rows_of([pid])
    except InputError:
        return False
    return True


def _check_new(add: list[Passage], existing: set[str]) -> None:
    seen: set[str] = set()
    for n, p in enumerate(add):
        if not isinstance(p, Passage):
            raise InputError(f"passage {n} is a {type(p).__name__}, expected Passage")
        if p.id in existing or p.id in seen:
            raise InputError(f"passage id {p.id!r} is already in the knowledge base" if p.id in existing
                             else f"duplicate passage id {p.id!r}", path=p.source or None, field="id")
        if not p.text.strip():
            raise InputError(f"passage {p.id!r} has an empty text", path=p.source or None, field="text")
        seen.add(p.id)


def _meta_json(p: Passage) -> str:
    import json

    try:
        return json.dumps(p.meta, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise InputError(f"passage {p.id!r}: meta is not JSON-serialisable ({err})", field="meta") from None


# ------------------------------------------------------------------------------------------------ the bundle
def _is_bundle(path: Path) -> bool:
    from kardlite.bundle_format import KIND, MANIFEST

    try:
        return (path / MANIFEST).is_file() and read_json(path / MANIFEST).get("kind") == KIND
    except (InputError, AttributeError):
        return False


def _update_bundle(src: Path, dst: Path, add: list[Passage], remove: list[str], progress: bool) -> dict[str, int]:
    from kardlite.bundle_format import KB_DIR, read_manifest, seal_bundle, verify_bundle

    manifest = read_manifest(src)
    verify_bundle(src, manifest)
    retrieval = manifest.get("retrieval") or {}
    kb_rel = retrieval.get("kb", KB_DIR)
    kb_changed = tuple(f"{kb_rel}/{name}" for name in _KB_FILES_CHANGED)
    rr = retrieval.get("reranker") or {}
    cache_rel = f"{rr['dir']}/{rr['passage_cache']}" if rr.get("passage_cache") else None
    _link_tree(src, dst, skip=kb_changed + ((cache_rel,) if cache_rel else ()) + ("manifest.json",))
    counts = _update_kb(src / kb_rel, dst / kb_rel, add, remove, progress)
    if cache_rel:
        from kardlite.kb import KnowledgeBase
        from kardlite.rerank import Reranker

        reranker = Reranker.load(src / rr["dir"], backend="onnx")
        kb = KnowledgeBase.load(dst / kb_rel, verify=False)
        try:
            reranker.extend_passage_cache(src / cache_rel, dst / cache_rel, add, keep=kb)  # type: ignore[attr-defined]
        finally:
            kb.close()
    manifest.setdefault("kb_updates", []).append({"time": datetime.now(UTC).isoformat(timespec="seconds"),
                                                  "added": len(add), "removed": len(remove),
                                                  "passages": counts["passages"]})
    seal_bundle(dst, manifest)
    return counts


# ------------------------------------------------------------------------------------------ atomic machinery
def _resolved(path: str | Path) -> Path:
    """The real folder behind ``path``: an update through a symbolic link (``links/alias`` -> a bundle) changes the
    link's target in place and leaves the link a link; the scratch folder, the swap and the lock all use the
    target's own name, so two aliases of one folder take the same lock."""
    return Path(os.path.realpath(path))


def _old_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.update-old")


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One updater at a time per folder (a lock file beside it; POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.update-lock"), "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _link_tree(src: Path, dst: Path, *, skip: Iterable[str]) -> None:
    """Mirror ``src`` into ``dst`` with hard links (copies where links fail), leaving out ``skip`` paths."""
    skipped = set(skip)
    for root, dirs, files in os.walk(src):
        rel_root = Path(root).relative_to(src)
        dirs[:] = [d for d in dirs if (rel_root / d).as_posix() not in skipped]
        (dst / rel_root).mkdir(parents=True, exist_ok=True)
        for name in files:
            rel = (rel_root / name).as_posix()
            if rel in skipped or os.path.islink(Path(root) / name):
                continue
            try:
                os.link(Path(root) / name, dst / rel)
            except OSError:
                shutil.copy2(Path(root) / name, dst / rel)


def _swap(tmp: Path, path: Path) -> None:
    """Put the folder ``tmp`` at ``path`` in one step; the old folder ends up at ``tmp`` (deleted by the caller)."""
    if _exchange(tmp, path):
        _fsync_dir(path.parent)
        return
    old = _old_name(path)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)  # a kill here leaves only `old`: recover() moves it back
    os.replace(tmp, path)
    os.replace(old, tmp)
    _fsync_dir(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
