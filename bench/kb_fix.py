"""Does a knowledge-base update change an answer? Take a question's gold passage out of a bundle's KB, ask, put the
passage back with ``kardlite kb add``, ask again: the student and the reranker are never retrained.

    python bench/kb_fix.py exports/demo --results runs/kb-fix.json [--questions N] [--ids cr-q031 ...]
                           [--work runs/kb-fix] [--threads 2]

For each demo question of ``--split`` (default ``test``; the gold passages are the question's ``passage_ids``):

1. ask it on the untouched bundle (the "intact" answer: what the passage does when it is there);
2. copy the bundle to ``<work>/<question id>/bundle`` (hard links: an update writes new files, never into old ones)
   and run ``kardlite kb remove COPY --ids GOLD``;
3. ask through ``kardlite.runtime.load(COPY, audit_log=<work>/<id>/audit.jsonl)`` (the "removed" answer);
4. write the gold passages, as the KB held them (id, title, text, source, meta), to ``<work>/<id>/gold.jsonl`` and
   run ``kardlite kb add gold.jsonl COPY``;
5. ask again through a new ``load(COPY, audit_log=...)`` (the "re-added" answer), appending to the same log.

After each update the copy is verified (``kardlite.bundle_format.verify_bundle``: every file's sha256) and the KB
is asked whether it holds the gold passages. Each question's record lands in ``<work>/<id>/result.json``
(atomically, once the question is done), so a re-run skips finished questions of the same bundle; the summary is
rewritten atomically after every question. The CLI commands run in this process (the same click command as the
shell's ``kardlite``) because a fresh process would import ONNX Runtime for every update.

The printed table and the summary name the questions whose removed -> re-added answers went wrong -> right (the
update fixed them) and right -> wrong (it broke them: the passage can mislead a small student too).
An answer is right when its letter is the gold letter; no valid answer counts as wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STAGES = ("intact", "removed", "readded")
# Files a KB update may change in a bundle (besides the kb/ folder and a late-interaction reranker's passage cache).
CONTROL = ("manifest.json", "bundle.sha256")


# ------------------------------------------------------------------------------------------------- pieces
def copy_bundle(src: Path, dst: Path) -> None:
    """Copy a bundle folder by hard links (copies where a link fails): ``kb add`` / ``kb remove`` write new files
    and swap folders, they never write into an existing file, so the original stays as it was."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def kardlite(*args: str) -> str:
    """Run one ``kardlite`` command in this process; returns what it printed.

    Raises:
        RuntimeError: the command failed (its exit status and output in the message).
    """
    import typer

    from kardlite.cli import app

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            status = typer.main.get_command(app).main(list(args), prog_name="kardlite", standalone_mode=False)
        except SystemExit as exc:
            status = exc.code
    if status not in (None, 0):
        raise RuntimeError(f"kardlite {' '.join(args)} exited with {status}: {out.getvalue().strip()}")
    return out.getvalue().strip()


def ask(bundle: Path, item: Any, *, audit_log: Path | None, threads: int | None) -> dict[str, Any]:
    """Ask one question on a freshly loaded bundle; returns what the report keeps of the answer."""
    from kardlite.runtime import load

    with load(bundle, audit_log=audit_log, threads=threads) as pipe:
        return answer_record(pipe.ask(item.question, list(item.options)), item)


def answer_record(answer: dict[str, Any], item: Any) -> dict[str, Any]:
    gold = item.meta["passage_ids"]
    pool = [c["id"] for c in answer["candidates"]]
    shown = [p["id"] for p in answer["passages"]]
    return {"letter": answer["letter"], "correct": answer["letter"] == gold_letter(item), "valid": answer["valid"],
            "confidence": answer["confidence"], "shown": shown, "gold_shown": any(g in shown for g in gold),
            "gold_pool_rank": min((pool.index(g) + 1 for g in gold if g in pool), default=None),
            "rationale": answer["rationale"]}


def gold_letter(item: Any) -> str:
    from kardlite.data.records import LETTERS

    return LETTERS[item.label]


def kb_state(bundle: Path, ids: Sequence[str]) -> dict[str, Any]:
    """Verify the whole bundle (every sha256), then say which of ``ids`` its KB holds."""
    from kardlite.bundle_format import KB_DIR, read_manifest, verify_bundle
    from kardlite.errors import InputError
    from kardlite.kb import KnowledgeBase

    manifest = read_manifest(bundle)
    verify_bundle(bundle, manifest)  # raises ArtifactError naming the file
    held = []
    with KnowledgeBase.load(bundle / (manifest.get("retrieval") or {}).get("kb", KB_DIR), verify=True) as kb:
        for pid in ids:
            with contextlib.suppress(InputError):
                kb.get([pid])
                held.append(pid)
        size = len(kb)
    return {"verified": True, "passages": size, "gold_held": held}


def changed_files(before: Path, after: Path) -> list[str]:
    """Bundle files (manifest paths) added, removed or with another sha256 in ``after``."""
    from kardlite.bundle_format import read_manifest

    a, b = read_manifest(before)["files"], read_manifest(after)["files"]
    return sorted(rel for rel in set(a) | set(b) if a.get(rel, {}).get("sha256") != b.get(rel, {}).get("sha256"))


def transition(removed: dict[str, Any], readded: dict[str, Any]) -> str:
    word = {True: "right", False: "wrong"}
    return f"{word[removed['correct']]}->{word[readded['correct']]}"


# ----------------------------------------------------------------------------------------------- one question
def run_question(bundle: Path, item: Any, intact: dict[str, Any] | None, folder: Path, *,
                 threads: int | None) -> dict[str, Any]:
    """Remove, ask, re-add, ask for one question in ``folder`` (wiped first); returns its record."""
    from kardlite._io import atomic_write_json, iter_jsonl, sha256_file, write_jsonl
    from kardlite.bundle_format import KB_DIR, read_manifest
    from kardlite.kb import KnowledgeBase

    started = time.perf_counter()
    gold = list(item.meta["passage_ids"])
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted question starts again from a fresh copy
    folder.mkdir(parents=True)
    copy = folder / "bundle"
    copy_bundle(bundle, copy)
    with KnowledgeBase.load(copy / (read_manifest(copy).get("retrieval") or {}).get("kb", KB_DIR)) as kb:
        passages = kb.get(gold)
    write_jsonl(folder / "gold.jsonl", [{**p.meta, "id": p.id, "title": p.title, "text": p.text, "source": p.source}
                                        for p in passages])
    log = folder / "audit.jsonl"

    remove_cmd = ["kb", "remove", str(copy), *[a for pid in gold for a in ("--ids", pid)]]
    removed_out = kardlite(*remove_cmd)
    after_remove = kb_state(copy, gold)
    removed = ask(copy, item, audit_log=log, threads=threads)

    add_cmd = ["kb", "add", str(folder / "gold.jsonl"), str(copy)]
    added_out = kardlite(*add_cmd)
    after_add = kb_state(copy, gold)
    readded = ask(copy, item, audit_log=log, threads=threads)

    lines = [row for _, row in iter_jsonl(log)]
    if len(lines) != 2:
        raise RuntimeError(f"{log}: {len(lines)} audit lines, expected 2 (one per answer)")
    removed["audit"], readded["audit"] = lines
    record = {
        "id": item.id, "question": item.question, "options": list(item.options), "gold": gold_letter(item),
        "gold_passages": gold, "bundle_manifest_sha256": sha256_file(bundle / "manifest.json"),
        "intact": intact, "removed": removed, "readded": readded,
        "transition": transition(removed, readded),
        "restored": intact is not None and readded["letter"] == intact["letter"],
        "kb": {"remove": {"command": "kardlite " + " ".join(remove_cmd), "output": removed_out, **after_remove},
               "add": {"command": "kardlite " + " ".join(add_cmd), "output": added_out, **after_add}},
        "changed_files": changed_files(bundle, copy), "audit_log": str(log),
        "seconds": round(time.perf_counter() - started, 2),
    }
    atomic_write_json(folder / "result.json", record)
    return record


# ------------------------------------------------------------------------------------------------------ run
def run(bundle: str | Path, work: str | Path, *, split: str = "test", questions: int | None = None,
        ids: Sequence[str] = (), breakable: bool = False, stop_after: int | None = None, threads: int | None = None,
        results: str | Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run the experiment on ``bundle``; returns the summary (also written to ``results`` when given).

    Args:
        bundle: the bundle (never changed: each question works on its own copy).
        work: the folder for the copies, audit logs and per-question results (re-runs reuse finished questions).
        split: the demo split whose questions are asked.
        questions: only the first N questions (after ``ids``).
        ids: only these question ids.
        breakable: only the questions that the intact bundle answers right with a gold passage shown: the ones
            whose passage a removal can take away from a right answer (the others are listed as ``skipped``).
        stop_after: stop once this many questions went wrong -> right.
        threads: CPU threads for llama.cpp and ONNX Runtime.
        results: a JSON file for the summary, rewritten atomically after every question.
        quiet: print nothing.

    Raises:
        InputError: an unknown question id, or no question selected.
    """
    from kardlite._io import atomic_write_json, read_json, sha256_file
    from kardlite.bundle_format import read_manifest, verify_bundle
    from kardlite.demo import demo_questions
    from kardlite.errors import InputError

    bundle, work = Path(bundle), Path(work)
    manifest = read_manifest(bundle)
    verify_bundle(bundle, manifest)
    sha = sha256_file(bundle / "manifest.json")
    items = demo_questions(split)  # type: ignore[arg-type]
    if ids:
        known = {it.id: it for it in items}
        missing = [i for i in ids if i not in known]
        if missing:
            raise InputError(f"no {split} question with id {missing[0]!r}", field="ids")
        items = [known[i] for i in ids]
    items = items[:questions] if questions is not None else items
    if not items:
        raise InputError("no question selected", field="questions")

    def reuse(path: Path) -> dict[str, Any] | None:
        """A record of an earlier run on this same bundle (None: absent, unreadable or of another bundle)."""
        with contextlib.suppress(Exception):
            old = read_json(path)
            if old.get("bundle_manifest_sha256") == sha:
                return old
        return None

    done = {it.id: r for it in items if (r := reuse(work / it.id / "result.json")) is not None}
    intact = {it.id: r["answer"] for it in items if (r := reuse(work / f"{it.id}.intact.json")) is not None}
    todo = [it for it in items if it.id not in intact]
    if todo:  # the untouched bundle answers every question not answered yet, loaded once
        from kardlite.runtime import load

        with load(bundle, threads=threads) as pipe:
            for it in todo:
                intact[it.id] = answer_record(pipe.ask(it.question, list(it.options)), it)
                atomic_write_json(work / f"{it.id}.intact.json", {"bundle_manifest_sha256": sha,
                                                                  "answer": intact[it.id]})

    skipped = [{"id": it.id, "intact": intact[it.id]} for it in items
               if breakable and not (intact[it.id]["correct"] and intact[it.id]["gold_shown"])]
    items = [it for it in items if it.id not in {row["id"] for row in skipped}]
    records: list[dict[str, Any]] = []
    summary = summarize(bundle, manifest, sha, split, records, skipped)
    for n, it in enumerate(items, 1):
        if stop_after is not None and len(summary["wrong_to_right"]) >= stop_after:
            summary["stopped_early"] = True
            break
        record = done.get(it.id) or run_question(bundle, it, intact[it.id], work / it.id, threads=threads)
        records.append(record)
        if not quiet:
            print(f"[{n}/{len(items)}] {it.id}: {record['transition']}"
                  + (" (reused)" if it.id in done else f" ({record['seconds']:.1f} s)"), flush=True)
        summary = summarize(bundle, manifest, sha, split, records, skipped)
        if results is not None:
            atomic_write_json(results, summary)
    if results is not None:
        atomic_write_json(results, summary)
    if not quiet:
        print(table(summary))
    return summary


def summarize(bundle: Path, manifest: dict[str, Any], sha: str, split: str, records: list[dict[str, Any]],
              skipped: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    from kardlite import __version__

    by = {t: [r["id"] for r in records if r["transition"] == t]
          for t in ("wrong->right", "right->wrong", "right->right", "wrong->wrong")}
    n = len(records)
    return {
        "bundle": str(bundle), "manifest_sha256": sha, "demo": manifest.get("demo"), "split": split, "n": n,
        "skipped": list(skipped), "stopped_early": False,
        "accuracy": {stage: round(sum(bool(r[stage] and r[stage]["correct"]) for r in records) / max(n, 1), 4)
                     for stage in STAGES},
        "gold_shown": {stage: sum(bool(r[stage] and r[stage]["gold_shown"]) for r in records) for stage in STAGES},
        "transitions": {t: len(v) for t, v in by.items()},
        "wrong_to_right": by["wrong->right"], "right_to_wrong": by["right->wrong"],
        "restored": sum(r["restored"] for r in records),
        "kardlite": __version__, "questions": records,
    }


def table(summary: dict[str, Any]) -> str:
    """The per-question table and the named questions, as text."""

    def cell(stage: dict[str, Any] | None) -> str:
        if stage is None:
            return "?"
        return f"{stage['letter'] or '-'}{'+' if stage['correct'] else ' '} {'G' if stage['gold_shown'] else '.'}"

    rows = [f"{'question':<10} {'gold':<4} {'intact':<7} {'removed':<7} {'re-added':<8} change",
            "-" * 52]
    for r in summary["questions"]:
        rows.append(f"{r['id']:<10} {r['gold']:<4} {cell(r['intact']):<7} {cell(r['removed']):<7} "
                    f"{cell(r['readded']):<8} {r['transition']}")
    acc = summary["accuracy"]
    rows += ["-" * 52,
             "letter, + = right, G = a gold passage was among those shown (. = not shown), - = no valid answer",
             f"accuracy over {summary['n']}: intact {acc['intact']:.1%}, removed {acc['removed']:.1%}, "
             f"re-added {acc['readded']:.1%}; re-added answer = intact answer for {summary['restored']}",
             f"wrong -> right after kb add ({len(summary['wrong_to_right'])}): "
             f"{', '.join(summary['wrong_to_right']) or 'none'}",
             f"right -> wrong after kb add ({len(summary['right_to_wrong'])}): "
             f"{', '.join(summary['right_to_wrong']) or 'none'}"]
    if summary["skipped"]:
        rows.append(f"not asked (the intact bundle got them wrong or showed no gold passage): "
                    f"{', '.join(row['id'] for row in summary['skipped'])}")
    if summary["stopped_early"]:
        rows.append("stopped early (--stop-after)")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path, help="a demo bundle (kardlite demo builds exports/demo)")
    ap.add_argument("--work", type=Path, default=None,
                    help="per-question copies, audit logs and results (default runs/kb-fix/<bundle name>)")
    ap.add_argument("--results", type=Path, default=None, help="write the JSON summary here")
    ap.add_argument("--split", default="test", choices=["train", "dev", "test"])
    ap.add_argument("--questions", type=int, default=None, help="only the first N questions of the split")
    ap.add_argument("--ids", nargs="+", default=(), help="only these question ids")
    ap.add_argument("--breakable", action="store_true",
                    help="only questions the intact bundle answers right with a gold passage shown")
    ap.add_argument("--stop-after", type=int, default=None, help="stop once N questions went wrong -> right")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for llama.cpp and ONNX Runtime")
    args = ap.parse_args(argv)
    from kardlite.errors import KardliteError

    work = args.work or Path("runs") / "kb-fix" / args.bundle.resolve().name
    try:
        run(args.bundle, work, split=args.split, questions=args.questions, ids=args.ids, breakable=args.breakable,
            stop_after=args.stop_after, threads=args.threads, results=args.results)
    except KardliteError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
