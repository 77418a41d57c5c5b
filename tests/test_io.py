from __future__ import annotations

from pathlib import Path

import pytest

from kardlite._io import atomic_dir, atomic_write_json, read_json


def test_atomic_dir_keeps_old_on_error_and_sweeps_stale_temp(tmp_path: Path) -> None:
    final = tmp_path / "index"
    with atomic_dir(final) as tmp:
        atomic_write_json(tmp / "a.json", {"v": 1})
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        atomic_write_json(tmp / "a.json", {"v": 2})
        raise RuntimeError("crash mid-build")
    assert read_json(final / "a.json") == {"v": 1}
    stale = tmp_path / ".index.abc123.tmp"  # what a SIGKILLed build leaves
    stale.mkdir()
    with atomic_dir(final) as tmp:
        atomic_write_json(tmp / "a.json", {"v": 3})
    assert read_json(final / "a.json") == {"v": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
