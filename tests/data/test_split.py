from __future__ import annotations

from dataclasses import dataclass

import pytest

from kardlite.data.split import split_by_question
from kardlite.distill.train import split_by_question as distill_split
from kardlite.errors import InputError


@dataclass
class _Row:
    item_id: str
    n: int


def test_question_disjoint_seeded_and_shared() -> None:
    rows = [{"item_id": f"q{i % 10}", "n": i} for i in range(40)]
    train, dev = split_by_question(rows, 0.2, seed=1)
    assert {r["item_id"] for r in train}.isdisjoint({r["item_id"] for r in dev})
    assert len({r["item_id"] for r in dev}) == 2 and len(train) + len(dev) == 40
    assert split_by_question(rows, 0.2, seed=1) == (train, dev)
    assert split_by_question(rows, 0.2, seed=2) != (train, dev)
    # Objects split by their item_id attribute exactly like dicts with the same ids.
    objs = [_Row(r["item_id"], r["n"]) for r in rows]
    assert [o.n for o in split_by_question(objs, 0.2, seed=1)[1]] == [r["n"] for r in dev]
    assert distill_split is split_by_question


def test_small_sets() -> None:
    rows = [{"item_id": q} for q in ("a", "b", "b", "c")]
    train, dev = split_by_question(rows, 0.05, seed=0)  # round(0.15) = 0, but a positive share keeps one question
    assert len({r["item_id"] for r in dev}) == 1 and train
    assert split_by_question(rows, 0.0, seed=0) == (rows, [])
    assert split_by_question(rows[:1], 0.5, seed=0) == (rows[:1], [])
    with pytest.raises(InputError) as err:
        split_by_question(rows, 1.0, seed=0)
    assert err.value.field == "dev_fraction"
