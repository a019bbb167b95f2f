"""Throughput of `tinyinterp grade --workers 2` on 100 generated submissions of chapter 1
(a mix of correct, wrong and blank). Prints JSON: {"submissions", "seconds", "per_minute"}.
Goal: 100 submissions in <= 5 minutes on a 2-core machine."""

import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLUG = "01_tokens_and_embeddings"


def make_submissions(folder: Path, n: int) -> dict[str, str]:
    solution = json.loads((ROOT / "solutions" / f"{SLUG}.ipynb").read_text())
    blank = json.loads((ROOT / "exercises" / f"{SLUG}.ipynb").read_text())
    wrong = json.loads(json.dumps(solution))
    for c in wrong["cells"]:
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        if c["cell_type"] == "code" and "def embed(" in src:
            c["source"] = "def embed(tokens, W_E, W_pos):\n    return W_E[tokens]\n"
    kinds = {}
    for i in range(n):
        kind, nb = [("correct", solution), ("wrong", wrong), ("blank", blank)][i % 3]
        (folder / f"student{i:03d}_{SLUG}.ipynb").write_text(json.dumps(nb))
        kinds[f"student{i:03d}"] = kind
    return kinds


def main(n: int = 100) -> None:
    from tinyinterp.grading.sandbox import can_isolate

    sandboxed = can_isolate()  # as root with bubblewrap; else grading needs --unsafe-no-sandbox
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "subs").mkdir()
        kinds = make_submissions(tmp / "subs", n)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tinyinterp.cli", "grade", str(tmp / "subs"), "--assignment", SLUG,
                        "--out", str(tmp / "gb.csv"), "--feedback", str(tmp / "fb"), "--workers", "2", "--quiet",
                        "--root", str(ROOT), *([] if sandboxed else ["--unsafe-no-sandbox"])],
                       check=True, capture_output=True)
        seconds = time.perf_counter() - t
        rows = list(csv.DictReader((tmp / "gb.csv").open()))
    expected = {"correct": 5.0, "wrong": 4.0, "blank": 0.0}
    right = sum(float(r["total"]) == expected[kinds[r["student"]]] for r in rows)
    print(json.dumps({"submissions": len(rows), "seconds": round(seconds, 1),
                      "per_minute": round(len(rows) / seconds * 60, 1), "workers": 2,
                      "graded_as_expected": right, "sandbox": sandboxed, "goal": "100 in <= 300 s"}, indent=2))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
