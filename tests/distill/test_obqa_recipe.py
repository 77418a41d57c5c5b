"""The recipe script's scoring (bench/distill/obqa_recipe.py) runs against today's library, every mode and format."""

from __future__ import annotations

from pathlib import Path

import pytest

from kardlite.kb.passage import Passage
from tests.conftest import load_script
from tests.distill.conftest import ITEMS

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "distill" / "obqa_recipe.py"


@pytest.fixture(scope="module")
def recipe():
    return load_script(SCRIPT)


@pytest.mark.parametrize(("mode", "fmt"), [("ft", "letter"), ("ft", "both"), ("ka-ft", "text"), ("kard", "both"),
                                           ("rd", "text")])
def test_every_scoring_of_an_arm_reads_a_letter_per_question(recipe, tiny_llama_dir, mode, fmt):
    from kardlite.distill.student import load_student

    student = load_student(str(tiny_llama_dir))
    items = ITEMS[:3]
    passages = [[Passage(f"{it.id}-p", "", f"Fact about {it.options[it.label]}.")] for it in items]
    facts = {it.id: recipe._norm(f"Fact about {it.options[it.label]}.") for it in items}
    ways = recipe.scorings(mode, fmt)
    rows = recipe.score(student, items, passages, mode, fmt, ways, 6, facts)
    assert [r["id"] for r in rows] == [it.id for it in items]
    for row, it in zip(rows, items, strict=True):
        assert set(row["pred"]) == set(ways) and row["gold"] == "ABCD"[it.label]
        assert all(p is None or p in "ABCD"[:len(it.options)] for p in row["pred"].values())
        # option-text scoring always picks one option; a generated answer may be missing (None)
        assert row["pred"]["text"] is not None
        assert row["fact_shown"] is (True if mode in ("kard", "ka-ft") else None)
        assert ("output" in row) == (mode in ("rd", "kard"))


@pytest.mark.parametrize("finished", [False, True])
def test_the_page_names_the_choice_final_only_once_every_arm_has_run(recipe, finished):
    arm = {"mode": "ft", "answer_format": "text", "lr": 1e-3, "freeze_layers": 0, "accuracy": 0.4, "ci_low": 0.335,
           "ci_high": 0.47, "start_accuracy": 0.29, "invalid_rate": 0.0, "curve": None, "tokens_per_s": 200.0}
    page = recipe.render_page({"arms": {"ft-best-lr1e-3/text": arm}, "chosen": "ft-best-lr1e-3/text",
                               "finished": finished})
    assert ("**Chosen: `ft-best-lr1e-3/text`**" in page) is finished
    assert ("**Best so far: `ft-best-lr1e-3/text`**" in page) is not finished
    assert ("provisional" in page) is not finished and "meets the +5-point bar" in page
