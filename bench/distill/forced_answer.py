"""Diagnostic for docs/results/obqa-cpu.md: how many invalid outputs were only cut by the token cap?

For every question of a finished rd/kard ``kardlite eval`` run whose output has no parsable ``Answer: X``, append
the answer line the student was trained to end with (``\\nAnswer:``, unless the output already ends with
``Answer:``) to prompt + output and take the option letter the student gives the highest next-token probability
(the letter scoring FT students get). Valid outputs keep their parsed letter. Reported next to the strict
accuracy (an invalid output is wrong, as in the paper), never instead of it: it tells whether a larger
generation budget would change the picture, without re-generating.

    .venv/bin/python bench/distill/forced_answer.py runs/distill-obqa/eval-rd runs/distill-obqa/student-rd \\
        $OBQA/Main/test.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kardlite.data import load_task
from kardlite.data.records import LETTERS
from kardlite.distill.evaluate import score_letters
from kardlite.distill.student import load_student


def main(eval_dir: str, student_dir: str, tasks: str) -> None:
    lines = (Path(eval_dir) / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    n_opts = {it.id: len(it.options) for it in load_task(tasks)}
    student = load_student(student_dir)
    student.model.eval()
    invalid = [r for r in rows if r["invalid"]]
    forced: dict[str, str] = {}
    for start in range(0, len(invalid), 4):
        batch = invalid[start:start + 4]
        texts = []
        for r in batch:
            out = r["outputs"][0].rstrip()
            texts.append(r["prompt"] + out + ("" if out.endswith("Answer:") else "\nAnswer:"))
        scores = score_letters(student, [student.encode(t) for t in texts], [n_opts[r["id"]] for r in batch])
        for r, s in zip(batch, scores, strict=True):
            forced[r["id"]] = LETTERS[max(range(len(s)), key=s.__getitem__)]
    n = len(rows)
    strict = sum(r["correct"] for r in rows)
    with_forced = strict + sum(forced[r["id"]] == r["gold"] for r in invalid)
    ends_with_cue = sum(r["outputs"][0].rstrip().endswith("Answer:") for r in invalid)
    print(json.dumps({"eval": eval_dir, "n": n, "strict_accuracy": round(strict / n, 3), "invalid": len(invalid),
                      "invalid_ending_in_answer_cue": ends_with_cue,
                      "accuracy_with_forced_answers": round(with_forced / n, 3),
                      "accuracy_of_valid_outputs": round(strict / max(n - len(invalid), 1), 3),
                      "forced_correct": with_forced - strict,
                      "forced_letters": {k: list(forced.values()).count(k) for k in sorted(set(forced.values()))}},
                     indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:4])
