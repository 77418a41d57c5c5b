"""The tutorial notebooks: each committed ``.ipynb`` is its jupytext source (``notebooks/NN_*.py``) plus clean
outputs, and each runs top to bottom in fast mode (KARDLITE_FAST=1) in a fresh kernel of this interpreter; a failing
cell fails the test with the cell and its traceback. Outputs of the runs go to a temporary folder, never the repo."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from tests.conftest import load_script

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
build = load_script(NOTEBOOKS_DIR / "build.py")
SOURCES = build.sources()
IDS = [s.stem for s in SOURCES]


def test_every_notebook_has_a_source_and_every_source_a_notebook() -> None:
    assert len(SOURCES) == 6
    assert sorted(p.stem for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")) == IDS


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_committed_notebook_matches_its_source(source: Path) -> None:
    assert build.mismatches(source) == [], "regenerate it: python notebooks/build.py --fast " + source.stem


def test_a_changed_source_is_reported(tmp_path: Path) -> None:
    source = tmp_path / SOURCES[0].name
    source.write_text(SOURCES[0].read_text() + "\n# %%\nprint('a cell the notebook does not have')\n")
    source.with_suffix(".ipynb").write_bytes(SOURCES[0].with_suffix(".ipynb").read_bytes())
    assert build.mismatches(source)


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_committed_outputs_are_clean_and_interpreted(source: Path) -> None:
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    assert build.MODE_LINE.search(nb.cells[0].source), "the first cell states the mode of the committed outputs"
    assert nb.cells[-1].cell_type == "markdown", "the notebook ends with a cell that interprets its numbers"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "committed outputs come from one complete run"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not [o for o in outputs if build.WIDGET in o.get("data", {})]
    assert not [o for o in outputs if o.output_type == "error"]


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_notebook_runs_in_fast_mode(source: Path, demo_bundle_fast: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel inherits this environment: fast mode, scratch outputs, the session's fast bundle, no hub.
    for key, value in build.KERNEL_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KARDLITE_FAST", "1")
    monkeypatch.setenv("KARDLITE_WORK", str(tmp_path))
    monkeypatch.setenv("KARDLITE_BUNDLE", str(demo_bundle_fast))
    nb = build.execute(nbformat.read(source.with_suffix(".ipynb"), as_version=4))
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
