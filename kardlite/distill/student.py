"""A student language model with its tokenizer and the one prompt builder, for training and evaluation alike.

Decoder-only students (SmolLM2, Gemma, any ``AutoModelForCausalLM``) read the prompt rendered with their
own chat template when they have one; encoder-decoder students (Flan-T5, any ``AutoModelForSeq2SeqLM``)
read plain text. Either way the prompt comes from ``kardlite.prompts.build_prompt`` with the student's
tokenizer as the token counter, so the budget is exact and identical in training and inference.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kardlite.data.records import QAItem
from kardlite.errors import ArtifactError, InputError, MissingExtraError
from kardlite.prompts import AnswerFormat, Mode, PassageLike, Prompt, Segment, build_prompt, check_answer_format

Kind = Literal["causal", "seq2seq"]
STUDENT_FILE = "kardlite_student.json"  # written next to a trained student's weights
DEFAULT_STUDENT = "smollm2"  # the packaged SmolLM2-135M-Instruct


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        raise MissingExtraError(err.name or "torch", "train") from None


@dataclass
class Student:
    """A model, its tokenizer and how prompts are rendered for it.

    Attributes:
        model: a transformers model (causal LM or seq2seq LM).
        tokenizer: its tokenizer; decoders get a pad token (eos) if they lack one.
        kind: ``causal`` or ``seq2seq``.
        name: where it came from (path, hub id or ``smollm2``).
        use_chat_template: render prompts with the tokenizer's chat template (decoders that have one).
        info: the ``kardlite_student.json`` of a trained student (mode, max_source_tokens, base, ...), else {}.
    """

    model: Any
    tokenizer: Any
    kind: Kind
    name: str
    use_chat_template: bool
    info: dict[str, Any]

    @property
    def answer_format(self) -> AnswerFormat:
        """How this student writes its answer after ``Answer:`` (from its training; ``letter`` when untrained)."""
        return check_answer_format(self.info.get("answer_format", "letter"))

    def encode(self, text: str | Prompt, *, special: bool = True) -> list[int]:
        """Token ids without added special tokens.

        Args:
            text: a Prompt (its ``segments``: template markup with special tokens, the user turn as plain text;
                what a prompt's input must be encoded with), or a string.
            special: for a string: parse special-token strings (``<|im_end|>``) in it as control tokens (True,
                for trusted markup) or keep them as plain text (False, for data).
        """
        if isinstance(text, Prompt):
            return self.encode_segments(text.segments or ((text.text, False),))
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]

    def encode_segments(self, segments: Sequence[Segment]) -> list[int]:
        """Each segment tokenised on its own: special tokens parsed only in template markup (``True``)."""
        return [i for text, special in segments if text for i in self.encode(text, special=special)]

    def encode_target(self, target: str) -> list[int]:
        """A training target from ``build_prompt`` (or its tail): plain text, except the ``eos_token`` that
        build_prompt appends for chat students, which becomes the one eos id (a rationale cannot add control
        tokens)."""
        eos = self.tokenizer.eos_token or ""
        if self.use_chat_template and eos and target.endswith(eos):
            return self.encode(target[: -len(eos)], special=False) + self.encode(eos)
        return self.encode(target, special=False)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def count_segments(self, segments: Sequence[Segment]) -> int:
        return len(self.encode_segments(segments))

    def prompt(self, item: QAItem, mode: Mode, *, passages: Sequence[PassageLike] = (), rationale: str | None = None,
               with_target: bool = False, max_tokens: int = 512, answer_format: AnswerFormat | None = None) -> Prompt:
        """The student's input for ``item`` via ``build_prompt`` (see there), with exact token counting; the
        answer format defaults to the one the student was trained with (``letter`` for an untrained model)."""
        tok = self.tokenizer
        return build_prompt(
            item, mode, passages=passages, rationale=rationale, with_target=with_target, max_tokens=max_tokens,
            answer_format=answer_format or self.answer_format,
            count_tokens=self.count_tokens, count_segments=self.count_segments,
            chat_template=tok.chat_template if self.use_chat_template else None,
            bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")


def _resolve_dir(path: Path) -> Path:
    # A training run dir holds the merged model in model/; accept both.
    if (path / "model" / "config.json").is_file() and not (path / "config.json").is_file():
        return path / "model"
    return path


def load_student(name_or_path: str | Path | None = None, *, kind: Kind | Literal["auto"] = "auto",
                 use_chat_template: bool | None = None) -> Student:
    """Load a student.

    Args:
        name_or_path: None or ``"smollm2"`` for the packaged SmolLM2-135M-Instruct (GGUF, de-quantised and cached by
            ``kardlite._hf``); a local folder (a trained student, its run dir, any saved HF model); or a hub id
            (needs the hub). Never runs remote code.
        kind: ``causal``, ``seq2seq`` or ``auto`` (from the model config's ``is_encoder_decoder``).
        use_chat_template: force chat-template rendering on or off; default: on for decoders whose tokenizer has
            one, unless the student's own ``kardlite_student.json`` says otherwise.

    Returns:
        A Student in eval mode, fp32.

    Raises:
        ArtifactError: a local path that does not exist or holds no model.
    """
    _require_torch()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    info: dict[str, Any] = {}
    if name_or_path is None or str(name_or_path) == DEFAULT_STUDENT:
        from kardlite._hf import load_causal_lm

        model, tokenizer = load_causal_lm(None)
        name, resolved_kind = DEFAULT_STUDENT, "causal"
    else:
        name = str(name_or_path)
        path = Path(name_or_path)
        path = path.expanduser()
        if path.exists() or name.startswith((".", "/", "~")):
            path = _resolve_dir(path)
            if not (path / "config.json").is_file():
                raise ArtifactError(f"{path}: no model here (config.json missing); expected a saved HF model or a "
                                    "trained student's run dir")
            if (path / STUDENT_FILE).is_file():
                info = json.loads((path / STUDENT_FILE).read_text(encoding="utf-8"))
            source: str = str(path)
        else:
            source = name
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
        resolved_kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
        if kind != "auto" and kind != resolved_kind:
            raise InputError(f"{name}: is a {resolved_kind} model, not {kind}", field="kind")
        auto = AutoModelForSeq2SeqLM if resolved_kind == "seq2seq" else AutoModelForCausalLM
        model = auto.from_pretrained(source, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if use_chat_template is None:
        use_chat_template = info.get("use_chat_template", resolved_kind == "causal" and bool(tokenizer.chat_template))
    if use_chat_template and not tokenizer.chat_template:
        raise InputError(f"{name}: tokenizer has no chat template", field="use_chat_template")
    model.eval()
    return Student(model=model, tokenizer=tokenizer, kind=resolved_kind, name=name,
                   use_chat_template=bool(use_chat_template), info=info)

