"""``kardlite export``: student → verified GGUFs, and the runtime bundle; ``kardlite info``: what a bundle holds."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from kardlite._cli import (
    AnswerFormat,
    AnswerScoring,
    Decoding,
    FirstStage,
    NoAnswer,
    cli_errors,
    renamed,
    setting_option,
)
from kardlite.errors import InputError, KardliteError

app = typer.Typer(help="Export for the CPU runtime: student GGUFs, the bundle folder.", no_args_is_help=True)


class Quant(StrEnum):
    """GGUF types of a student (kardlite.export.gguf.QUANTS)."""

    f16 = "f16"
    Q8_0 = "Q8_0"
    Q4_K_M = "Q4_K_M"
    Q4_0 = "Q4_0"


class BundleMode(StrEnum):
    kard = "kard"
    rd = "rd"


@app.command()
@cli_errors
def gguf(
    model_dir: Annotated[Path, typer.Argument(help="A merged student folder (or any saved llama/Gemma 3 model).",
                                              exists=True)],
    out_dir: Annotated[Path, typer.Argument(help="Folder for student-f16.gguf and student-<quant>.gguf.")],
    quant: Annotated[list[Quant] | None, typer.Option("--quant", "-q", help="Repeat for several [default: Q8_0 "
                                                                            "and Q4_K_M].")] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Compare each file with PyTorch.")] = True,
    tokenizer_gguf: Annotated[Path | None, typer.Option(help="Base GGUF for the tokenizer (default: packaged).",
                                                        exists=True)] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.", min=1)] = None,
) -> None:
    """Convert a student to GGUF (f16 + quantised), carry the base tokenizer over, verify against PyTorch."""
    from kardlite.export.gguf import export_gguf

    quants = tuple(q.value for q in quant) if quant else ("Q8_0", "Q4_K_M")
    out = export_gguf(model_dir, out_dir, quants=quants, verify=verify,  # type: ignore[arg-type]
                      tokenizer_gguf=tokenizer_gguf, threads=threads)
    for q, info in out.items():
        v = info["verify"]
        check = (f"greedy {v['greedy_match']}/{v['greedy_tokens']}, agreement {v['confident_agreement']:.3f}"
                 if v else "not verified")
        typer.echo(f"{q:7s} {info['bytes'] / 2**20:7.1f} MiB  {info['path']}  ({check})")


@app.command()
@cli_errors
def bundle(
    student: Annotated[Path, typer.Argument(help="Merged student folder, or a ready .gguf.", exists=True)],
    kb: Annotated[Path, typer.Argument(help="Knowledge-base folder (kardlite kb build).", exists=True)],
    out: Annotated[Path | None, typer.Option("--out", help="The bundle folder to write (replaced if it is a bundle) "
                                                           "[default: exports/<student>-<quant>].")] = None,
    reranker: Annotated[Path | None, typer.Option(help="Reranker folder (torch or ONNX).", exists=True)] = None,
    quant: Annotated[Quant, typer.Option(help="Student GGUF type.")] = Quant.Q4_K_M,
    mode: Annotated[BundleMode | None, setting_option("mode")] = None,
    max_source_tokens: Annotated[int | None, setting_option("max_source_tokens")] = None,
    first_stage: Annotated[FirstStage | None, setting_option("first_stage")] = None,
    pool: Annotated[int | None, setting_option("pool")] = None,
    n_docs: Annotated[int | None, setting_option("n_docs")] = None,
    rerank: Annotated[bool | None, setting_option("rerank", "--rerank/--no-rerank")] = None,
    max_new_tokens: Annotated[int | None, setting_option("max_new_tokens")] = None,
    decoding: Annotated[Decoding | None, setting_option("decoding")] = None,
    samples: Annotated[int | None, setting_option("samples")] = None,
    answer_format: Annotated[AnswerFormat | None, setting_option("answer_format")] = None,
    answer_scoring: Annotated[AnswerScoring | None, setting_option("answer_scoring")] = None,
    no_answer: Annotated[NoAnswer | None, setting_option("no_answer")] = None,
    seed: Annotated[int | None, setting_option("seed")] = None,
    evaluation: Annotated[Path | None, typer.Option(help="JSON file of evaluation numbers to record.", exists=True)]
    = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Verify the GGUF against PyTorch.")] = True,
    threads: Annotated[int | None, typer.Option(help="CPU threads.", min=1)] = None,
    name: Annotated[str | None, typer.Option(hidden=True, help="Deprecated: --out PARENT --name NAME wrote "
                                                                "PARENT/NAME; give --out PARENT/NAME.")] = None,
    max_tokens: Annotated[int | None, typer.Option(hidden=True, help="Deprecated spelling of --max-source-tokens.")]
    = None,
) -> None:
    """Write the bundle folder --out: student GGUF + KB (with its ONNX encoder) + ONNX reranker + manifest.json.
    Unset settings are the student's own (kardlite_student.json), the ones `kardlite eval` scores."""
    from kardlite._io import read_json
    from kardlite.export.bundle import MANIFEST, export_bundle

    if name is not None:  # the old spelling: --out was the parent folder
        parent: Path = out or Path("exports")
        typer.echo(f"warning: --name is deprecated; give the bundle folder itself: --out {parent / name}", err=True)
    elif out is not None:
        if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise InputError("exists and is not a bundle, so it is not replaced (--out is the bundle folder itself, "
                             "not its parent)", path=out)
        parent, name = out.parent, out.name
    else:
        parent = Path("exports")
    max_source_tokens = renamed(max_source_tokens, max_tokens, new="--max-source-tokens", old="--max-tokens")
    evaluation_numbers = read_json(evaluation) if evaluation else None
    value = lambda e: e.value if e is not None else None  # noqa: E731 - enum option -> its string or None
    settings = {"mode": value(mode), "max_source_tokens": max_source_tokens, "first_stage": value(first_stage),
                "pool": pool, "n_docs": n_docs, "rerank": rerank, "max_new_tokens": max_new_tokens,
                "decoding": value(decoding), "samples": samples, "answer_scoring": value(answer_scoring),
                "answer_format": value(answer_format),
                "no_answer": value(no_answer), "seed": seed}
    written = export_bundle(student, kb, parent, reranker_dir=reranker, quant=quant.value,  # type: ignore[arg-type]
                            name=name, settings={k: v for k, v in settings.items() if v is not None},
                            evaluation=evaluation_numbers, verify=verify, threads=threads)
    manifest = json.loads((written / MANIFEST).read_text(encoding="utf-8"))
    size = sum(f["bytes"] for f in manifest["files"].values())
    student_quant = manifest["student"]["quant"]
    typer.echo(f"{written}  ({len(manifest['files'])} files, {size / 2**20:.1f} MiB, student {student_quant})")


@app.command()
@cli_errors
def keygen(
    private_key: Annotated[Path, typer.Argument(help="Where to write the private key (PEM; keep it secret).")],
    public_key: Annotated[Path, typer.Argument(help="Where to write the public key (PEM; give it to runtimes).")],
) -> None:
    """Make an Ed25519 key pair for signing bundles (needs the `sign` extra)."""
    from kardlite.bundle_format import generate_signing_key

    generate_signing_key(private_key, public_key)
    typer.echo(f"private key {private_key} (mode 0600), public key {public_key}")


@app.command()
@cli_errors
def sign(
    bundle_dir: Annotated[Path, typer.Argument(help="A bundle folder (kardlite export bundle).")],
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key, PEM (kardlite export keygen).")],
) -> None:
    """Verify a bundle, then sign its manifest (bundle.sig); `kardlite ask --trusted-key PUB` checks it."""
    from kardlite.bundle_format import sign_bundle

    out = sign_bundle(bundle_dir, key)
    typer.echo(f"signed: {out}")


@app.command("verify")
@cli_errors
def verify_cmd(
    bundle_dir: Annotated[Path, typer.Argument(help="A bundle folder (kardlite export bundle).")],
    trusted_key: Annotated[Path | None, typer.Option(help="Also require a signature by this public key (PEM).")]
    = None,
    allow_extra: Annotated[bool, typer.Option("--allow-extra", help="Report unlisted files instead of refusing.")]
    = False,
) -> None:
    """Check a bundle: manifest digest, no links or unlisted files, every file's size and sha256, signature."""
    from kardlite.bundle_format import read_manifest, verify_bundle

    manifest = read_manifest(bundle_dir)
    extra = verify_bundle(bundle_dir, manifest, allow_extra=allow_extra, trusted_key=trusted_key)
    for rel in extra:
        typer.echo(f"warning: {bundle_dir / rel}: not listed in manifest.json (never read)", err=True)
    signed = " and signed by the trusted key" if trusted_key else ""
    typer.echo(f"ok: {bundle_dir} ({len(manifest['files'])} files match manifest.json{signed})")


@cli_errors
def info(
    bundle_dir: Annotated[Path, typer.Argument(help="A bundle folder (kardlite export bundle).", exists=True)],
    trusted_key: Annotated[Path | None, typer.Option(help="Also require a signature by this public key (PEM).")]
    = None,
) -> None:
    """Show a bundle: what it holds, whether every file verifies, and its evaluation card (the measured numbers,
    intended use and known limits)."""
    from kardlite.bundle_format import SIGNATURE_FILE, bundle_settings, read_manifest, verify_bundle
    from kardlite.card import read_card, summary

    manifest = read_manifest(bundle_dir)
    settings, _ = bundle_settings(manifest, where=str(bundle_dir / "manifest.json"))
    for line in _manifest_lines(bundle_dir, manifest, settings):
        typer.echo(line)
    try:
        verify_bundle(bundle_dir, manifest, trusted_key=trusted_key)
    except KardliteError:
        typer.echo("verification: FAILED (the card is not shown: it is only as good as the bundle)")
        raise
    if trusted_key is not None:
        signature = f"signed by the trusted key {trusted_key}"
    elif (bundle_dir / SIGNATURE_FILE).is_file():
        signature = "signed (not checked: give --trusted-key PUB)"
    else:
        signature = "not signed"
    typer.echo(f"verification: ok, every file's size and sha256 match manifest.json; {signature}")
    card = read_card(bundle_dir, manifest)
    typer.echo(f"card: {card.status}")
    for line in summary(card, manifest, settings):
        typer.echo("  " * (line.level + 1) + line.plain())


def _manifest_lines(bundle_dir: Path, manifest: dict[str, Any], settings: Any) -> list[str]:
    """What a bundle holds, in a few lines, from its manifest (and its KB's manifest for the passage count)."""
    from kardlite._io import read_json
    from kardlite.bundle_format import KB_DIR

    files = manifest["files"]
    student = manifest.get("student") or {}
    retrieval = manifest.get("retrieval") or {}
    size = lambda rel: files.get(rel, {}).get("bytes", 0) / 2**20  # noqa: E731 - MiB of one listed file
    params = student.get("parameters")
    kb = retrieval.get("kb", KB_DIR)
    try:
        passages = f"{int(read_json(bundle_dir / kb / 'manifest.json')['counts']['passages']):,} passages"
    except (KardliteError, KeyError, TypeError, ValueError):
        passages = "passages unknown"
    rr = retrieval.get("reranker")
    rerank = (f"reranked by a {rr.get('kind', 'cross-encoder')} (pool {settings.pool})" if rr and settings.rerank
              else "not reranked")
    decoding = "greedy" if settings.greedy else f"self-consistency, {settings.samples} samples"
    confidence = "calibrated (calibration.json)" if manifest.get("calibration") else "raw (no calibrator)"
    return [
        f"{bundle_dir}: bundle {manifest.get('name')!r} (schema {manifest['schema_version']}, created "
        f"{manifest.get('created', '?')})",
        f"  student: {student.get('architecture', '?')} {student.get('name') or ''}".rstrip()
        + (f", {params / 1e6:.1f}M parameters" if isinstance(params, int | float) else "")
        + f", {student.get('quant', '?')} ({student.get('file')}, {size(student.get('file', '')):.1f} MiB)",
        f"  knowledge base: {passages} ({kb}/); first stage {settings.first_stage}, {rerank}, {settings.n_docs} "
        "passages shown",
        f"  answers: mode {settings.mode}, {decoding}, up to {settings.max_new_tokens} new tokens, answer read "
        f"{settings.answer_scoring} (no answer line: {settings.no_answer}); confidence {confidence}",
        f"  files: {len(files)}, {sum(f.get('bytes', 0) for f in files.values()) / 2**20:.1f} MiB",
    ]
