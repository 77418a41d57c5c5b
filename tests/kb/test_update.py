"""Knowledge-base updates: add and remove passages in place of a rebuild, atomically, on real indexes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kardlite.errors import InputError
from kardlite.kb import KBConfig, KnowledgeBase, Passage
from kardlite.kb.update import add_passages, remove_passages, update

REPO = Path(__file__).resolve().parents[2]
VOLCANO = Passage("volcano", "Volcanoes", "A volcano erupts molten lava and ash from the mantle")


def _ids(kb: KnowledgeBase, query: str, retriever: str, k: int = 3) -> list[str]:
    return [h["id"] for h in kb.search(query, k=k, retriever=retriever)]  # type: ignore[arg-type]


def test_add_finds_new_passage_with_every_retriever(tmp_path: Path, facts, dense_config: KBConfig) -> None:
    KnowledgeBase.build(facts, tmp_path / "kb", config=dense_config, progress=False).close()
    encoder_before = (tmp_path / "kb" / "encoder").stat().st_ino
    report = add_passages(tmp_path / "kb", [VOLCANO])
    assert report["added"] == 1 and report["encoded"] == 1 and report["passages"] == len(facts) + 1
    with KnowledgeBase.load(tmp_path / "kb", verify=True) as kb:
        assert len(kb) == len(facts) + 1
        for retriever in ("bm25", "dense", "hybrid"):
            assert _ids(kb, "Which mountain erupts lava?", retriever)[0] == "volcano", retriever
        assert _ids(kb, "Which animal pollinates flowers?", "hybrid")[0] == "bee"  # old passages unchanged
        assert kb.manifest["updates"][-1]["added"] == 1
    assert (tmp_path / "kb" / "encoder").stat().st_ino != encoder_before  # a new folder was swapped in
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bm25_after_add_equals_a_fresh_build(tmp_path: Path, facts, bm25_config: KBConfig) -> None:
    KnowledgeBase.build(facts, tmp_path / "kb", config=bm25_config, progress=False).close()
    add_passages(tmp_path / "kb", [VOLCANO])
    fresh = KnowledgeBase.build([*facts, VOLCANO], tmp_path / "fresh", config=bm25_config, progress=False)
    with KnowledgeBase.load(tmp_path / "kb") as kb:
        for query in ("lava from a volcano", "iron magnet", "energy of the sun for plants"):
            assert kb.search(query, k=4, retriever="bm25") == fresh.search(query, k=4, retriever="bm25")
    fresh.close()


def test_remove_marks_deleted_everywhere_and_the_id_can_return(tmp_path: Path, facts,
                                                                dense_config: KBConfig) -> None:
    KnowledgeBase.build(facts, tmp_path / "kb", config=dense_config, progress=False).close()
    report = remove_passages(tmp_path / "kb", ["bee", "owl"])
    assert report["removed"] == 2 and report["passages"] == len(facts) - 2
    with KnowledgeBase.load(tmp_path / "kb", verify=True) as kb:
        assert len(kb) == len(facts) - 2 and "bee" not in {p.id for p in kb}
        for retriever in ("bm25", "dense", "hybrid"):
            found = _ids(kb, "Which animal pollinates flowers at night?", retriever, k=len(facts))
            assert "bee" not in found and "owl" not in found, retriever
            assert len(found) <= len(facts) - 2
        with pytest.raises(InputError, match="unknown passage id"):
            kb.get(["bee"])
        assert kb.manifest["counts"] == {"passages": len(facts) - 2, "rows": len(facts), "deleted": 2}
    add_passages(tmp_path / "kb", [Passage("bee", "", "Bees make honey from the nectar of flowers")])
    with KnowledgeBase.load(tmp_path / "kb", verify=True) as kb:
        assert _ids(kb, "What do bees make from nectar?", "hybrid")[0] == "bee"
        assert kb.get(["bee"])[0].text.startswith("Bees make honey")


def test_bad_updates_leave_the_kb_untouched(tmp_path: Path, facts, bm25_config: KBConfig,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    KnowledgeBase.build(facts, tmp_path / "kb", config=bm25_config, progress=False).close()
    before = (tmp_path / "kb" / "manifest.json").read_bytes()
    with pytest.raises(InputError, match="already in the knowledge base"):
        add_passages(tmp_path / "kb", [Passage("bee", "", "another bee")])
    with pytest.raises(InputError, match="duplicate passage id"):
        add_passages(tmp_path / "kb", [VOLCANO, VOLCANO])
    with pytest.raises(InputError, match="empty text"):
        add_passages(tmp_path / "kb", [Passage("x", "", "  ")])
    with pytest.raises(InputError, match="unknown passage id"):
        remove_passages(tmp_path / "kb", ["no-such-id"])
    with pytest.raises(InputError, match="remove every passage"):
        remove_passages(tmp_path / "kb", [p.id for p in facts])
    with pytest.raises(InputError, match="nothing to update"):
        update(tmp_path / "kb")

    import kardlite.kb.update as upd

    def crash(tmp: Path, path: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(upd, "_swap", crash)
    with pytest.raises(OSError, match="disk full"):
        add_passages(tmp_path / "kb", [VOLCANO])
    assert (tmp_path / "kb" / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".kb.update-lock", "kb"]


def test_cli_add_and_remove(tmp_path: Path, facts, bm25_config: KBConfig) -> None:
    from kardlite.cli import app

    KnowledgeBase.build(facts, tmp_path / "kb", config=bm25_config, progress=False).close()
    src = tmp_path / "new.jsonl"
    src.write_text('{"id": "volcano", "title": "Volcanoes", "text": "A volcano erupts molten lava"}\n')
    runner = CliRunner()
    out = runner.invoke(app, ["kb", "add", str(src), str(tmp_path / "kb")])
    assert out.exit_code == 0, out.output
    assert "added 1 passages" in out.output
    out = runner.invoke(app, ["kb", "remove", str(tmp_path / "kb"), "--ids", "volcano", "--ids", "bee"])
    assert out.exit_code == 0, out.output
    assert "removed 2 passages" in out.output
    out = runner.invoke(app, ["kb", "remove", str(tmp_path / "kb"), "--ids", "volcano"])
    assert out.exit_code == 2 and "unknown passage id" in out.output
    with KnowledgeBase.load(tmp_path / "kb") as kb:
        assert len(kb) == len(facts) - 1


_KILLED_ADD = textwrap.dedent("""
    import sys
    from kardlite.kb import Passage
    from kardlite.kb.update import add_passages
    print("start", flush=True)
    add_passages(sys.argv[1], [Passage(f"new-{i}", "", f"fact zq{i}x about volcanic rock")
                               for i in range(int(sys.argv[2]))])
""")


@pytest.mark.slow
def test_sigkill_during_add_leaves_the_old_or_the_new_kb(tmp_path: Path, facts, dense_config: KBConfig) -> None:
    """A subprocess adding 100 passages is killed at several moments; the KB always loads and verifies, and holds
    either all of the new passages or none."""
    kb_dir = tmp_path / "kb"
    KnowledgeBase.build(facts, kb_dir, config=dense_config, progress=False).close()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    n_new = 100

    def start() -> tuple[subprocess.Popen, float]:
        proc = subprocess.Popen([sys.executable, "-c", _KILLED_ADD, str(kb_dir), str(n_new)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"start"  # imports done
        return proc, time.perf_counter()

    # one undisturbed run (on a copy) to learn how long the update itself takes
    import shutil

    shutil.copytree(kb_dir, tmp_path / "probe")
    probe = subprocess.run([sys.executable, "-c", _KILLED_ADD, str(tmp_path / "probe"), str(n_new)], env=env,
                           capture_output=True, timeout=300)
    assert probe.returncode == 0, probe.stderr.decode()[-2000:]
    proc, t0 = start()
    proc.wait(timeout=300)
    took = time.perf_counter() - t0
    assert proc.returncode == 0
    remove_passages(kb_dir, [f"new-{i}" for i in range(n_new)])  # back to the original passages

    outcomes = []
    for frac in (0.05, 0.3, 0.6, 0.8, 0.9, 0.97, 1.02):
        before = len(KnowledgeBase.load(kb_dir, verify=False))
        proc, t0 = start()
        time.sleep(max(0.0, took * frac - (time.perf_counter() - t0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        with KnowledgeBase.load(kb_dir, verify=True) as kb:  # loads and every file matches the manifest
            after = len(kb)
            assert after in (before, before + n_new), (frac, before, after)
            if after == before + n_new:
                assert _ids(kb, "zq10x", "bm25", k=1) == ["new-10"]  # the new passages are searchable
        outcomes.append(after > before)
        if after > before:
            remove_passages(kb_dir, [f"new-{i}" for i in range(n_new)])
    assert not outcomes[0]  # killed early: nothing happened (the later ones may have finished or not)


def test_an_update_through_a_symbolic_link_changes_the_target_in_place(tmp_path: Path, facts,
                                                                         bm25_config: KBConfig) -> None:
    from kardlite.cli import app

    KnowledgeBase.build(facts, tmp_path / "kb", config=bm25_config, progress=False).close()
    links = tmp_path / "links"
    links.mkdir()
    alias = links / "alias"
    alias.symlink_to(tmp_path / "kb", target_is_directory=True)
    source = tmp_path / "new.jsonl"
    source.write_text('{"id": "volcano", "title": "Volcanoes", "text": "A volcano erupts molten lava"}\n')
    result = CliRunner().invoke(app, ["kb", "add", str(source), str(alias)])
    assert result.exit_code == 0, result.output
    assert alias.is_symlink() and os.readlink(alias) == str(tmp_path / "kb")  # still the link, same target
    with KnowledgeBase.load(tmp_path / "kb", verify=True) as kb:  # the target itself was updated
        assert len(kb) == len(facts) + 1 and _ids(kb, "Which mountain erupts lava?", "bm25")[0] == "volcano"
    assert [p.name for p in links.iterdir()] == ["alias"]  # no scratch folder, lock or copy left beside the link
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    remove_passages(alias, ["volcano"])
    with KnowledgeBase.load(tmp_path / "kb", verify=True) as kb:
        assert len(kb) == len(facts)


@pytest.mark.slow
def test_a_bundle_updated_through_a_symbolic_link_stays_a_verified_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil

    from kardlite.export.bundle import read_manifest, verify_bundle

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    (tmp_path / "links").mkdir()
    alias = tmp_path / "links" / "alias"
    alias.symlink_to(bundle, target_is_directory=True)
    report = add_passages(alias, [VOLCANO])
    assert report["added"] == 1 and report["path"] == str(alias)
    assert alias.is_symlink() and alias.resolve() == bundle
    verify_bundle(bundle)
    assert read_manifest(bundle)["kb_updates"][-1]["added"] == 1
    assert [p.name for p in (tmp_path / "links").iterdir()] == ["alias"]
