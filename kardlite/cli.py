"""The ``kardlite`` command: one sub-command per stage, thin wrappers over the library functions.

Each stage keeps its commands in its own ``<stage>/cli.py``; heavy imports happen inside the commands so
``kardlite --help`` stays fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="KARD on a laptop CPU: knowledge base, teacher rationales, students, reranker, export.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
train_app = typer.Typer(help="Train a student or a reranker.", no_args_is_help=True)
app.add_typer(train_app, name="train")

# --- stage registrations (one block per stage; keep each block self-contained) ---
from kardlite.kb import cli as _kb_cli  # noqa: E402

app.add_typer(_kb_cli.app, name="kb")
from kardlite.distill import cli as _distill_cli  # noqa: E402

app.add_typer(_distill_cli.distill_app, name="distill")
train_app.command("student")(_distill_cli.train_student_cmd)
app.add_typer(_distill_cli.eval_app, name="eval")
from kardlite.demo import cli as _demo_cli  # noqa: E402

app.command("demo")(_demo_cli.demo)
from kardlite.rationales import cli as _rationales_cli  # noqa: E402
from kardlite.teacher import cli as _teacher_cli  # noqa: E402

app.command("teach")(_teacher_cli.teach)
app.add_typer(_rationales_cli.app, name="rationales")
from kardlite.rerank import cli as _rerank_cli  # noqa: E402

train_app.command("reranker")(_rerank_cli.train)
app.add_typer(_rerank_cli.app, name="rerank")
from kardlite.export import cli as _export_cli  # noqa: E402
from kardlite.runtime import cli as _runtime_cli  # noqa: E402

app.add_typer(_export_cli.app, name="export")
app.command("ask")(_runtime_cli.ask)
# --- end of stage registrations ---


def main() -> None:
    app()


if __name__ == "__main__":
    main()
