"""nbgrader interop: `tinyinterp release --nbgrader DIR` writes a course tree on which the real
`nbgrader generate_assignment` produces the same student notebooks as `tinyinterp release`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLUG = "01_tokens_and_embeddings"


def code_cells(path):
    nb = json.loads(Path(path).read_text())
    out = []
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            out.append(("\n".join(l for l in src.split("\n") if not l.strip().startswith("# Hint:")),
                        c["metadata"].get("nbgrader", {}).get("grade_id")))
    return out


def test_nbgrader_generate_assignment_matches_release(tmp_path):
    course = tmp_path / "course"
    subprocess.run([sys.executable, "-m", "tinyinterp.cli", "release", "--nbgrader", str(course), "--root", str(ROOT)],
                   check=True, capture_output=True)
    (course / "nbgrader_config.py").write_text(f"c = get_config()\nc.CourseDirectory.root = {str(course)!r}\n")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    p = subprocess.run([str(bin_dir / "nbgrader"), "generate_assignment", SLUG, "--force"], cwd=course, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    generated = course / "release" / SLUG / f"{SLUG}.ipynb"
    assert code_cells(generated) == code_cells(ROOT / "exercises" / f"{SLUG}.ipynb")
