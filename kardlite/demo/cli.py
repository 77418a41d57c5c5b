"""``kardlite demo``: the main job on the embedded demo data and packaged models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from kardlite.errors import KardliteError

DEFAULT_DIR = Path("exports") / "demo"


def demo(
    question: Annotated[str | None, typer.Argument(help="A question to search for (default: a demo test question).")]
    = None,
    out: Annotated[Path, typer.Option(help="Where the demo artefacts are built (reused when present).")] = DEFAULT_DIR,
    k: Annotated[int, typer.Option("-k", help="Passages to show.")] = 3,
    rebuild: Annotated[bool, typer.Option(help="Rebuild even if already built.")] = False,
) -> None:
    """Build the demo knowledge base (first run only) and answer a retrieval query on it."""
    from rich.console import Console
    from rich.table import Table

    from kardlite.demo import DISCLAIMER, demo_passages, demo_questions
    from kardlite.kb import KnowledgeBase

    console = Console()
    console.print(f"[bold]kardlite demo[/bold] — {DISCLAIMER}")
    kb_dir = out / "kb"
    try:
        if rebuild or not (kb_dir / "manifest.json").exists():
            started = time.perf_counter()
            passages = demo_passages()
            console.print(f"building the demo knowledge base ({len(passages)} passages) at {kb_dir} ...")
            kb = KnowledgeBase.build(passages, kb_dir)
            console.print(f"built in {time.perf_counter() - started:.1f} s")
        else:
            kb = KnowledgeBase.load(kb_dir)
        item = None
        if question is None:
            item = demo_questions("test")[0]
            question = item.linearize()
        started = time.perf_counter()
        hits = kb.search(question, k=k, retriever="hybrid")
        elapsed_ms = (time.perf_counter() - started) * 1000
    except KardliteError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None

    console.print(f"\n[bold]Question[/bold]\n{question}\n")
    table = Table(title=f"hybrid retrieval (BM25 + dense, RRF) in {elapsed_ms:.1f} ms")
    for col in ("rank", "id", "title", "score", "gold"):
        table.add_column(col)
    gold = set(item.meta.get("passage_ids", [])) if item else set()
    for hit in hits:
        mark = "yes" if hit["id"] in gold else ""
        table.add_row(str(hit["rank"]), hit["id"], hit["title"], f"{hit['score']:.4f}", mark)
    console.print(table)
    if hits:
        console.print(f"\n[bold]Top passage[/bold]: {hits[0]['text']}")
