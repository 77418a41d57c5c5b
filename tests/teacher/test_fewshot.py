from __future__ import annotations

from pathlib import Path

import pytest

from kardlite.data.records import QAItem
from kardlite.errors import InputError
from kardlite.teacher.fewshot import BUILTIN_PROMPTS, build_messages, load_fewshot, prompt_hash

ITEM = QAItem("q1", "Which gas do plants take in?", ("oxygen", "carbon dioxide", "helium"), 1)


@pytest.mark.parametrize("name", BUILTIN_PROMPTS)
def test_builtin_prompts_have_three_worked_examples(name: str) -> None:
    fs = load_fewshot(name)
    assert len(fs.examples) == 3 and fs.system
    for ex in fs.examples:
        assert ex.explanation.endswith(f"So, the answer is ({ex.item.answer_letter}).")


def test_rationalize_shows_the_gold_answer_and_cot_hides_it() -> None:
    fs = load_fewshot("obqa")
    rat = build_messages(ITEM, fs, "rationalize")
    cot = build_messages(ITEM, fs, "cot")
    assert rat[0]["role"] == "system" and [m["role"] for m in rat[1:3]] == ["user", "assistant"]
    assert len(rat) == 2 + 2 * len(fs.examples)
    assert rat[-1]["content"].startswith(f"Question: {ITEM.linearize()}\n")
    assert "(B) carbon dioxide" in rat[-1]["content"]
    assert "(B)" not in cot[-1]["content"] and "carbon dioxide" in cot[-1]["content"]
    assert prompt_hash(rat) != prompt_hash(cot) and prompt_hash(rat) == prompt_hash(build_messages(ITEM, fs))


def test_unlabeled_item_cannot_be_rationalized() -> None:
    with pytest.raises(InputError, match="no gold label"):
        build_messages(QAItem("q", "?", ("a", "b"), None), load_fewshot("generic"))


def test_custom_prompt_file_and_its_errors(tmp_path: Path) -> None:
    good = tmp_path / "mine.txt"
    good.write_text("# a comment\n### system\nBe brief.\n### example\nQuestion: 1+1?\nA. 2\nB. 3\nAnswer: A\n"
                    "Explanation: One plus one is two.\n")
    fs = load_fewshot(good)
    assert fs.name == "mine" and fs.examples[0].explanation == "One plus one is two. So, the answer is (A)."
    bad = tmp_path / "bad.txt"
    bad.write_text("### system\nBe brief.\n### example\nQuestion: 1+1?\nA. 2\nB. 3\nAnswer: C\nExplanation: x\n")
    with pytest.raises(InputError, match=r"bad\.txt"):
        load_fewshot(bad)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("### system\nx\n### example\nQuestion: q\nA. a\nB. b\nAnswer: A\n"
                     "Explanation: b. So, the answer is (B).\n")
    with pytest.raises(InputError, match="concludes"):
        load_fewshot(wrong)
    with pytest.raises(InputError, match="unknown prompt"):
        load_fewshot("nosuchprompt")
