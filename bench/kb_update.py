"""Time ``kardlite kb add``: 100 passages into a 20,000-passage KB (BM25 + int8 MiniLM + HNSW), on N cores.

    python bench/kb_update.py [--passages 20000] [--add 100] [--threads 2] [--out runs/bench-kb-update]

The 20,000 passages are synthetic sentences (a seeded mix of science words, OBQA-fact length); the KB is built
once and reused. Each timed run starts from a fresh copy of that KB in a subprocess limited to ``--threads``
cores (``taskset`` where available, and ONNX Runtime / OpenMP thread counts), and prints the update's wall time
and its parts (import, BM25 rebuild, embedding + HNSW insert, hashing and swap).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

WORDS = ["acid", "base", "cell", "energy", "heat", "light", "water", "plant", "animal", "rock", "soil", "wind",
         "rain", "cloud", "star", "planet", "orbit", "gravity", "force", "magnet", "iron", "copper", "metal",
         "electricity", "circuit", "battery", "sound", "wave", "vibration", "heart", "lung", "blood", "kidney",
         "liver", "nerve", "brain", "muscle", "bone", "enzyme", "protein", "sugar", "starch", "fat", "oxygen",
         "carbon", "nitrogen", "hydrogen", "salt", "ocean", "river", "lake", "desert", "forest", "mountain",
         "volcano", "earthquake", "fossil", "seed", "flower", "root", "leaf", "stem", "insect", "bird", "fish",
         "mammal", "reptile", "predator", "prey", "habitat", "season", "temperature", "pressure", "density",
         "mass", "volume", "speed", "friction"]

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from kardlite.kb import Passage
from kardlite.kb.update import add_passages
t_import = time.perf_counter() - t0
new = [Passage(f"added-{i}", "", line) for i, line in enumerate(json.loads(sys.argv[2]))]
import resource
cpu0 = resource.getrusage(resource.RUSAGE_SELF)
report = add_passages(sys.argv[1], new)
cpu1 = resource.getrusage(resource.RUSAGE_SELF)
cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
from kardlite.kb import KnowledgeBase
manifest = KnowledgeBase.load(sys.argv[1], verify=False).manifest
print(json.dumps({"import_s": round(t_import, 3), "cpu_s": round(cpu_s, 3), **report,
                  "parts": manifest["updates"][-1]}))
"""


def sentence(rng, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, n_words)).capitalize() + "."


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=20_000)
    ap.add_argument("--add", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-kb-update"))
    ap.add_argument("--results", type=Path, default=None, help="also write the summary to this JSON file")
    args = ap.parse_args()

    from kardlite.kb import KnowledgeBase, Passage

    base = args.out / f"kb-{args.passages}"
    rng = np.random.default_rng(0)
    if not (base / "manifest.json").is_file():
        t = time.perf_counter()
        corpus = [Passage(f"p{i}", "", sentence(rng, int(rng.integers(8, 20)))) for i in range(args.passages)]
        KnowledgeBase.build(corpus, base, progress=True).close()
        print(f"built the {args.passages}-passage KB in {time.perf_counter() - t:.1f} s")
    rng = np.random.default_rng(1)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    pin = ["taskset", "-c", ",".join(str(c) for c in range(args.threads))] if shutil.which("taskset") else []
    runs, walls = [], []
    for r in range(args.repeats):
        work = args.out / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(base, work)
        new = [sentence(rng, int(rng.integers(8, 20))) for _ in range(args.add)]
        t = time.perf_counter()
        proc = subprocess.run([*pin, sys.executable, "-c", CHILD, str(work), json.dumps(new)], env=env,
                              capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        runs.append(out)
        walls.append(round(wall, 3))
        print(f"run {r + 1}: add {args.add} to {args.passages}: update {out['seconds']:.2f} s "
              f"(BM25 rebuild {out['parts']['bm25_s']:.2f} s, embed + HNSW {out['parts']['dense_s']:.2f} s); "
              f"process {wall:.2f} s incl. imports {out['import_s']:.2f} s; update CPU time {out['cpu_s']:.2f} s; "
              f"{args.threads} cores; load average {os.getloadavg()[0]:.1f}")
    best = min(r["seconds"] for r in runs)
    summary = {"passages": args.passages, "added": args.add, "threads": args.threads,
               "update_s": [r["seconds"] for r in runs], "best_update_s": best,
               "median_update_s": sorted(r["seconds"] for r in runs)[len(runs) // 2],
               "process_wall_s": walls, "import_s": [r["import_s"] for r in runs],
               "bm25_s": [r["parts"]["bm25_s"] for r in runs], "dense_s": [r["parts"]["dense_s"] for r in runs],
               "update_cpu_s": [r["cpu_s"] for r in runs], "load_average": os.getloadavg()[0],
               "cpu": _cpu_name(), "target_s": 5.0, "meets_target": best <= 5.0}
    print(json.dumps(summary))
    if args.results:
        args.results.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines() if Path("/proc/cpuinfo").exists() \
            else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
