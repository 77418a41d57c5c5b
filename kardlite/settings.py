"""How a student is run at test time, each default held once: :class:`InferenceSettings`.

One system is evaluated and shipped: training records the settings it implies beside the student
(``kardlite_student.json``, key ``inference``), ``kardlite eval`` and ``kardlite export bundle`` start from them,
the bundle's manifest stores them (key ``inference``) and the runtime reads them. Every option of those commands
that sets one of these fields takes its help and its default from here (``kardlite._cli.setting_option``), and
``docs/method.md`` carries :func:`settings_table`, which a test keeps equal to the dataclass.

Torch-free: the runtime imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Literal, get_args

from kardlite.errors import InputError
from kardlite.prompts import ANSWER_FORMATS, ANSWER_ONLY_MODES, MODES

KBRetriever = Literal["bm25", "dense", "hybrid"]  # the knowledge base's retrievers
FirstStage = Literal["auto", "bm25", "dense", "hybrid"]
Decoding = Literal["greedy", "sc"]
AnswerScoring = Literal["generated", "letter", "text"]
NoAnswer = Literal["force", "invalid"]

FIRST_STAGES: tuple[str, ...] = get_args(KBRetriever)  # every name of a retriever is spelled here only
ANSWER_ONLY = ANSWER_ONLY_MODES
MIN_N_CTX = 1024


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class InferenceSettings:
    """The test-time path of one student: prompt, retrieval, generation and how the answer is read.

    ``None`` in ``mode`` and ``answer_scoring`` means "follow the student" (its training mode; ``generated`` for
    rd/kard; for ft/ka-ft ``letter`` when it was trained to write the letter, else ``text``);
    ``first_stage="auto"`` means hybrid when the knowledge base has a dense index, else bm25.
    :meth:`resolve` fills them in.
    """

    mode: str | None = _f(None, "prompt format (ft, rd, kard, ka-ft); the mode the student was trained in")
    max_source_tokens: int = _f(512, "prompt token budget; the student's training budget (paper: 512)")
    n_docs: int = _f(5, "passages shown to the student; as many as each training example had (`distill build "
                        "--n-docs`)")
    first_stage: str = _f("auto", "what retrieves with the question: bm25, dense or hybrid; auto = hybrid when "
                                  "the knowledge base has a dense index, else bm25")
    pool: int = _f(50, "first-stage candidates the reranker chooses from (KARD: 100; 50 halves the CPU cost)")
    rerank: bool = _f(True, "rerank the pool when a reranker is given (off: the first stage's top n_docs)")
    max_new_tokens: int = _f(256, "generation cap; the student's longest training target + 16 tokens")
    decoding: str = _f("greedy", "greedy, or sc (self-consistency: samples outputs and a majority vote)")
    samples: int = _f(5, "self-consistency samples (paper: 5)")
    top_k: int = _f(50, "self-consistency top-k (paper: 50)")
    top_p: float = _f(0.95, "self-consistency top-p (paper: 0.95)")
    temperature: float = _f(1.0, "self-consistency temperature (paper: 1.0)")
    seed: int = _f(42, "sampling seed")
    answer_format: str = _f("letter", "how the student writes its answer after 'Answer:' (letter, text or both: "
                                      "'(B) text'); the format it was trained on (`train student --answer-format`)")
    answer_scoring: str | None = _f(None, "generated (read the output's answer line), letter (letter likelihood) "
                                          "or text (option-text likelihood); generated for rd/kard; for ft/ka-ft "
                                          "letter when answer_format is letter, else text")
    no_answer: str = _f("force", "an output without an answer line: force (choose the letter by likelihood after "
                                 "the rationale + 'Answer:', flagged forced) or invalid (no answer, counted wrong)")

    def __post_init__(self) -> None:
        checks = {"mode": (self.mode, (None, *MODES)), "first_stage": (self.first_stage, ("auto", *FIRST_STAGES)),
                  "decoding": (self.decoding, ("greedy", "sc")),
                  "answer_scoring": (self.answer_scoring, (None, "generated", "letter", "text")),
                  "no_answer": (self.no_answer, ("force", "invalid")),
                  "answer_format": (self.answer_format, ANSWER_FORMATS)}
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                choices = ", ".join(a for a in allowed if a is not None)
                raise InputError(f"unknown {name} {value!r}; choose {choices}", field=name)
        for name in ("max_source_tokens", "n_docs", "pool", "max_new_tokens", "samples", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}", field=name)
        if not 0.0 < float(self.top_p) <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}", field="top_p")
        if not 0.0 < float(self.temperature) <= 5.0:
            raise InputError(f"temperature must be in (0, 5], got {self.temperature}", field="temperature")

    # ------------------------------------------------------------------------------------------ building
    def updated(self, **overrides: Any) -> InferenceSettings:
        """A copy with the given fields replaced; ``None`` values are ignored (an option left unset)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise InputError(f"unknown inference settings {sorted(unknown)}; known: {sorted(known)}",
                             field=sorted(unknown)[0])
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "settings") -> InferenceSettings:
        """Settings from a stored dict (a student record's or a manifest's ``inference``); unknown keys refused."""
        if not isinstance(data, Mapping):
            raise InputError(f"{where}: inference settings are not an object", field="inference")
        try:
            return cls().updated(**dict(data))
        except InputError as err:
            raise InputError(f"{where}: {err}") from None

    @classmethod
    def for_student(cls, info: Mapping[str, Any] | None) -> InferenceSettings:
        """The settings a trained student recorded (``kardlite_student.json``), else the defaults.

        A student trained before the ``inference`` key existed recorded ``mode``, ``max_source_tokens``,
        ``n_docs``, ``max_new_tokens`` (and ``answer_format``) at its top level; they are read from there.
        """
        info = info or {}
        if isinstance(info.get("inference"), Mapping):
            return cls.from_dict(info["inference"], where="kardlite_student.json")
        legacy = {k: info.get(k) for k in ("mode", "max_source_tokens", "n_docs", "max_new_tokens", "answer_format")}
        if legacy["mode"] not in MODES:
            legacy["mode"] = None
        return cls().updated(**legacy)

    def resolve(self, *, mode: str | None = None, has_dense: bool | None = None) -> InferenceSettings:
        """Fill in what follows the student and the knowledge base: mode, answer scoring, first stage.

        Args:
            mode: the mode to use when the settings name none (e.g. a bundle's fallback ``kard``).
            has_dense: whether the knowledge base has a dense index (None: no knowledge base; ``auto`` stays).

        Raises:
            InputError: no mode anywhere; a scoring that the mode cannot use; a dense first stage without a dense
                index.
        """
        mode = self.mode or mode
        if mode is None:
            raise InputError(f"no prompt mode: pass mode {', '.join(MODES)} (a base model has none of its own)",
                             field="mode")
        # an answer-only student trained to write the option text is read by that text's likelihood: its letter
        # was never a target (on OpenBookQA dev, text scoring beat letter scoring in every answer-only arm)
        scoring = self.answer_scoring or ("generated" if mode not in ANSWER_ONLY
                                          else "letter" if self.answer_format == "letter" else "text")
        if mode in ANSWER_ONLY and scoring == "generated":
            raise InputError(f"mode {mode!r} writes no rationale: score its answer by 'letter' or 'text'",
                             field="answer_scoring")
        first = self.first_stage
        if has_dense is not None:
            if first == "auto":
                first = "hybrid" if has_dense else "bm25"
            elif first != "bm25" and not has_dense:
                raise InputError(f"first_stage {first!r} needs a dense index, and this knowledge base has none",
                                 field="first_stage")
        return replace(self, mode=mode, answer_scoring=scoring, first_stage=first)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def greedy(self) -> bool:
        return self.decoding == "greedy"

    @property
    def n_ctx(self) -> int:
        """The context window to open for these settings: prompt budget + generation cap, at least 1024 (the same
        for eval's GGUF back-end and the bundle, so that llama.cpp computes the same thing)."""
        return max(MIN_N_CTX, self.max_source_tokens + self.max_new_tokens)


DEFAULTS = InferenceSettings()


def default_of(cls: type, name: str) -> Any:
    """The declared default of dataclass ``cls``'s field ``name`` (what CLI options take as theirs)."""
    for f in fields(cls):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            raise KeyError(f"{cls.__name__}.{name} has no default")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def help_of(cls: type, name: str) -> str:
    """The help text of dataclass ``cls``'s field ``name`` (its ``metadata["help"]``), or ``""``."""
    return next((f.metadata.get("help", "") for f in fields(cls) if f.name == name), "")


def settings_table() -> str:
    """The markdown table of :class:`InferenceSettings` that ``docs/method.md`` carries (a test compares them)."""
    lines = ["| setting | default | meaning |", "|---|---|---|"]
    for f in fields(InferenceSettings):
        default = "follows the student" if f.default is None else f"`{f.default}`"
        lines.append(f"| `{f.name}` | {default} | {f.metadata['help']} |")
    return "\n".join(lines)
