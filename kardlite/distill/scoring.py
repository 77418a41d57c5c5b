"""The PyTorch student's model calls for evaluation: letter and continuation scoring, batched generation.

The llama.cpp equivalents are :class:`kardlite.gguf_student.GGUFStudent`'s; :mod:`kardlite.distill.evaluate` runs
either (its ``backend``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kardlite.answers import AnswerFormat, answer_done, option_continuations
from kardlite.answers import letter_token_ids as prompt_letter_ids
from kardlite.distill.student import Student
from kardlite.errors import InputError
from kardlite.settings import InferenceSettings

if TYPE_CHECKING:
    from kardlite.distill.evaluate import EvalConfig

def _left_pad(seqs: list[list[int]], pad: int) -> tuple[Any, Any]:
    import torch

    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s):] = torch.tensor(s)
        mask[i, n - len(s):] = 1
    return ids, mask


def _right_pad(seqs: list[list[int]], pad: int) -> tuple[Any, Any]:
    import torch

    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def letter_token_ids(student: Student, n_options: int) -> list[int]:
    """The token that starts the target `` X`` for each option letter (what an FT student learnt to write)."""
    return prompt_letter_ids(student.encode, n_options)


def score_letters(student: Student, prompts: list[list[int]], n_options: list[int]) -> list[list[float]]:
    """Log-probabilities of each option letter as the next token after each prompt."""
    import torch

    model, tok = student.model, student.tokenizer
    with torch.no_grad():
        if student.kind == "seq2seq":
            ids, mask = _right_pad(prompts, tok.pad_token_id)
            start = model.config.decoder_start_token_id
            dec = torch.full((len(prompts), 1), start, dtype=torch.long)
            logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits[:, -1]
        else:
            ids, mask = _left_pad(prompts, tok.pad_token_id)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[:, -1]
        logp = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for row, n in zip(logp, n_options, strict=True):
        letters = letter_token_ids(student, n)
        out.append([float(row[t]) for t in letters])
    return out


def score_option_texts(student: Student, prompts: list[list[int]], options: list[Sequence[str]],
                       answer_format: AnswerFormat = "letter") -> list[list[float]]:
    """Mean log-likelihood of each option's answer as the continuation of each prompt: `` <text>``, or
    `` (X) <text>`` for a student trained on the ``both`` format.

    Small models tie letters to options poorly; the option's own words are often the better read of what they
    mean. Causal students only.
    """
    conts = option_continuations(options, answer_format)
    return [[mean for mean, _ in row] for row in score_continuations(student, prompts, conts)]


def score_continuations(student: Student, prompts: list[list[int]], continuations: list[Sequence[str]]
                        ) -> list[list[tuple[float, float]]]:
    """(mean, total) log-likelihood of each continuation text after its prompt, tokenised as plain text."""
    import torch

    if student.kind != "causal":
        raise InputError("continuation scoring needs a causal (decoder-only) student", field="answer_scoring")
    seqs, spans = [], []
    for prompt, conts in zip(prompts, continuations, strict=True):
        for text in conts:
            cont = student.encode(text, special=False) or student.encode(text.strip(), special=False)
            seqs.append(prompt + cont)
            spans.append(len(cont))
    out: list[tuple[float, float]] = []
    model, tok = student.model, student.tokenizer
    with torch.no_grad():
        for i in range(0, len(seqs), 16):
            part, lens = seqs[i:i + 16], spans[i:i + 16]
            ids, mask = _left_pad(part, tok.pad_token_id)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            keep = max(lens) + 1
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[:, -keep:-1]
            logp = torch.log_softmax(logits.float(), dim=-1)
            for row, n in enumerate(lens):
                targets = ids[row, -n:]
                picked = logp[row, -n:].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                out.append((float(picked.mean()), float(picked.sum())))
    result, pos = [], 0
    for conts in continuations:
        result.append(out[pos:pos + len(conts)])
        pos += len(conts)
    return result


def decode_until_stop(tokenizer: Any, seqs: list[list[int]], stop_ids: Sequence[int]) -> list[str]:
    """Decode each generated sequence up to (not including) its first stop token.

    Skipping special tokens instead would glue ``Answer: B`` to whatever the model wrote after its eos
    (``Answer: Buser``), which no longer parses.
    """
    out = []
    for seq in seqs:
        end = next((i for i, t in enumerate(seq) if t in stop_ids), len(seq))
        out.append(tokenizer.decode(seq[:end], skip_special_tokens=True))
    return out


def generate(student: Student, prompts: list[list[int]], n_options: list[int],
             cfg: EvalConfig | InferenceSettings) -> list[list[str]]:
    """Generate one (greedy) or ``cfg.samples`` (self-consistency) outputs per prompt; returns texts per prompt."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    cfg = cfg if isinstance(cfg, InferenceSettings) else cfg.settings()
    model, tok = student.model, student.tokenizer
    n_ret = cfg.samples if cfg.decoding == "sc" else 1
    if student.kind == "seq2seq":
        ids, mask = _right_pad(prompts, tok.pad_token_id)
        skip = 1  # the decoder start token
    else:
        ids, mask = _left_pad(prompts, tok.pad_token_id)
        skip = ids.shape[1]
    row_options = [n for n in n_options for _ in range(n_ret)]
    # A student is trained to end its target with the tokenizer's eos token, which need not be the model's
    # generation eos (SmolLM2 from GGUF: <|im_start|> vs <|im_end|>): stop on either.
    gen_eos = model.generation_config.eos_token_id
    gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
    stop_ids = sorted({i for i in [tok.eos_token_id, *gen_eos] if i is not None})

    def _texts(seqs: Any) -> list[str]:
        return decode_until_stop(tok, seqs.tolist(), stop_ids)

    class _StopAtAnswer(StoppingCriteria):
        # Stop a row once it has written a complete "Answer: X": the rest would be discarded anyway.
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            texts = _texts(input_ids[:, skip:])
            ended = [bool(set(row) & set(stop_ids)) for row in input_ids[:, skip:].tolist()]
            return torch.tensor([e or answer_done(t, n) for t, e, n in zip(texts, ended, row_options, strict=True)],
                                dtype=torch.bool, device=input_ids.device)

    kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "pad_token_id": tok.pad_token_id,
                              "eos_token_id": stop_ids, "stopping_criteria": StoppingCriteriaList([_StopAtAnswer()])}
    if cfg.decoding == "sc":
        kwargs.update(do_sample=True, top_k=cfg.top_k, top_p=cfg.top_p, temperature=cfg.temperature,
                      num_return_sequences=cfg.samples)
    else:
        kwargs.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    texts = _texts(out[:, skip:])
    return [texts[i * n_ret:(i + 1) * n_ret] for i in range(len(prompts))]


