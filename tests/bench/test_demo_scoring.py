"""bench/demo_scoring.py: each way of reading option scores picks what it says, and the bench's ``mean`` is the
trained demo bundle's own answer (so its other rows are readings of the same scores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import load_script, needs_trained_demo

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "demo_scoring.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT)


ROW = {  # [total log-likelihood, tokens] per option, with the passages shown and without
    "options": ["loop diuretic", "thiazide", "carbonic anhydrase inhibitor", "osmotic agent"],
    "passages": ["Thiazides lower urinary calcium."],
    "with": [[-2.0, 1], [-3.0, 1], [-6.3, 3], [-3.2, 4]],     # means -2.0, -3.0, -2.1, -0.8
    "without": [[-2.5, 1], [-6.0, 1], [-6.6, 3], [-2.0, 4]],  # means -2.5, -6.0, -2.2, -0.5
}


@pytest.mark.parametrize(("way", "index"), [
    ("mean", 3),          # -0.8 per token
    ("sum", 0),           # -2.0 in all: the short option, which the mean does not favour
    ("pmi", 1),           # the passages raise "thiazide" by 3.0 nats (A +0.5, C +0.3, D -1.2)
    ("mean+pmi", 1),      # per token: A -1.5, B 0.0, C -2.0, D -1.1
    ("no-passages", 3),   # -0.5 per token without passages
    ("word-overlap", 0),  # "thiazide" is not a word of the passage ("thiazides" is): a four-way tie, the first wins
])
def test_each_way_picks_by_its_own_rule(bench, way: str, index: int) -> None:
    assert bench.pick(way, ROW) == index


def test_word_overlap_reads_the_passages(bench) -> None:
    row = {**ROW, "passages": ["An osmotic agent such as mannitol."]}
    assert bench.pick("word-overlap", row) == 3


def test_an_unknown_way_is_refused(bench) -> None:
    with pytest.raises(ValueError, match="unknown way"):
        bench.pick("vote", ROW)


@pytest.mark.slow
@needs_trained_demo
def test_mean_is_the_bundle_s_own_answer(bench, demo_bundle_trained: Path) -> None:
    rows = bench.measure(demo_bundle_trained, limit=2)
    assert [r["split"] for r in rows] == ["dev", "dev", "test", "test"]
    summary = bench.summarise(rows)
    assert summary["mean_is_the_bundle_s_answer"] == 1.0
    assert set(summary["accuracy"]) == set(bench.WAYS) and summary["chosen_on_dev"] != "word-overlap"
    for r in rows:  # the passages change the scores: with and without are not the same prompt
        assert r["with"] != r["without"] and all(n > 0 for _, n in r["with"])
