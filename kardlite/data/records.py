"""The one task record every loader produces and every stage consumes."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

LETTERS = string.ascii_uppercase
MAX_OPTIONS = 10  # A-J; more options than this is almost surely a parsing mistake


@dataclass(frozen=True)
class QAItem:
    """One multiple-choice question.

    Attributes:
        id: unique within its task.
        question: the stem, without options.
        options: option texts in order; option i is shown with letter LETTERS[i].
        label: index of the gold option, or None for unlabeled items.
        meta: anything else the source carried (e.g. OpenBookQA's ``fact1``), JSON-serialisable.
    """

    id: str
    question: str
    options: tuple[str, ...]
    label: int | None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Invariants; loaders turn user mistakes into InputError before constructing.
        if not 2 <= len(self.options) <= MAX_OPTIONS:
            raise ValueError(f"item {self.id!r}: {len(self.options)} options, expected 2 to {MAX_OPTIONS}")
        if self.label is not None and not 0 <= self.label < len(self.options):
            raise ValueError(f"item {self.id!r}: label {self.label} out of range for {len(self.options)} options")
        object.__setattr__(self, "options", tuple(self.options))

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options)]

    @property
    def answer_letter(self) -> str | None:
        return None if self.label is None else LETTERS[self.label]

    def linearize(self) -> str:
        """The stem, then each option as ``A. text`` on its own line. Used in prompts and as a retrieval query."""
        lines = [self.question.strip()]
        lines += [f"{LETTERS[i]}. {opt.strip()}" for i, opt in enumerate(self.options)]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "question": self.question, "options": list(self.options), "label": self.label,
                "meta": self.meta}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> QAItem:
        return cls(id=str(row["id"]), question=row["question"], options=tuple(row["options"]),
                   label=row.get("label"), meta=row.get("meta") or {})
