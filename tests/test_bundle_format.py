"""kardlite.bundle_format: the one home of the bundle format (export, the runtime and KB updates import it)."""

from __future__ import annotations

import pytest

from kardlite.errors import ArtifactError
from kardlite.settings import DEFAULTS


def test_old_import_paths_are_the_same_objects() -> None:
    import kardlite.bundle_format as fmt
    import kardlite.export.bundle as export
    import kardlite.rerank as rerank
    import kardlite.rerank.model as model

    for name in ("read_manifest", "verify_bundle", "seal_bundle", "write_manifest", "sign_bundle", "MANIFEST"):
        assert getattr(export, name) is getattr(fmt, name), name
    assert model.Reranker is rerank.Reranker and model.CONFIG_NAME == rerank.CONFIG_NAME


SCHEMA1 = {"prompt": {"mode": "kard", "max_tokens": 384},
           "retrieval": {"first_stage": "hybrid", "pool": 50, "n_docs": 2},
           "decoding": {"max_new_tokens": 128, "temperature": 0.0, "samples": 1, "sample_temperature": 1.0,
                        "top_k": 50, "top_p": 0.95, "n_ctx": 1024, "seed": 0}}


def test_bundle_settings_of_schema_1_keep_the_old_behaviour() -> None:
    from kardlite.bundle_format import bundle_settings

    s, legacy = bundle_settings(SCHEMA1)
    assert legacy and (s.mode, s.max_source_tokens, s.n_docs, s.pool, s.max_new_tokens, s.seed) == \
        ("kard", 384, 2, 50, 128, 0)
    assert s.no_answer == "invalid" and s.decoding == "greedy"  # no forced answer then
    sc, _ = bundle_settings({**SCHEMA1, "decoding": {**SCHEMA1["decoding"], "samples": 5}})
    assert sc.decoding == "sc" and sc.samples == 5
    new, legacy = bundle_settings({**SCHEMA1, "inference": DEFAULTS.updated(mode="rd").to_dict()})
    assert not legacy and new.mode == "rd" and new.no_answer == "force"
    with pytest.raises(ArtifactError, match="re-export"):
        bundle_settings({**SCHEMA1, "inference": {"n_docs": 0}})
    with pytest.raises(ArtifactError, match="re-export"):
        bundle_settings({"prompt": {}, "retrieval": {}, "decoding": {}})
