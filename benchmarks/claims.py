"""Do the book's claims hold on other seeds and thread counts? Retrain everything and find out.

A *claim* is a code cell of a chapter or solutions notebook that contains an ``assert``. For every
seed offset (``$TINYINTERP_SEED_OFFSET``, see ``tinyinterp.seeds``) and thread count
(``OMP_NUM_THREADS``), this executes every notebook with ``TINYINTERP_STRICT=1``, as CI does, and
an empty model cache of its own, so that every book model is retrained for that run. A claim
holds in a run when its cell ran without an error; a cell that never ran (the kernel died, a cell
before it timed out) counts as failed.

Prints JSON: ``claims_held_fraction`` over all (run, claim cell) pairs (goal: 1.0), ``runs``
(offset, threads, seconds, claims held, seconds per notebook), ``failing_cells`` (run, notebook,
cell index, whether it is a claim, and the first line of the error).

    python benchmarks/claims.py                                  # the full sweep: offsets 0 1 2 x threads 1 2
    python benchmarks/claims.py --offsets 1 --threads 2 --notebooks chapters/03_tiny_transformer.ipynb
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSERT = re.compile(r"^\s*assert\b", re.MULTILINE)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
ARROW = re.compile(r"^-+>\s*\d+\s(.*)$", re.MULTILINE)


def all_notebooks() -> list[Path]:
    return sorted([*ROOT.glob("chapters/*.ipynb"), *ROOT.glob("solutions/*.ipynb")])


# ----- one notebook, in a child process with the run's environment --------------------------------
def execute_one(path: Path, timeout: int, save_to: Path | None = None) -> dict:
    """Execute ``path`` (errors allowed, as ``pytest --nbval-lax`` goes on after a failing cell) and
    return every code cell's outcome: ``{"cells": [{"index", "claim", "ran", "error"}], "crash"}``."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    crash = None
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except Exception as e:  # the kernel died, a cell timed out, ...: the cells that did not run fail
        crash = f"{type(e).__name__}: {_first_line(str(e))}"
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, save_to)
    cells = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        error = next((o for o in cell.outputs if o.get("output_type") == "error"), None)
        ran = cell.execution_count is not None
        cells.append({"index": index, "claim": bool(ASSERT.search(cell.source)), "ran": ran,
                      "error": _describe(error, cell.source) if error else (None if ran else f"did not run ({crash})")})
    ran = [c for c in cells if c["ran"]]
    if crash and ran and ran[-1]["error"] is None:  # the cell that was running when it happened
        ran[-1]["error"] = crash
    return {"cells": cells, "crash": crash}


def _first_line(text: str) -> str:
    lines = [line for line in ANSI.sub("", text).splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


def _describe(error: dict, source: str) -> str:
    """``Name: first line of the message``; for a bare ``assert`` also the line that failed."""
    text = f"{error.get('ename', 'Error')}: {_first_line(error.get('evalue', ''))}".rstrip(": ")
    if error.get("ename") == "AssertionError" and not error.get("evalue"):
        frames = "\n".join(ANSI.sub("", t) for t in error.get("traceback", []))
        failing = ARROW.findall(frames)  # IPython marks each frame's line: "---> 12 assert ..."
        if failing:
            return f"{text} at `{failing[-1].strip()}`"
    return text


# ----- a run: every notebook, one offset and thread count, an empty cache ------------------------
def run_one(offset: int, threads: int, notebooks: list[Path], jobs: int, timeout: int,
            cache_root: Path | None = None, executed_dir: Path | None = None) -> dict:
    """Execute ``notebooks`` in an empty model cache of their own, or, with ``cache_root``, in
    ``cache_root/o{offset}-t{threads}``, kept for the next call (to iterate on the notebooks)."""
    if cache_root is None:
        cache = tempfile.mkdtemp(prefix=f"tinyinterp-claims-o{offset}-t{threads}-")
    else:
        cache = str(cache_root / f"o{offset}-t{threads}")
        os.makedirs(cache, exist_ok=True)
    env = {**os.environ, "TINYINTERP_SEED_OFFSET": str(offset), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "TINYINTERP_CACHE": cache, "TINYINTERP_STRICT": "1",
           "PYTHONHASHSEED": "0"}

    def one(path: Path) -> tuple[Path, dict, float]:
        start = time.perf_counter()
        save = ["--save-to", str(executed_dir / f"o{offset}-t{threads}" / path.parent.name / path.name)] if executed_dir else []
        proc = subprocess.run([sys.executable, __file__, "--execute-one", str(path), "--timeout", str(timeout), *save],
                              env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):  # the worker itself died: nothing of it ran
            result = {"cells": None, "crash": f"worker exited {proc.returncode}: {_first_line(proc.stderr[-2000:])}"}
        return path, result, seconds

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outcomes = list(pool.map(one, notebooks))
    seconds = time.perf_counter() - start
    if cache_root is None:
        shutil.rmtree(cache, ignore_errors=True)
    return {"offset": offset, "threads": threads, "jobs": jobs, "seconds": round(seconds, 1),
            "outcomes": [(_label(p), r, round(s, 1)) for p, r, s in outcomes]}


def _label(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def claim_cells(path: Path) -> list[int]:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and ASSERT.search(c.source)]


def summarise(runs: list[dict]) -> dict:
    held = total = 0
    failing, run_rows = [], []
    for run in runs:
        label = f"offset {run['offset']}, {run['threads']} thread{'s' if run['threads'] > 1 else ''}"
        run_held = run_total = 0
        for nb, result, _ in run["outcomes"]:
            claims = claim_cells(ROOT / nb)  # counted from the file, so a worker that died fails them all
            cells = {c["index"]: c for c in (result["cells"] or [])}
            for index in claims:
                ok = index in cells and cells[index]["ran"] and cells[index]["error"] is None
                run_held += ok
                run_total += 1
            for index in sorted(set(claims) | set(cells)):
                c = cells.get(index)
                if c is None or c["error"] is not None:
                    failing.append({"run": label, "notebook": nb, "cell": index, "claim": index in claims,
                                    "error": c["error"] if c else f"not executed ({result['crash']})"})
        held += run_held
        total += run_total
        run_rows.append({"run": label, "offset": run["offset"], "threads": run["threads"], "jobs": run["jobs"],
                         "seconds": run["seconds"], "claims": run_total, "claims_held": run_held,
                         "notebook_seconds": {nb: s for nb, _, s in run["outcomes"]}})
    return {"claims_held_fraction": round(held / total, 4) if total else None, "claims_held": held,
            "claims": total, "runs": run_rows, "failing_cells": failing,
            "goal": "claims_held_fraction == 1.0; every notebook <= 120 s on 2 cores"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # misuse: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> None:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--offsets", type=int, nargs="+", default=[0, 1, 2], help="seed offsets (default 0 1 2)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    parser.add_argument("--notebooks", nargs="+", type=Path, help="a subset (default: chapters/ and solutions/)")
    parser.add_argument("--jobs", type=int, help="notebooks at once (default: CPU cores // threads, at least 1)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell (default 900)")
    parser.add_argument("--cache-root", type=Path,
                        help="keep each run's models in CACHE_ROOT/o{offset}-t{threads} and reuse them next time "
                             "(to iterate on notebooks; the default retrains everything in empty caches)")
    parser.add_argument("--executed-dir", type=Path,
                        help="save every executed notebook, with its outputs, under EXECUTED_DIR/o{offset}-t{threads}/")
    parser.add_argument("--execute-one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--save-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.execute_one:  # worker mode: one notebook in this process's environment
        print(json.dumps(execute_one(args.execute_one.resolve(), args.timeout, args.save_to)))
        return
    notebooks = [p.resolve() for p in args.notebooks] if args.notebooks else all_notebooks()
    missing = [str(p) for p in notebooks if not p.is_file() or p.suffix != ".ipynb"]
    if missing:
        parser.error(f"not a notebook: {', '.join(missing)}")
    if any(t < 1 for t in args.threads) or (args.jobs is not None and args.jobs < 1):
        parser.error("--threads and --jobs must be >= 1")
    cores = os.cpu_count() or 1
    runs = []
    for offset in args.offsets:
        for threads in args.threads:
            jobs = args.jobs or max(1, cores // threads)
            print(f"run: offset {offset}, {threads} thread(s), {jobs} notebook(s) at once ...", file=sys.stderr)
            runs.append(run_one(offset, threads, notebooks, jobs, args.timeout, args.cache_root, args.executed_dir))
            print(f"  done in {runs[-1]['seconds']} s", file=sys.stderr)
    print(json.dumps(summarise(runs), indent=2))


if __name__ == "__main__":
    main()
