"""Errors kardlite raises on purpose. Each names what is wrong and where, so a user can fix it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# Characters that would break an error's one line or hide part of it: C0/C1 controls (newline, carriage return,
# escape sequences), DEL, the Unicode line and paragraph separators, and the bidirectional overrides/isolates
# that reorder what a terminal shows. A single character class: linear time.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(value: Any) -> str:
    r"""``value`` as text for an error message or log line: every control character escaped (``\n``,
    ``\x1b``, ``\u2028``), so that a file name or value from a user can neither span lines nor forge one.

    Example:
        >>> printable("x\nerror: all good")
        'x\\nerror: all good'
    """
    text = value if isinstance(value, str) else str(value)

    def escape(m: re.Match[str]) -> str:
        ch = m.group()
        if ch in _SHORT:
            return _SHORT[ch]
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"

    return _UNPRINTABLE.sub(escape, text)


class KardliteError(Exception):
    """Base class for every error kardlite raises deliberately. Its message is made printable (control characters
    escaped, see :func:`printable`): one error is one line, whatever path or value it quotes."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*(printable(a) if isinstance(a, str) else a for a in args))


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
