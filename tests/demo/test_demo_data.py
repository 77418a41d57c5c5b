"""The embedded demo data is what the issue promises: enough passages and questions, consistent links."""

from __future__ import annotations

from collections import Counter

import pytest

from kardlite.demo import demo_passages, demo_questions
from kardlite.errors import InputError
from kardlite.prompts import parse_answer


def test_sizes_and_splits() -> None:
    passages = demo_passages()
    assert len(passages) >= 300
    assert len({p.id for p in passages}) == len(passages)
    assert all(p.title.strip() and len(p.text.split()) >= 20 for p in passages)
    splits = Counter(item.meta["split"] for item in demo_questions())
    assert splits["train"] >= 100 and splits["dev"] >= 25 and splits["test"] >= 25
    assert sum(splits.values()) >= 150
    assert [i.id for i in demo_questions("test")] == [i.id for i in demo_questions() if i.meta["split"] == "test"]


def test_an_unknown_split_is_an_error_not_an_empty_list() -> None:
    with pytest.raises(InputError, match="'val'") as err:
        demo_questions("val")  # type: ignore[arg-type]
    assert err.value.field == "split"


def test_questions_link_to_existing_passages_and_have_rationales() -> None:
    ids = {p.id for p in demo_passages()}
    for item in demo_questions():
        assert len(item.options) == 4 and item.label is not None
        assert 1 <= len(item.meta["passage_ids"]) <= 2 and set(item.meta["passage_ids"]) <= ids, item.id
        rationales = item.meta["rationales"]
        if item.meta["split"] == "train":
            assert len(rationales) == 2 and rationales[0] != rationales[1], item.id
            for text in rationales:
                stated = parse_answer(text, 4)
                assert stated in (None, item.label), f"{item.id}: rationale states another answer"
        else:
            assert rationales == []


def test_gold_letters_are_balanced() -> None:
    letters = Counter(item.label for item in demo_questions())
    assert set(letters) == {0, 1, 2, 3}
    assert max(letters.values()) < 0.4 * sum(letters.values())
