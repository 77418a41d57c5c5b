"""The GGUF evaluation back-end against the PyTorch one, on the tiny fixture student and its real GGUF export."""

from __future__ import annotations

from pathlib import Path

import pytest

from kardlite.data.records import QAItem
from kardlite.errors import InputError
from tests.distill.conftest import ITEMS

pytestmark = pytest.mark.slow

QUESTIONS = [*ITEMS,
             QAItem("q7", "What orbits the earth once a month?", ("the sun", "the moon", "mars"), 1),
             QAItem("q8", "What does an animal need to survive?", ("food", "plastic", "noise", "paint", "sand"), 0)]
N_NEW = 12
# The tiny random student has huge logits (init range 0.5), so its GGUF is checked in f16: already Q8_0 rounding
# moves them enough to flip its greedy path within a few tokens (the Q8_0 agreement of a real student is measured
# in bench/eval_backends.py). Log-probabilities may differ by f16 rounding: 0.05 nats plus 2% of their size.
ABS_TOL, REL_TOL = 0.05, 0.02
MIN_SAME_GREEDY = 6            # of 8 greedy texts identical; a split is possible at an exact tie of the logits


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= ABS_TOL + REL_TOL * abs(b)


@pytest.fixture(scope="module")
def backends(tiny_student: Path, tiny_bundle: Path):
    from kardlite.distill.gguf_eval import GGUFBackend
    from kardlite.distill.student import load_student

    be = GGUFBackend(tiny_bundle / "student.gguf", threads=2, n_ctx=1024)
    yield load_student(tiny_student), be
    be.close()


def test_greedy_generation_agrees_with_pytorch(backends) -> None:
    from kardlite.distill.evaluate import EvalConfig, generate
    from kardlite.prompts import parse_answer

    student, be = backends
    prompts = [student.prompt(it, "rd", max_tokens=256).text for it in QUESTIONS]
    n_opts = [len(it.options) for it in QUESTIONS]
    assert [be.tokenize(p) for p in prompts] == [student.encode(p) for p in prompts]
    torch_out = generate(student, [student.encode(p) for p in prompts], n_opts, EvalConfig(max_new_tokens=N_NEW))
    gguf_out = be.generate(prompts, n_opts, max_new_tokens=N_NEW)
    assert all(len(o) == 1 and o[0] for o in gguf_out)
    # transformers' decode (evaluate.generate) drops the space before punctuation (clean_up_tokenization_spaces);
    # llama.cpp's detokenizer, like the runtime, keeps the text as generated.
    clean = student.tokenizer.clean_up_tokenization
    same = sum(clean(a[0]) == clean(b[0]) for a, b in zip(torch_out, gguf_out, strict=True))
    assert same >= MIN_SAME_GREEDY, list(zip(torch_out, gguf_out, strict=True))
    letters = [(parse_answer(a[0], n), parse_answer(b[0], n)) for a, b, n in zip(torch_out, gguf_out, n_opts,
                                                                               strict=True)]
    assert sum(a == b for a, b in letters) >= MIN_SAME_GREEDY


def test_letter_logprobs_agree_with_pytorch(backends) -> None:
    import math

    from kardlite.distill.evaluate import score_letters

    student, be = backends
    prompts = [student.prompt(it, "ft", max_tokens=256).text for it in QUESTIONS]
    n_opts = [len(it.options) for it in QUESTIONS]
    ours = be.score_letters(prompts, n_opts)
    ref = score_letters(student, [student.encode(p) for p in prompts], n_opts)
    assert [len(r) for r in ours] == n_opts
    assert all(_close(a, b) for r, s in zip(ours, ref, strict=True) for a, b in zip(r, s, strict=True)), (ours, ref)
    assert all(v < 0 and math.isfinite(v) for r in ours for v in r)
    # A forced answer after a (model-side) rationale: prompt ids + separately tokenised suffix, as evaluate does.
    rd = [student.prompt(it, "rd", max_tokens=256).text for it in QUESTIONS[:3]]
    suffix = [" Plants release oxygen.\nAnswer:"] * 3
    forced = be.score_letters(rd, n_opts[:3], suffixes=suffix)
    ref_ids = [student.encode(p) + student.encode(x) for p, x in zip(rd, suffix, strict=True)]
    forced_ref = score_letters(student, ref_ids, n_opts[:3])
    assert all(_close(a, b) for r, s in zip(forced, forced_ref, strict=True) for a, b in zip(r, s, strict=True))
    # The ranking the FT scorer uses: the same best letter wherever PyTorch's best is not a near-tie.
    for r, s in zip(ours, ref, strict=True):
        top = sorted(s, reverse=True)
        if top[0] - top[1] > 2 * (ABS_TOL + REL_TOL * abs(top[0])):
            assert r.index(max(r)) == s.index(max(s))


def test_continuation_scores_agree_with_pytorch(backends) -> None:
    import torch

    student, be = backends
    items = QUESTIONS[:4]
    prompts = [student.prompt(it, "ft", max_tokens=256).text for it in items]
    conts = [[f" {o}" for o in it.options] + [" B\nAnswer: C"] for it in items]
    ours = be.score_continuations(prompts, conts)
    for prompt, cs, row in zip(prompts, conts, ours, strict=True):
        p_ids = student.encode(prompt)
        for cont, score in zip(cs, row, strict=True):
            c_ids = student.encode(cont)
            with torch.inference_mode():
                logits = student.model(torch.tensor([p_ids + c_ids])).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            ref = sum(float(logp[len(p_ids) - 1 + k, t]) for k, t in enumerate(c_ids))
            assert score.n_tokens == len(c_ids)
            assert _close(score.mean, ref / len(c_ids)), (cont, score, ref)
            assert score.total == pytest.approx(score.mean * score.n_tokens)
    # Scoring is independent of the order and company of continuations (each starts from the prompt's cache).
    again = be.score_continuations(prompts[:1], [list(reversed(conts[0]))])[0]
    assert [s.total for s in again] == pytest.approx([s.total for s in reversed(ours[0])], abs=1e-4)


def test_self_consistency_is_seeded_and_capped(backends) -> None:
    student, be = backends
    prompts = [student.prompt(it, "rd", max_tokens=256).text for it in QUESTIONS[:2]]
    kw = {"max_new_tokens": 6, "decoding": "sc", "samples": 3, "top_k": 50, "top_p": 0.95, "temperature": 1.0}
    a = be.generate(prompts, [4, 4], seed=1, **kw)
    b = be.generate(prompts, [4, 4], seed=1, **kw)
    c = be.generate(prompts, [4, 4], seed=2, **kw)
    assert a == b and [len(x) for x in a] == [3, 3]
    assert a != c  # a random tiny model at temperature 1 does not repeat itself across seeds


def test_bad_arguments_are_input_errors(backends) -> None:
    _, be = backends
    with pytest.raises(InputError, match="2 prompts but 1 option counts"):
        be.generate(["a", "b"], [4])
    with pytest.raises(InputError, match="unknown decoding"):
        be.generate(["a"], [4], decoding="beam")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="exceed the context window of 1024 tokens"):
        be.generate(["word " * 1100], [4], max_new_tokens=8)


def test_evaluate_through_the_gguf_backend_matches_pytorch(tmp_path, tiny_student: Path, tiny_bundle: Path) -> None:
    import json

    from kardlite.distill.evaluate import EvalConfig, evaluate

    gguf = str(tiny_bundle / "student.gguf")
    rows = {}
    for backend in ("torch", "gguf"):
        for mode in ("ft", "rd"):
            cfg = EvalConfig(mode=mode, max_new_tokens=N_NEW, max_source_tokens=256, backend=backend,
                             gguf=gguf if backend == "gguf" else None)
            m = evaluate(tiny_student, QUESTIONS, tmp_path / f"{backend}-{mode}", cfg)
            assert m["n"] == len(QUESTIONS) and m["invalid"] == 0  # letters scored, or forced at the cap
            rows[backend, mode] = [json.loads(x) for x in
                                   (tmp_path / f"{backend}-{mode}" / "predictions.jsonl").read_text().splitlines()]
    same_ft = sum(a["prediction"] == b["prediction"] for a, b in zip(rows["torch", "ft"], rows["gguf", "ft"],
                                                                      strict=True))
    same_rd = sum(a["prediction"] == b["prediction"] for a, b in zip(rows["torch", "rd"], rows["gguf", "rd"],
                                                                      strict=True))
    assert same_ft == len(QUESTIONS) and same_rd >= MIN_SAME_GREEDY
    settings = json.loads((tmp_path / "gguf-rd" / "eval.json").read_text())
    assert settings["backend"] == "gguf" and settings["gguf"] == gguf
