"""The one question-disjoint train/dev split, shared by student distillation and reranker training."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from kardlite.errors import InputError

T = TypeVar("T")


def _item_id(row: Any) -> str:
    return str(row["item_id"] if isinstance(row, dict) else row.item_id)


def split_by_question(rows: Sequence[T], dev_fraction: float, seed: int, *,
                      key: Callable[[T], str] = _item_id) -> tuple[list[T], list[T]]:
    """Split rows so that all rows of one question (``key``, default the ``item_id``) land on the same side.

    The sorted question ids are shuffled with ``seed`` and the first ``round(dev_fraction * n)`` are dev. With a
    positive ``dev_fraction`` and at least 2 questions, dev holds at least one question and train at least one.

    Args:
        rows: dicts or objects with an ``item_id``.
        dev_fraction: share of questions held out, in [0, 1).
        seed: shuffle seed.
        key: the question id of a row.

    Returns:
        (train rows, dev rows), each in input order; dev is empty when ``dev_fraction`` is 0 or there are fewer
        than 2 questions.

    Raises:
        InputError: ``dev_fraction`` outside [0, 1).
    """
    if not 0 <= dev_fraction < 1:
        raise InputError(f"dev_fraction must be in [0, 1), got {dev_fraction}", field="dev_fraction")
    ids = sorted({key(r) for r in rows})
    random.Random(seed).shuffle(ids)
    # at least one question on each side whenever a dev set is asked for and possible
    n_dev = min(max(round(dev_fraction * len(ids)), 1), len(ids) - 1) if dev_fraction > 0 and len(ids) >= 2 else 0
    dev_ids = set(ids[:n_dev])
    return [r for r in rows if key(r) not in dev_ids], [r for r in rows if key(r) in dev_ids]
