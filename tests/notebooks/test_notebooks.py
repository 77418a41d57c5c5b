"""Every tutorial notebook runs top to bottom in fast mode (KARDLITE_FAST=1) in a fresh kernel of this interpreter;
a failing cell fails the test with the cell and its traceback. Outputs go to a temporary folder, never the repo."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
spec = importlib.util.spec_from_file_location("_make", NOTEBOOKS[0].parent / "_make.py")
_make = importlib.util.module_from_spec(spec)
spec.loader.exec_module(_make)


def test_every_notebook_is_generated_from_make() -> None:
    assert [p.stem for p in NOTEBOOKS] == sorted(_make.NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path: Path, demo_bundle_fast: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat

    # The kernel inherits this environment: fast mode, scratch outputs, the session's fast bundle, no hub.
    monkeypatch.setenv("KARDLITE_FAST", "1")
    monkeypatch.setenv("KARDLITE_WORK", str(tmp_path))
    monkeypatch.setenv("KARDLITE_BUNDLE", str(demo_bundle_fast))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    committed = nbformat.read(path, as_version=4)
    assert all(not cell.metadata for cell in committed.cells), "notebook metadata not stripped (_make.py strip)"
    nb = _make.execute(path)  # raises CellExecutionError naming the failed cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
