"""The manifest schema at load: a bundle edited and re-sealed by hand (its digest matches) with a field of the wrong
type or out of range, a broken chat template, or a student file llama.cpp cannot open, is refused by ``load`` with
an ArtifactError naming the file and the field, never a traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest

from kardlite.errors import ArtifactError, KardliteError
from kardlite.export.bundle import MANIFEST, seal_bundle, write_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One copy of the session bundle for the module; every test restores the manifest it edits."""
    copy = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("schema") / "bundle"))
    yield copy
    shutil.rmtree(copy, ignore_errors=True)


def _resealed(bundle: Path, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """Edit the manifest and re-seal it (digest updated, files unchanged); returns the original manifest bytes."""
    original = (bundle / MANIFEST).read_bytes()
    manifest = json.loads(original)
    edit(manifest)
    write_manifest(bundle, manifest)
    return original


def _restore(bundle: Path, original: bytes) -> None:
    write_manifest(bundle, json.loads(original))


BAD_FIELDS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("pool-string", lambda m: m["retrieval"].update(pool="abc"), "retrieval.pool"),
    ("pool-zero", lambda m: m["retrieval"].update(pool=0), "retrieval.pool"),
    ("n_docs-float", lambda m: m["retrieval"].update(n_docs=2.5), "retrieval.n_docs"),
    ("first-stage", lambda m: m["retrieval"].update(first_stage="sparse"), "retrieval.first_stage"),
    ("mode", lambda m: m["prompt"].update(mode="xyz"), "prompt.mode"),
    ("max-tokens", lambda m: m["prompt"].update(max_tokens=True), "prompt.max_tokens"),
    ("decoding-empty", lambda m: m.update(decoding={}), "decoding.max_new_tokens"),
    ("decoding-nan", lambda m: m["decoding"].update(temperature=float("nan")), "decoding.temperature"),
    ("decoding-unknown", lambda m: m["decoding"].update(beams=4), "beams"),
    ("top-p", lambda m: m["decoding"].update(top_p=0), "decoding.top_p"),
    ("seed", lambda m: m["decoding"].update(seed=-1), "decoding.seed"),
    ("student-file", lambda m: m["student"].update(file="kb/manifest.json"), "student.file"),
    ("tokenizer", lambda m: m.update(tokenizer=[]), "tokenizer"),
    ("bos-token", lambda m: m["tokenizer"].update(bos_token=5), "tokenizer.bos_token"),
    ("template-syntax", lambda m: m.update(chat_template="{% for m in messages %}{{ m.content "), "chat_template"),
    ("template-no-user", lambda m: m.update(chat_template="<|im_start|>assistant\n"), "chat_template"),
]


@pytest.mark.parametrize(("edit", "field"), [(e, f) for _, e, f in BAD_FIELDS], ids=[n for n, _, _ in BAD_FIELDS])
def test_a_resealed_manifest_with_a_bad_field_is_refused_at_load(bundle: Path, edit, field: str) -> None:
    from kardlite.runtime import load

    original = _resealed(bundle, edit)
    try:
        with pytest.raises(ArtifactError, match=rf"^{re.escape(str(bundle / MANIFEST))}: .*{re.escape(field)}"):
            load(bundle, threads=1, verify=False)
    finally:
        _restore(bundle, original)
    with load(bundle, threads=1, verify=False) as pipe:  # restored: loads again
        assert pipe.n_docs == 3


def test_the_student_file_must_be_a_gguf_llama_cpp_opens(bundle: Path) -> None:
    from kardlite.runtime import load

    student = bundle / "student.gguf"
    saved = bundle.parent / "student.saved"
    os.replace(student, saved)
    try:
        for junk in (os.urandom(4096), b"GGUF" + os.urandom(4092)):  # no magic; the magic and random bytes
            student.write_bytes(junk)
            seal_bundle(bundle)
            with pytest.raises(ArtifactError, match=rf"^{re.escape(str(student))}: (not a GGUF file|llama\.cpp "
                                                    "cannot open)"):
                load(bundle, threads=1)
    finally:
        os.replace(saved, student)
        seal_bundle(bundle)
    with load(bundle, threads=1) as pipe:
        assert pipe.ask("What does digoxin inhibit?", max_new_tokens=1)["tokens"]["generated"] == 1


def test_a_manifest_with_a_duplicate_key_is_refused(bundle: Path) -> None:
    from kardlite.runtime import load

    original = (bundle / MANIFEST).read_bytes()
    text = original.decode("utf-8")
    # the same key twice, the last one harmless-looking: "last wins" would silently take it
    doubled = text.replace('"kind": "kardlite-bundle",', '"kind": "kardlite-bundle",\n  "kind": "kardlite-bundle",', 1)
    assert doubled != text
    manifest_bytes = doubled.encode("utf-8")
    (bundle / MANIFEST).write_bytes(manifest_bytes)
    (bundle / "bundle.sha256").write_text(f"{sha256(manifest_bytes).hexdigest()}  {MANIFEST}\n")
    try:
        with pytest.raises(ArtifactError, match=rf"{re.escape(str(bundle / MANIFEST))}: unreadable \(duplicate key "
                                                r"'kind'\)"):
            load(bundle, threads=1, verify=False)
    finally:
        _restore(bundle, original)


def test_a_duplicate_key_in_a_listed_json_file_is_refused(bundle: Path) -> None:
    from kardlite.runtime import load

    kb_manifest = bundle / "kb" / "manifest.json"
    original = kb_manifest.read_bytes()
    data = json.loads(original)
    text = json.dumps(data, indent=2)
    first_key = next(iter(data))
    kb_manifest.write_text(text.replace("{", "{\n  " + json.dumps(first_key) + ": null,", 1))
    seal_bundle(bundle)
    try:
        with pytest.raises(KardliteError, match=rf"{re.escape(str(kb_manifest))}.*duplicate key"):
            load(bundle, threads=1)
    finally:
        kb_manifest.write_bytes(original)
        seal_bundle(bundle)
