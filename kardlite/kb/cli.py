"""``kardlite kb``: build a knowledge base from a corpus, search it, show what it holds."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from kardlite._cli import cli_errors

app = typer.Typer(help="Knowledge base: build from passages, search, inspect.", no_args_is_help=True)


class Format(StrEnum):
    auto = "auto"
    lines = "lines"
    jsonl = "jsonl"
    folder = "folder"


class RetrieverName(StrEnum):
    auto = "auto"
    bm25 = "bm25"
    dense = "dense"
    hybrid = "hybrid"


def _chunking(tokens: int, overlap: int, words: int | None, overlap_words: int | None) -> dict[str, int | None]:
    if words is None and overlap_words is None:
        return {"chunk_tokens": tokens, "overlap_tokens": overlap}
    typer.echo("warning: --chunk-words/--overlap-words are deprecated (a word count can exceed the encoder's token "
               "limit); use --chunk-tokens/--overlap-tokens", err=True)
    return {"chunk_words": words or 200, "overlap_words": overlap_words}


@app.command()
@cli_errors
def build(
    source: Annotated[Path, typer.Argument(help="A fact-per-line file, a JSONL file, or a folder of .txt/.md.",
                                           exists=True)],
    out: Annotated[Path, typer.Argument(help="The knowledge-base folder to create or replace.")],
    format: Annotated[Format, typer.Option("--format", help="How to read SOURCE.")] = Format.auto,
    chunk_tokens: Annotated[int, typer.Option(help="Folder sources: most encoder tokens per passage (126 fits the "
                                                   "encoder and the reranker whole).")] = 126,
    overlap_tokens: Annotated[int, typer.Option(help="Folder sources: tokens repeated between passages.")] = 24,
    # Index settings default to None = KBConfig's defaults, so the CLI and the library never drift apart.
    k1: Annotated[float | None, typer.Option(help="BM25 k1 [default 0.9].")] = None,
    b: Annotated[float | None, typer.Option(help="BM25 b [default 0.4].")] = None,
    dense: Annotated[bool, typer.Option("--dense/--no-dense", help="Build the dense (ONNX + HNSW) index.")] = True,
    model: Annotated[str | None, typer.Option(help="Encoder: local folder, HF id, or an exported encoder/ folder "
                                                    "[default: the packaged all-MiniLM-L6-v2].")] = None,
    quantize: Annotated[bool, typer.Option("--quantize/--no-quantize", help="int8 encoder.")] = True,
    batch_size: Annotated[int | None, typer.Option(help="Passages per embedding batch [default 64].")] = None,
    hnsw_m: Annotated[int | None, typer.Option("--hnsw-m", help="HNSW links per node [default 16].")] = None,
    ef_construction: Annotated[int | None, typer.Option(help="HNSW build candidate list [default 200].")] = None,
    ef: Annotated[int | None, typer.Option(help="HNSW query candidate list [default 64].")] = None,
    rrf_k: Annotated[int | None, typer.Option(help="Hybrid: RRF constant [default 10].")] = None,
    pool: Annotated[int | None, typer.Option(help="Hybrid: candidates from each retriever [default 100].")] = None,
    dense_weight: Annotated[float | None, typer.Option(help="Hybrid: weight of dense vs BM25 1.0 [default 2].")]
    = None,
    progress: Annotated[bool, typer.Option("--progress/--quiet", help="Progress bars.")] = True,
    chunk_words: Annotated[int | None, typer.Option(hidden=True, help="Deprecated: --chunk-tokens.")] = None,
    overlap_words: Annotated[int | None, typer.Option(hidden=True, help="Deprecated: --overlap-tokens.")] = None,
) -> None:
    """Read SOURCE into passages and build a knowledge base at OUT."""
    from rich.console import Console

    from kardlite.kb import KnowledgeBase, read_passages
    from kardlite.kb.config import KBConfig

    def given(**values: object) -> dict[str, object]:
        return {k: v for k, v in values.items() if v is not None}

    config = KBConfig.from_dict({
        "bm25": given(k1=k1, b=b),
        "dense": given(model=model, quantize=quantize, batch_size=batch_size) if dense else None,
        "hnsw": given(M=hnsw_m, ef_construction=ef_construction, ef=ef),
        "hybrid": given(rrf_k=rrf_k, pool=pool, dense_weight=dense_weight),
    })
    config.validate()  # bad settings fail before a long read
    passages = read_passages(source, format.value, **_chunking(chunk_tokens, overlap_tokens, chunk_words,
                                                                      overlap_words))
    kb = KnowledgeBase.build(passages, out, config=config, progress=progress)
    info = kb.manifest["build"]
    rate = info["embedding_passages_per_s"]
    Console().print(f"[green]built[/green] {kb.path}: {len(kb)} passages, retrievers "
                    f"{', '.join(kb.manifest['retrievers'])}, {info['seconds']['total_s']:.1f} s"
                    + (f" (embedding {rate:.0f} passages/s)" if rate else ""))


@app.command()
@cli_errors
def add(
    source: Annotated[Path, typer.Argument(help="New passages: a fact-per-line file, a JSONL file, or a folder.",
                                           exists=True)],
    kb_path: Annotated[Path, typer.Argument(metavar="KB", help="A knowledge-base folder or a bundle folder.",
                                            exists=True)],
    format: Annotated[Format, typer.Option("--format", help="How to read SOURCE.")] = Format.auto,
    chunk_tokens: Annotated[int, typer.Option(help="Folder sources: most encoder tokens per passage (126 fits the "
                                                   "encoder and the reranker whole).")] = 126,
    overlap_tokens: Annotated[int, typer.Option(help="Folder sources: tokens repeated between passages.")] = 24,
    progress: Annotated[bool, typer.Option("--progress/--quiet", help="Progress bars.")] = False,
    chunk_words: Annotated[int | None, typer.Option(hidden=True, help="Deprecated: --chunk-tokens.")] = None,
    overlap_words: Annotated[int | None, typer.Option(hidden=True, help="Deprecated: --overlap-tokens.")] = None,
) -> None:
    """Add the passages of SOURCE to KB (or a bundle's KB) without retraining anything; atomic."""
    from kardlite.kb import read_passages
    from kardlite.kb.update import add_passages

    passages = read_passages(source, format.value, **_chunking(chunk_tokens, overlap_tokens, chunk_words,
                                                                      overlap_words))
    report = add_passages(kb_path, passages, progress=progress)
    typer.echo(f"added {report['added']} passages to {report['path']} ({report['passages']} now, "
               f"{report['encoded']} embedded, {report['seconds']:.2f} s)")


@app.command()
@cli_errors
def remove(
    kb_path: Annotated[Path, typer.Argument(metavar="KB", help="A knowledge-base folder or a bundle folder.",
                                            exists=True)],
    ids: Annotated[list[str], typer.Option("--ids", help="A passage id to remove (repeat for several).")],
) -> None:
    """Remove passages from KB (or a bundle's KB) by id: marked deleted in every index; atomic."""
    from kardlite.kb.update import remove_passages

    report = remove_passages(kb_path, ids)
    typer.echo(f"removed {report['removed']} passages from {report['path']} ({report['passages']} left, "
               f"{report['seconds']:.2f} s)")


@app.command()
@cli_errors
def search(
    kb_path: Annotated[Path, typer.Argument(metavar="KB", help="A knowledge-base folder.", exists=True)],
    query: Annotated[str, typer.Argument(help="The query text.")],
    k: Annotated[int, typer.Option("-k", "--k", help="How many hits.")] = 5,
    retriever: Annotated[RetrieverName, typer.Option(help="auto = hybrid if the KB has a dense index, else bm25.")]
    = RetrieverName.auto,
) -> None:
    """Search a knowledge base and print the hits as a table."""
    from rich.console import Console
    from rich.table import Table

    from kardlite.kb import KnowledgeBase

    kb = KnowledgeBase.load(kb_path)
    name = retriever.value if retriever is not RetrieverName.auto else ("hybrid" if kb.has_dense else "bm25")
    hits = kb.search(query, k=k, retriever=name)  # type: ignore[arg-type]
    table = Table(title=f"{name}: {query}", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    for stage in ("bm25", "dense"):
        if name == "hybrid":
            table.add_column(stage, justify="right")
    table.add_column("id")
    table.add_column("passage", overflow="fold")
    for hit in hits:
        extra = [f"{hit['scores'][s]:.3f}" for s in ("bm25", "dense")] if name == "hybrid" else []
        text = f"{hit['title']}: {hit['text']}" if hit["title"] else hit["text"]
        table.add_row(str(hit["rank"]), f"{hit['score']:.4f}", *extra, hit["id"], text)
    Console().print(table)
    if not hits:
        Console().print("[yellow]no passage matches[/yellow]")


@app.command()
@cli_errors
def info(kb_path: Annotated[Path, typer.Argument(metavar="KB", help="A knowledge-base folder.", exists=True)]) -> None:
    """Verify a knowledge base and print its manifest summary."""
    from rich.console import Console

    from kardlite.kb import KnowledgeBase

    kb = KnowledgeBase.load(kb_path)
    m = kb.manifest
    size = sum(f["bytes"] for f in m["files"].values())
    console = Console()
    console.print(f"{kb.path}: {len(kb)} passages, retrievers {', '.join(m['retrievers'])}, "
                  f"{size / 2**20:.1f} MiB, built {m['created']} by kardlite {m['kardlite_version']} (verified)")
    if "encoder" in m["models"]:
        enc = m["models"]["encoder"]
        console.print(f"encoder: {enc['source']} -> {enc['onnx']} (dim {enc['dim']}, max_length {enc['max_length']})")
    console.print(f"config: {m['config']}")
