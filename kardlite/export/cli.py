"""``kardlite export``: student → verified GGUFs, and the runtime bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kardlite._cli import fail
from kardlite.errors import KardliteError

app = typer.Typer(help="Export for the CPU runtime: student GGUFs, the bundle folder.", no_args_is_help=True)


@app.command()
def gguf(
    model_dir: Annotated[Path, typer.Argument(help="A merged student folder (or any saved llama/Gemma 3 model).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for student-f16.gguf and student-<quant>.gguf.")],
    quant: Annotated[list[str] | None, typer.Option("--quant", "-q", help="Q8_0, Q4_K_M, Q4_0 (repeat).")] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Compare each file with PyTorch.")] = True,
    tokenizer_gguf: Annotated[Path | None, typer.Option(help="Base GGUF for the tokenizer (default: packaged).")]
    = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
) -> None:
    """Convert a student to GGUF (f16 + quantised), carry the base tokenizer over, verify against PyTorch."""
    from kardlite.export.gguf import export_gguf

    try:
        out = export_gguf(model_dir, out_dir, quants=tuple(quant or ("Q8_0", "Q4_K_M")), verify=verify,  # type: ignore[arg-type]
                          tokenizer_gguf=tokenizer_gguf, threads=threads)
    except KardliteError as err:
        raise fail(err) from None
    for q, info in out.items():
        v = info["verify"]
        check = (f"greedy {v['greedy_match']}/{v['greedy_tokens']}, agreement {v['confident_agreement']:.3f}"
                 if v else "not verified")
        typer.echo(f"{q:7s} {info['bytes'] / 2**20:7.1f} MiB  {info['path']}  ({check})")


@app.command()
def bundle(
    student: Annotated[Path, typer.Argument(help="Merged student folder, or a ready .gguf.")],
    kb: Annotated[Path, typer.Argument(help="Knowledge-base folder (kardlite kb build).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Parent folder of bundles.")] = Path("exports"),
    name: Annotated[str | None, typer.Option(help="Bundle folder name (default <student>-<quant>).")] = None,
    reranker: Annotated[Path | None, typer.Option(help="Reranker folder (torch or ONNX).")] = None,
    quant: Annotated[str, typer.Option(help="Student GGUF type: Q4_K_M, Q8_0, Q4_0, f16.")] = "Q4_K_M",
    mode: Annotated[str | None, typer.Option(help="Prompt mode kard|rd (default: the student's).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Prompt token budget (default: the student's).")] = None,
    first_stage: Annotated[str | None, typer.Option(help="bm25|dense|hybrid (default hybrid if dense).")] = None,
    pool: Annotated[int, typer.Option(help="First-stage candidates for the reranker.")] = 50,
    n_docs: Annotated[int, typer.Option(help="Passages shown to the student.")] = 3,
    max_new_tokens: Annotated[int, typer.Option(help="Default generation cap.")] = 128,
    evaluation: Annotated[Path | None, typer.Option(help="JSON file of evaluation numbers to record.")] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Verify the GGUF against PyTorch.")] = True,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
) -> None:
    """Write exports/<name>/: student GGUF + KB (with its ONNX encoder) + ONNX reranker + manifest.json."""
    from kardlite._io import read_json
    from kardlite.export.bundle import export_bundle

    try:
        evaluation_numbers = read_json(evaluation) if evaluation else None
        out = export_bundle(student, kb, out_dir, reranker_dir=reranker, quant=quant, name=name, mode=mode,  # type: ignore[arg-type]
                            max_tokens=max_tokens, first_stage=first_stage, pool=pool, n_docs=n_docs,
                            decoding={"max_new_tokens": max_new_tokens}, evaluation=evaluation_numbers,
                            verify=verify, threads=threads)
    except KardliteError as err:
        raise fail(err) from None
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    size = sum(f["bytes"] for f in manifest["files"].values())
    student_quant = manifest["student"]["quant"]
    typer.echo(f"{out}  ({len(manifest['files'])} files, {size / 2**20:.1f} MiB, student {student_quant})")
