"""Regenerate the tutorial notebooks (``NN_name.ipynb``) from their sources (``NN_name.py``) and execute them.

The sources are jupytext percent-format scripts (``# %%`` code cells, ``# %% [markdown]`` text cells): edit those,
never the ``.ipynb``, which this script overwrites. Run from the repository root with the project's interpreter::

    python notebooks/build.py --fast                  # every notebook, fast mode (KARDLITE_FAST=1): committed outputs
    python notebooks/build.py --full 01_quickstart    # one notebook, full mode (builds/uses the trained demo bundle)
    python notebooks/build.py --no-execute            # only regenerate the .ipynb, without outputs
    python notebooks/build.py --keep-outputs          # after text-only edits: keep the outputs of unchanged code cells
    python notebooks/build.py --check                 # exit 1 when an .ipynb does not match its source

Executing rewrites the ``*Committed outputs: ...*`` line of each notebook's first cell (in the source too) with the
mode that made them. Committed notebooks keep their outputs (they teach) but no cell metadata, widget state or
stderr, and only the kernel name as notebook metadata, so a re-run gives a small diff.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KERNEL = {"name": "python3", "display_name": "Python 3 (kardlite)", "language": "python"}
MODE_LINE = re.compile(r"\*Committed outputs: [^\n]*\*")
MODE_TEXT = {
    "fast": "*Committed outputs: fast mode (`KARDLITE_FAST=1`), made by `python notebooks/build.py --fast`.*",
    "full": "*Committed outputs: full mode (`KARDLITE_FAST=0`), made by `python notebooks/build.py --full`.*",
}
# What the kernel inherits when building: no hub, no progress widgets, no library log chatter in the outputs.
KERNEL_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1",
              "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
WIDGET = "application/vnd.jupyter.widget-view+json"


def sources() -> list[Path]:
    """The notebook sources, in order (``notebooks/NN_*.py``)."""
    return sorted(HERE.glob("[0-9][0-9]_*.py"))


def from_source(source: Path) -> Any:
    """The notebook a source describes, without outputs (an ``nbformat.NotebookNode``)."""
    import jupytext

    return clean(jupytext.read(source, fmt="py:percent"))


def mismatches(source: Path) -> list[str]:
    """How the committed ``.ipynb`` differs from its source's cells (empty when they match).

    Compares cell kinds and sources only: outputs are what executing the source produced.
    """
    import nbformat

    path = source.with_suffix(".ipynb")
    if not path.is_file():
        return [f"{path.name} is missing"]
    want = [(c.cell_type, c.source) for c in from_source(source).cells]
    have = [(c.cell_type, c.source) for c in nbformat.read(path, as_version=4).cells]
    problems = [f"{path.name}: {len(have)} cells, the source has {len(want)}"] if len(have) != len(want) else []
    pairs = enumerate(zip(have, want, strict=False))
    problems += [f"{path.name} cell {i}: differs from {source.name}" for i, (a, b) in pairs if a != b]
    return problems


def clean(nb: Any) -> Any:
    """Keep outputs, drop the rest: cell metadata, widget views, stderr, random ids; kernel name only."""
    nb.metadata = {"kernelspec": dict(KERNEL), "language_info": {"name": "python"}}
    for i, cell in enumerate(nb.cells):
        cell.metadata = {}
        cell.id = f"c{i:02d}"  # stable ids: no random churn in diffs
        if cell.cell_type != "code":
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
            continue
        outputs: list[Any] = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                continue  # library warnings and logs: noise in a tutorial's committed outputs
            if out.get("output_type") in ("display_data", "execute_result"):
                if WIDGET in out.get("data", {}):
                    continue  # a progress widget's frozen state
                out.metadata = {}
            # One output per stream, as Jupyter shows it (streamed tokens would otherwise be one output each).
            if out.get("output_type") == "stream" and outputs and outputs[-1].get("output_type") == "stream":
                outputs[-1].text += out.text
            else:
                outputs.append(out)
        cell.outputs = outputs
    return nb


def execute(nb: Any, *, timeout: int = 1200) -> Any:
    """Run a notebook top to bottom in a fresh kernel of this interpreter, from the ``notebooks/`` folder.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed (the message shows the cell and the traceback).
    """
    from nbclient import NotebookClient

    NotebookClient(nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": str(HERE)}},
                   allow_errors=False).execute()
    return nb


def set_mode(source: Path, mode: str) -> None:
    """Write the mode statement into the source's first cell (so source and notebook agree)."""
    text = source.read_text()
    new, n = MODE_LINE.subn(MODE_TEXT[mode], text, count=1)
    if n != 1:
        raise SystemExit(f"{source.name}: the first cell needs a '*Committed outputs: ...*' line")
    if new != text:
        source.write_text(new)


def _keep_outputs(nb: Any, old_path: Path) -> Any:
    """Copy outputs from the committed notebook into code cells whose source did not change."""
    import nbformat

    if not old_path.is_file():
        return nb
    old = {c.source: c for c in nbformat.read(old_path, as_version=4).cells if c.cell_type == "code"}
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source in old:
            cell.outputs = old[cell.source].get("outputs", [])
            cell.execution_count = old[cell.source].get("execution_count")
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebooks to build, e.g. 01_quickstart (default: all)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--fast", action="store_true", help="execute in fast mode (KARDLITE_FAST=1)")
    mode.add_argument("--full", action="store_true", help="execute in full mode (KARDLITE_FAST=0)")
    mode.add_argument("--no-execute", action="store_true", help="write the .ipynb without outputs")
    mode.add_argument("--keep-outputs", action="store_true", help="keep the outputs of unchanged code cells")
    mode.add_argument("--check", action="store_true", help="only check that every .ipynb matches its source")
    args = parser.parse_args(argv)
    import nbformat

    chosen = [s for s in sources() if not args.names or s.stem in args.names]
    unknown = set(args.names) - {s.stem for s in chosen}
    if unknown:
        parser.error(f"no such notebook source: {', '.join(sorted(unknown))}")
    if args.check:
        problems = [p for s in chosen for p in mismatches(s)]
        print("\n".join(problems) or f"{len(chosen)} notebooks match their sources")
        return 1 if problems else 0
    if args.fast or args.full:
        os.environ.update(KERNEL_ENV)
        os.environ["KARDLITE_FAST"] = "1" if args.fast else "0"
    for source in chosen:
        path = source.with_suffix(".ipynb")
        if args.fast or args.full:
            set_mode(source, "fast" if args.fast else "full")
            started = time.perf_counter()
            nb = execute(from_source(source))
            print(f"{source.stem}: executed in {time.perf_counter() - started:.0f} s", flush=True)
        else:
            nb = from_source(source)
            if args.keep_outputs:
                nb = _keep_outputs(nb, path)
        nbformat.write(clean(nb), path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
