from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from kardlite.data import load_task
from kardlite.data.records import QAItem
from kardlite.errors import InputError
from kardlite.rationales.store import read_store
from kardlite.teacher import get_teacher
from tests.conftest import OBQA, needs_shared

ITEMS = [QAItem(f"q{i}", f"Question {i}?", ("a", "b", "c"), i % 3) for i in range(3)]


def _compact(path: Path, ids: list[str], n: int = 2) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i in ids:
            row = {"id": i, "teacher_model": "gpt-x", "rationales": [f"{i} r{j}" for j in range(n)]}
            fh.write(json.dumps(row) + "\n")
    return path


def test_compact_jsonl_gz_import_and_resume(tmp_path: Path) -> None:
    src = _compact(tmp_path / "r.jsonl.gz", [i.id for i in ITEMS])
    store = tmp_path / "s.jsonl"
    s = get_teacher("import", source=src).generate(ITEMS, store=store, progress=False)
    assert (s.written, s.skipped) == (6, 0)
    samples = read_store(store).samples
    assert [(x["item_id"], x["sample"], x["text"]) for x in samples[:2]] == [("q0", 0, "q0 r0"), ("q0", 1, "q0 r1")]
    assert samples[0]["backend"] == "import" and samples[0]["model"] == "gpt-x"
    again = get_teacher("import", source=src).generate(ITEMS, store=store, progress=False)
    assert (again.written, again.skipped) == (0, 6)


@pytest.mark.parametrize(("ids", "match"), [(["q0", "q2", "q1"], "not aligned"), (["q0", "q1"], "2 rows for 3"),
                                            (["q0", "q1", "q2", "q3"], "more rows")])
def test_misaligned_compact_file_is_an_error_and_writes_nothing(tmp_path: Path, ids: list[str], match: str) -> None:
    src = _compact(tmp_path / "r.jsonl.gz", ids)
    with pytest.raises(InputError, match=match):
        get_teacher("import", source=src).generate(ITEMS, store=tmp_path / "s.jsonl", progress=False)
    assert not (tmp_path / "s.jsonl").exists()  # checked before the store is even opened


def test_kard_release_folder(tmp_path: Path) -> None:
    folder = tmp_path / "release"
    folder.mkdir()
    for i in range(3):
        resp = {"model": "gpt-3.5-turbo-0613", "choices": [{"message": {"content": f"row{i} s{j}"},
                                                             "finish_reason": "stop"} for j in range(2)],
                "usage": {"prompt_tokens": 100, "completion_tokens": 40}}
        (folder / f"{i:05d}.json").write_text(json.dumps(resp))
    store = tmp_path / "s.jsonl"
    s = get_teacher("import", source=folder).generate(ITEMS, 1, store=store, progress=False)
    assert s.written == 3 and s.prompt_tokens == 300
    assert [x["text"] for x in read_store(store).samples] == ["row0 s0", "row1 s0", "row2 s0"]
    (folder / "00002.json").unlink()
    with pytest.raises(InputError, match="does not align"):
        get_teacher("import", source=folder).generate(ITEMS, store=tmp_path / "t.jsonl", progress=False)


def test_store_to_store_and_unknown_ids(tmp_path: Path) -> None:
    src = tmp_path / "a.jsonl"
    get_teacher("import", source=_compact(tmp_path / "r.jsonl.gz", [i.id for i in ITEMS])).generate(
        ITEMS, store=src, progress=False)
    s = get_teacher("import", source=src).generate(ITEMS, store=tmp_path / "b.jsonl", progress=False)
    assert s.written == 6
    with pytest.raises(InputError, match="not in the task"):
        get_teacher("import", source=src).generate(ITEMS[:2], store=tmp_path / "c.jsonl", progress=False)


def test_cli_import_error_is_one_line_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kardlite.cli import app

    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"id": i.id, "question": i.question, "options": list(i.options),
                                        "answer": i.label}) + "\n" for i in ITEMS))
    src = _compact(tmp_path / "r.jsonl.gz", ["q0", "x", "q2"])
    out = CliRunner().invoke(app, ["rationales", "import", str(src), "--tasks", str(task), "--out",
                                   str(tmp_path / "s.jsonl"), "--quiet"])
    assert out.exit_code == 2 and out.stderr.strip().startswith("error:") and "\n" not in out.stderr.strip()
    ok = CliRunner().invoke(app, ["rationales", "import", str(_compact(tmp_path / "g.jsonl.gz", ["q0", "q1", "q2"])),
                                  "--tasks", str(task), "--out", str(tmp_path / "s.jsonl"), "--quiet"])
    assert ok.exit_code == 0 and "6 samples written" in ok.stdout
    stats = CliRunner().invoke(app, ["rationales", "stats", str(tmp_path / "s.jsonl"), "--json"])
    assert json.loads(stats.stdout)["samples_per_item"] == {"2": 3}


@needs_shared
def test_real_obqa_release_imports_aligned(tmp_path: Path) -> None:
    items = load_task(OBQA / "Main" / "train.jsonl")
    store = tmp_path / "obqa.jsonl"
    s = get_teacher("import", source=OBQA / "kard_teacher" / "train_rationales.jsonl.gz").generate(
        items, store=store, progress=False)
    assert (s.items, s.written) == (4957, 99140)
    by_item = read_store(store).by_item()
    assert list(by_item) == [i.id for i in items]  # same ids, same order
    assert all(len(rows) == 20 and [r["sample"] for r in rows] == list(range(20)) for rows in by_item.values())
    assert by_item["7-980"][0]["model"] == "gpt-3.5-turbo-0613"
