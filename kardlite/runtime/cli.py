"""``kardlite ask BUNDLE "question" --option ...``: one question through a bundle, on the CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kardlite._cli import cli_errors, setting_option

if TYPE_CHECKING:
    from kardlite.runtime.types import Answer


@cli_errors
def ask(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder (kardlite export bundle).", exists=True)],
    question: Annotated[str, typer.Argument(help="The question stem.")],
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="An answer option (repeat, 2-10).")]
    = None,
    n_docs: Annotated[int | None, setting_option("n_docs", default_note="the bundle's")] = None,
    samples: Annotated[int | None, typer.Option(help="Self-consistency samples (majority vote); 1 = one greedy "
                                                     "generation. [default: the bundle's decoding]")] = None,
    max_new_tokens: Annotated[int | None, setting_option("max_new_tokens", default_note="the bundle's")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.", min=1)] = None,
    abstain_below: Annotated[float | None, typer.Option(help="Withhold the answer when its confidence (0-1) is "
                                                             "below this; the reason is printed instead.")] = None,
    audit_log: Annotated[Path | None, typer.Option(help="Append a JSONL audit record of the answer to this file.")]
    = None,
    trusted_key: Annotated[Path | None, typer.Option(help="Refuse the bundle unless signed by this Ed25519 public "
                                                     "key (PEM; kardlite export sign).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole Answer as JSON.")] = False,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print the rationale as it is written.")]
    = False,
) -> None:
    """Answer a question with a bundle: retrieve, rerank, reason, answer."""
    from kardlite.runtime import load
    from kardlite.runtime.audit import AuditLogError

    # one question: encoding the whole KB for a late-interaction reranker's cache would cost more than it saves
    pipe = load(bundle, threads=threads, warm_reranker=0, audit_log=audit_log,
                trusted_key=trusted_key)
    kwargs = {"n_docs": n_docs, "samples": samples, "max_new_tokens": max_new_tokens, "temperature": temperature,
              "abstain_below": abstain_below}
    answer, failed = None, None
    try:
        for event in pipe.stream(question, option or None, **kwargs):
            if event["type"] == "token" and stream and not as_json:
                typer.echo(event["text"], nl=False)
            elif event["type"] == "answer":
                answer = event["answer"]
    except AuditLogError as err:
        if err.answer is None:
            raise
        answer, failed = err.answer, err  # the answer is shown, then the command fails for the unwritten record
    finally:
        pipe.close()
    assert answer is not None
    _show(answer, as_json=as_json, stream=stream)
    if failed is not None:
        raise failed


def _show(answer: Answer, *, as_json: bool, stream: bool) -> None:
    if as_json:
        typer.echo(json.dumps(answer, indent=2, ensure_ascii=False))
        return
    if stream:
        typer.echo("")
    else:
        typer.echo(answer["rationale"])
    for p in answer["passages"]:
        typer.echo(f"  [{p['rank']}] {p['id']}: {p['title'] or p['text'][:60]}")
    if answer["abstention"]:
        typer.echo(f"Abstained: {answer['abstention']['reason']}")
    elif answer["options"]:
        shown = f"{answer['letter']}. {answer['answer']}" if answer["valid"] else "(no valid answer)"
        votes = f"  votes {answer['votes']}" if answer["votes"] else ""
        typer.echo(f"Answer: {shown}{votes}")
    typer.echo(f"Confidence: {answer['confidence']:.2f}")
    t = answer["timings"]
    typer.echo(f"({t['total']:.2f} s: retrieve {t['retrieve']:.2f}, rerank {t['rerank']:.2f}, "
               f"generate {t['generate']:.2f}; {answer['tokens']['generated']} new tokens)", err=True)
