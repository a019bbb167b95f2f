"""Wall-clock seconds to execute every notebook in chapters/ and solutions/ (2 threads).

Prints JSON: {"notebook_seconds": {path: seconds}, ...}. Goal: each <= 120 s. Run once with a warm
model cache (the book's models are trained on first use); pass --cold to use an empty cache.
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def main():
    if "--cold" in sys.argv:
        os.environ["TINYINTERP_CACHE"] = tempfile.mkdtemp(prefix="tinyinterp-cold-")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ["TINYINTERP_STRICT"] = "1"
    seconds = {}
    for path in sorted([*ROOT.glob("chapters/*.ipynb"), *ROOT.glob("solutions/*.ipynb")]):
        nb = nbformat.read(path, as_version=4)
        t = time.perf_counter()
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        seconds[str(path.relative_to(ROOT))] = round(time.perf_counter() - t, 1)
    print(json.dumps({"notebook_seconds": seconds, "max_s": max(seconds.values()),
                      "cache": os.environ.get("TINYINTERP_CACHE", "~/.cache/tinyinterp"),
                      "goal": "each <= 120"}, indent=2))


if __name__ == "__main__":
    main()
