"""Fuzzed manifests: a bundle whose manifest fields are replaced by random JSON values and re-sealed (so its digest
matches) either loads and answers, or is refused with a kardlite error; nothing else escapes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kardlite.errors import KardliteError
from kardlite.export.bundle import MANIFEST, write_manifest
from tests.fuzz import fuzz_settings, json_value

pytestmark = pytest.mark.slow

# (section, field) pairs the runtime reads; None = the section itself
FIELDS = [("retrieval", "pool"), ("retrieval", "n_docs"), ("retrieval", "first_stage"), ("retrieval", "kb"),
          ("retrieval", "reranker"), ("prompt", "mode"), ("prompt", "max_tokens"), ("prompt", "use_chat_template"),
          ("decoding", "max_new_tokens"), ("decoding", "temperature"), ("decoding", "sample_temperature"),
          ("decoding", "top_k"), ("decoding", "top_p"), ("decoding", "samples"), ("decoding", "n_ctx"),
          ("decoding", "seed"), ("student", "file"), ("tokenizer", "bos_token"), ("tokenizer", "eos_token"),
          ("chat_template", None), ("calibration", None), ("decoding", None), ("retrieval", None), ("prompt", None)]
# values near the edges of each field's range, mixed with arbitrary JSON
edgy = st.one_of(json_value, st.sampled_from([0, 1, 2, -1, 2**31, 2**63, 0.5, 1e-300, float("inf"), "", "bm25",
                                              "hybrid", "kard", "ft", "student.gguf", "kb", "kb/manifest.json",
                                              "{{ messages[0].content }}", "{% if %}", {}, [], None, True]))


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    copy = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("schema-fuzz") / "bundle"))
    yield copy
    shutil.rmtree(copy, ignore_errors=True)


def test_resealed_manifests_with_random_fields(bundle: Path) -> None:
    from kardlite.runtime import load

    original = json.loads((bundle / MANIFEST).read_text())
    seen = {"loaded": 0, "refused": 0}

    @fuzz_settings(cases=60)
    @given(st.lists(st.tuples(st.sampled_from(FIELDS), edgy), min_size=1, max_size=3))
    def case(edits: list[tuple[tuple[str, str | None], Any]]) -> None:
        manifest = json.loads(json.dumps(original))
        for (section, field), value in edits:
            if field is None:
                manifest[section] = value
            elif isinstance(manifest.get(section), dict):
                manifest[section][field] = value
        try:
            write_manifest(bundle, manifest)
        except KardliteError:  # a path field out of the bundle: refused already when sealing
            seen["refused"] += 1
            return
        try:
            with load(bundle, threads=1, verify=False) as pipe:
                ans = pipe.ask("What does digoxin inhibit?", ["the sodium pump", "calcium channels"],
                               max_new_tokens=1)
                assert ans["tokens"]["generated"] <= 1
            seen["loaded"] += 1
        except KardliteError:
            seen["refused"] += 1

    try:
        case()
    finally:
        write_manifest(bundle, original)
    assert seen["refused"] >= 20 and seen["loaded"] >= 3, seen
