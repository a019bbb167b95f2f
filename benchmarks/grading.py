"""Throughput of `tinyinterp grade --workers 2` on every chapter: N generated submissions each (default
100), a mix per 20 of correct, blank, one catalogued mistake, one raising and one infinite loop: index
i % 20 == 19 is a solution with an extra cell `while True: pass` (it costs its cell timeout and a restart);
the rest cycle through correct (the solution), mistake (round 0 of tests/test_grading_chapters.py: every
exercise with a catalogued mistake gets its first one), raising (the first exercise's function raises, so
later exercises that call it may fail too) and blank (the generated exercise notebook).

Prints JSON per chapter: submissions, seconds, per_minute, graded_as_expected (and what was not), and where a
submission's time goes (mean seconds per stage, :data:`tinyinterp.grading.grader.STAGES`: prepare, start_up
(sandbox + interpreter + imports + inputs), cells (re-executing the notebook), tests (calling its functions),
judging). Goal: every chapter >= 30 submissions per minute on 2 cores (stretch 60).

    python benchmarks/grading.py [--n 100] [--chapters 01_tokens_and_embeddings ...] [--cell-timeout 10]
"""

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_grading_chapters import code_cell, injected  # noqa: E402  (one source for injected mistakes)

from tinyinterp.grading.assignment import load_assignment  # noqa: E402
from tinyinterp.grading.grader import STAGES, SubmissionResult  # noqa: E402
from tinyinterp.grading.sandbox import can_isolate  # noqa: E402

KINDS = ("correct", "mistake", "raising", "blank")


def make_submissions(slug: str, folder: Path, n: int) -> tuple[dict[str, str], dict]:
    assignment = load_assignment(slug)
    solution = json.loads((ROOT / "solutions" / f"{slug}.ipynb").read_text())
    blank = json.loads((ROOT / "exercises" / f"{slug}.ipynb").read_text())
    mistake, mistakes = injected(solution, assignment, 0)
    first = assignment.exercises[0]
    raising = json.loads(json.dumps(solution))
    raising["cells"].append(code_cell(f"def {assignment.function_names[first.id]}(*args, **kwargs):\n"
                                      f"    raise ValueError('benchmark: raising')\n", "raising"))
    loop = json.loads(json.dumps(solution))
    loop["cells"].insert(len(loop["cells"]) // 2, code_cell("while True:\n    pass\n", "loop"))
    notebooks = {"correct": solution, "mistake": mistake, "raising": raising, "blank": blank, "loop": loop}
    kinds = {}
    for i in range(n):
        kind = "loop" if i % 20 == 19 else KINDS[i % 4]
        (folder / f"s{i:03d}_{slug}.ipynb").write_text(json.dumps(notebooks[kind]))
        kinds[f"s{i:03d}"] = kind
    return kinds, {"assignment": assignment, "mistakes": mistakes, "raising": first.id}


def as_expected(r: SubmissionResult, kind: str, ctx: dict) -> bool:
    full = {e.id: e.points == e.max_points for e in r.exercises}
    if kind in ("correct", "loop"):
        return all(full.values()) and r.status == ("timeout" if kind == "loop" else "graded")
    if kind == "blank":
        return r.total == 0 and r.status == "graded"
    if kind == "raising":  # that exercise earns 0, saying why; later ones that call the function may fail too
        first = next(e for e in r.exercises if e.id == ctx["raising"])
        return r.status == "graded" and first.points == 0 and "ValueError" in first.message
    mistakes = ctx["mistakes"]  # kind == "mistake"
    return r.status == "graded" and all(
        (not e.points == e.max_points and mistakes[e.id].message in e.message) if e.id in mistakes
        else e.points == e.max_points for e in r.exercises)


def bench_chapter(slug: str, n: int, cell_timeout: float, sandboxed: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "subs").mkdir()
        kinds, ctx = make_submissions(slug, tmp / "subs", n)
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "tinyinterp.cli", "grade", str(tmp / "subs"), "--assignment", slug,
                            "--out", str(tmp / "gb.csv"), "--feedback", str(tmp / "fb"), "--workers", "2", "--quiet",
                            "--cell-timeout", str(cell_timeout), "--root", str(ROOT),
                            *([] if sandboxed else ["--unsafe-no-sandbox"])], capture_output=True, text=True)
        seconds = time.perf_counter() - t
        results = [SubmissionResult.from_json(f.read_text()) for f in (tmp / "gb.csv.state").glob("*.json")]
        rows = list(csv.DictReader((tmp / "gb.csv").open())) if (tmp / "gb.csv").exists() else []
    unexpected = sorted(f"{r.student} ({kinds[r.student]}): {r.status}, {r.total:g}/{r.max_total:g}"
                        for r in results if not as_expected(r, kinds[r.student], ctx))
    by_kind = {k: [r.seconds for r in results if kinds[r.student] == k] for k in (*KINDS, "loop")}
    return {"chapter": slug, "submissions": len(rows), "exit_code": p.returncode, "seconds": round(seconds, 1),
            "per_minute": round(len(rows) / seconds * 60, 1),
            "graded_as_expected": len(results) - len(unexpected), "unexpected": unexpected[:5],
            "mean_seconds_per_stage": {s: round(sum(r.timing.get(s, 0) for r in results) / max(1, len(results)), 3)
                                       for s in STAGES},
            "mean_seconds_per_kind": {k: round(sum(v) / len(v), 2) for k, v in by_kind.items() if v}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--chapters", nargs="*", default=sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb")))
    ap.add_argument("--cell-timeout", type=float, default=10.0)
    args = ap.parse_args()
    sandboxed = can_isolate()  # as root with bubblewrap; else grading needs --unsafe-no-sandbox
    chapters = []
    for slug in args.chapters:
        chapters.append(bench_chapter(slug, args.n, args.cell_timeout, sandboxed))
        print(json.dumps(chapters[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"workers": 2, "sandbox": sandboxed, "cell_timeout_s": args.cell_timeout,
                      "goal": ">= 30 per minute per chapter (stretch 60)",
                      "slowest_per_minute": min(c["per_minute"] for c in chapters),
                      "chapters": chapters}, indent=1))


if __name__ == "__main__":
    main()
