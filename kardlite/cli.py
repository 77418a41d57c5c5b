"""The ``kardlite`` command: one sub-command per stage, thin wrappers over the library functions.

Each stage keeps its commands in its own ``<stage>/cli.py``; heavy imports happen inside the commands so
``kardlite --help`` stays fast. Every command follows kardlite._cli's conventions (one-line user errors, exit 2;
StrEnum choices; one option name per input).
"""

from __future__ import annotations

import typer

from kardlite._cli import PANEL_DATA, PANEL_SHIP, PANEL_TRAIN, OneLineErrorsGroup

app = typer.Typer(help="KARD on a laptop CPU: knowledge base, teacher rationales, students, reranker, export.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False, cls=OneLineErrorsGroup)
train_app = typer.Typer(help="Train a student or a reranker.", no_args_is_help=True)

# --- stage registrations (one block per stage, in pipeline order; keep each block self-contained) ---
from kardlite.kb import cli as _kb_cli  # noqa: E402

app.add_typer(_kb_cli.app, name="kb", rich_help_panel=PANEL_DATA)
from kardlite.teacher import cli as _teacher_cli  # noqa: E402

app.command("teach", rich_help_panel=PANEL_DATA)(_teacher_cli.teach)
from kardlite.rationales import cli as _rationales_cli  # noqa: E402

app.add_typer(_rationales_cli.app, name="rationales", rich_help_panel=PANEL_DATA)
from kardlite.distill import cli as _distill_cli  # noqa: E402

app.add_typer(_distill_cli.distill_app, name="distill", rich_help_panel=PANEL_TRAIN)
app.add_typer(train_app, name="train", rich_help_panel=PANEL_TRAIN)
train_app.command("student")(_distill_cli.train_student_cmd)
from kardlite.rerank import cli as _rerank_cli  # noqa: E402

train_app.command("reranker")(_rerank_cli.train)
app.add_typer(_rerank_cli.app, name="rerank", rich_help_panel=PANEL_TRAIN)
app.add_typer(_distill_cli.eval_app, name="eval", rich_help_panel=PANEL_TRAIN)
from kardlite.export import cli as _export_cli  # noqa: E402
from kardlite.runtime import cli as _runtime_cli  # noqa: E402

app.add_typer(_export_cli.app, name="export", rich_help_panel=PANEL_SHIP)
app.command("ask", rich_help_panel=PANEL_SHIP)(_runtime_cli.ask)
app.command("info", rich_help_panel=PANEL_SHIP)(_export_cli.info)
from kardlite.demo import cli as _demo_cli  # noqa: E402
from kardlite.demo import train_adapter as _train_adapter  # noqa: E402

app.add_typer(_demo_cli.app, name="demo", rich_help_panel=PANEL_SHIP)
train_app.command("demo-adapter")(_train_adapter.adapter)
# --- end of stage registrations ---


def main() -> None:
    app()


if __name__ == "__main__":
    main()
