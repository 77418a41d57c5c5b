from __future__ import annotations

import json
from pathlib import Path

import pytest

from kardlite.data.rationales import read_kept_rationales
from kardlite.distill.examples import read_kept_rationales as distill_reader
from kardlite.errors import InputError
from kardlite.rerank.data import read_rationales


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_one_reader_for_distillation_and_reranking(tmp_path: Path) -> None:
    path = _write(tmp_path / "log.jsonl", [
        {"item_id": "q2", "rationale_index": 1, "text": " second of q2 ", "kept": True},
        {"item_id": "q2", "rationale_index": 0, "text": "first of q2"},
        {"item_id": "q1", "sample": 3, "rationale": "rejected one", "kept": False},
        {"id": "q1", "index": 0, "text": "kept of q1"},
    ])
    assert distill_reader is read_kept_rationales
    assert read_kept_rationales(path) == {"q2": [(0, "first of q2"), (1, "second of q2")], "q1": [(0, "kept of q1")]}
    # The reranker reads the same rows: the rejected rationale is not among them.
    assert read_rationales(path) == [("q2", 0, "first of q2"), ("q2", 1, "second of q2"), ("q1", 0, "kept of q1")]


def test_bad_rows_name_line_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", [{"item_id": "a", "rationale_index": 0, "text": "ok"},
                                           {"item_id": "a", "rationale_index": 0, "text": "again"}])
    with pytest.raises(InputError, match="duplicate") as err:
        read_kept_rationales(path)
    assert err.value.line == 2
    _write(path, [{"item_id": "a", "text": "no index"}])
    with pytest.raises(InputError) as err:
        read_kept_rationales(path)
    assert err.value.field == "rationale_index" and err.value.line == 1
    _write(path, [{"item_id": "a", "rationale_index": 0, "text": "x", "kept": False}])
    with pytest.raises(InputError, match="no kept rationales"):
        read_rationales(path)
