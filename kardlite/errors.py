"""Errors kardlite raises on purpose. Each names what is wrong and where, so a user can fix it."""

from __future__ import annotations

from pathlib import Path


class KardliteError(Exception):
    """Base class for every error kardlite raises deliberately."""


class InputError(KardliteError, ValueError):
    """Bad user input, located as precisely as we know: file, line (1-based) and field."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        where = []
        if self.path:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if field:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class ArtifactError(KardliteError):
    """A saved artefact (index, store, bundle) is missing, truncated, altered or of another version."""


class MissingExtraError(KardliteError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""

    def __init__(self, package: str, extra: str | None) -> None:
        """``extra``: the pip extra of kardlite that brings ``package``, or None when no extra does (a core dependency
        missing from a broken install, or an optional package of its own): then the hint installs it directly."""
        self.package = package
        self.extra = extra
        target = f"kardlite[{extra}]" if extra else package
        super().__init__(f"{package} is needed for this; install it with: pip install '{target}'")
