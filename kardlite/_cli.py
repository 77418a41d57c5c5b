"""What every stage's CLI shares: user errors print one line and exit 2, without a traceback."""

from __future__ import annotations

import typer

from kardlite.errors import KardliteError


def fail(err: KardliteError) -> typer.Exit:
    """Print ``error: <message>`` to stderr and return the Exit to raise (``raise fail(err) from None``)."""
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(code=2)
