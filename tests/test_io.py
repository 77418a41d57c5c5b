from __future__ import annotations

from pathlib import Path

import pytest

from kardlite._io import atomic_dir, atomic_write_json, read_json
from kardlite.errors import InputError


def test_atomic_dir_keeps_old_on_error_and_sweeps_stale_temp(tmp_path: Path) -> None:
    final = tmp_path / "index"
    with atomic_dir(final) as tmp:
        atomic_write_json(tmp / "a.json", {"v": 1})
    with pytest.raises(RuntimeError, match="crash mid-build"), atomic_dir(final) as tmp:
        atomic_write_json(tmp / "a.json", {"v": 2})
        raise RuntimeError("crash mid-build")
    assert read_json(final / "a.json") == {"v": 1}
    stale = tmp_path / ".index.abc123.tmp"  # what a SIGKILLed build leaves
    stale.mkdir()
    with atomic_dir(final) as tmp:
        atomic_write_json(tmp / "a.json", {"v": 3})
    assert read_json(final / "a.json") == {"v": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_iter_jsonl_reads_gzip_and_names_a_truncated_archive(tmp_path: Path) -> None:
    import gzip

    from kardlite._io import iter_jsonl
    from kardlite.errors import InputError

    path = tmp_path / "rows.jsonl.gz"
    payload = b'{"a": 1}\n\n' + b'{"a": 2}\n' * 2000
    path.write_bytes(gzip.compress(payload))
    rows = list(iter_jsonl(path))
    assert rows[0] == (1, {"a": 1}) and rows[1] == (3, {"a": 2}) and len(rows) == 2001
    path.write_bytes(gzip.compress(payload)[:-40])
    with pytest.raises(InputError, match="cannot read file") as err:
        list(iter_jsonl(path))
    assert err.value.path == str(path)


def test_work_dir_lives_beside_its_destination_and_stale_ones_are_swept(tmp_path: Path) -> None:
    """An export killed mid-way (the KB encoder's ~100 MB scratch) leaves nothing that the next run does not sweep."""
    from kardlite._io import work_dir

    dest = tmp_path / "kb" / "encoder"
    stale = tmp_path / "kb" / ".encoder.work.killed.tmp"
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"x" * 1000)
    with work_dir(dest) as work:
        assert work.parent == dest.parent and work.name.startswith(".encoder.work.") and not stale.exists()
        (work / "f").write_text("x")
    assert not work.exists()
    # A killed KB build leaves its temp folder, the encoder scratch inside it: the next build of the KB sweeps both.
    killed = tmp_path / ".kb.killed.tmp" / "encoder" / ".encoder.work.x.tmp"
    killed.mkdir(parents=True)
    with atomic_dir(tmp_path / "kb") as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert not (tmp_path / ".kb.killed.tmp").exists() and (tmp_path / "kb" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb"]


def test_read_json_refuses_a_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"a": 1, "b": {"c": 2, "c": 3}}')
    with pytest.raises(InputError, match=r"m\.json: unreadable JSON \(duplicate key 'c'\)"):
        read_json(path)
    path.write_text('{"a": 1, "b": {"c": 2}, "d": [{"c": 3}]}')  # the same key in different objects is fine
    assert read_json(path) == {"a": 1, "b": {"c": 2}, "d": [{"c": 3}]}
