"""Self-check anywhere: `tinyinterp check` from a wheel installed in a fresh venv outside the repository,
on a lone notebook of EVERY chapter (parametrised from solutions/*.ipynb) in an empty folder.

The wheel is built offline from a copy of the source (`pip wheel --no-deps --no-build-isolation`); the
fresh venv gets its dependencies (torch, ...) through a .pth file naming this environment's
site-packages, so nothing is downloaded, and `tinyinterp` itself must come from the wheel.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tinyinterp.grading.sandbox import can_isolate
from tinyinterp.harness import all_exercises
from tinyinterp.release import release_notebook, repository_url

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    import importlib.util

    assert importlib.util.find_spec("setuptools"), "building the wheel offline needs setuptools>=70.1 here"
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "source"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist")])
    (wheel,) = (tmp / "dist").glob("tinyinterp-*.whl")
    env_dir = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)])
    python = env_dir / "bin" / "python"
    run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)])
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    where = run([str(python), "-c", "import tinyinterp; print(tinyinterp.__file__)"], cwd=tmp).strip()
    assert Path(where).is_relative_to(env_dir) and not Path(where).is_relative_to(ROOT), where
    return env_dir


def run(cmd, **kw) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=clean_env(), **kw)
    assert p.returncode == 0, f"{cmd}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return p.stdout


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = "/usr/bin:/bin"
    return env


def lone_notebook(nb: dict, folder: Path, name: str) -> Path:
    folder.mkdir()
    path = folder / name
    path.write_text(json.dumps(nb))
    return path


def total(stdout: str) -> tuple[float, float]:
    m = re.search(r"^total\s+([\d.]+)/([\d.]+)\s+status: (\w+)", stdout, re.M)
    assert m, stdout
    return float(m.group(1)), float(m.group(2))


@pytest.mark.parametrize("slug", CHAPTERS)
def test_self_check_from_the_installed_wheel(venv, slug, tmp_path):
    solution = json.loads((ROOT / "solutions" / f"{slug}.ipynb").read_text())
    points = {i: ex.points for i, ex in all_exercises().items()}
    url, rel = repository_url(ROOT), f"solutions/{slug}.ipynb"
    solved = lone_notebook(release_notebook(solution, rel, url, points, keep_solutions=True),
                           tmp_path / "solved", f"Copy of {slug} (1).ipynb")
    blank = lone_notebook(release_notebook(solution, rel, url, points), tmp_path / "blank", "my homework.ipynb")
    procs = [subprocess.Popen([str(venv / "bin" / "tinyinterp"), "check", p.name], cwd=p.parent, env=clean_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in (solved, blank)]
    (out_solved, err_solved), (out_blank, err_blank) = (p.communicate(timeout=600) for p in procs)
    assert procs[0].returncode == 0, out_solved + err_solved
    got, full = total(out_solved)
    assert got == full > 0 and f"{slug}: {solved.name}" in out_solved
    assert procs[1].returncode == 1, out_blank + err_blank
    assert total(out_blank) == (0, full) and "Not implemented yet" in out_blank


def test_a_notebook_that_names_no_chapter_is_a_one_line_error(venv, tmp_path):
    path = lone_notebook({"cells": [], "metadata": {}}, tmp_path / "x", "untitled.ipynb")
    p = subprocess.run([str(venv / "bin" / "tinyinterp"), "check", path.name], cwd=path.parent, env=clean_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "--assignment" in p.stderr and all(slug in p.stderr for slug in CHAPTERS)


COPY_EMBED = "from tinyinterp.functional import embed as _ref\ndef embed(tokens, W_E, W_pos):\n    return _ref(tokens, W_E, W_pos)\n"


def test_self_check_from_the_wheel_withholds_the_reference(venv, tmp_path):
    """The graded copy is built from the installed wheel and comes first on the child's path."""
    slug = "01_tokens_and_embeddings"
    solution = json.loads((ROOT / "solutions" / f"{slug}.ipynb").read_text())
    solution["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                              "id": "copy", "source": COPY_EMBED})
    path = lone_notebook(solution, tmp_path / "x", f"{slug}.ipynb")
    p = subprocess.run([str(venv / "bin" / "tinyinterp"), "check", path.name], cwd=path.parent, env=clean_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "reaches the book's reference implementation `tinyinterp.functional.embed`" in p.stdout


@pytest.mark.slow
@pytest.mark.skipif(not can_isolate(), reason="the sandbox needs root and bubblewrap (CI runs as root)")
def test_grading_from_the_wheel_withholds_the_reference_in_the_sandbox(venv, tmp_path):
    """Grading with the wheel installed (no book anywhere): the sandbox mounts the graded copy over
    site-packages/tinyinterp, so the wheel's own files cannot bring the reference back."""
    import csv

    slug = "01_tokens_and_embeddings"
    solution = json.loads((ROOT / "solutions" / f"{slug}.ipynb").read_text())
    site = next((venv / "lib").glob("python*/site-packages"))
    route = (f"import importlib.util\nspec = importlib.util.spec_from_file_location('w', "
             f"{str(site / 'tinyinterp' / 'functional.py')!r})\n_mod = importlib.util.module_from_spec(spec)\n"
             "spec.loader.exec_module(_mod)\ndef embed(tokens, W_E, W_pos):\n    return _mod.embed(tokens, W_E, W_pos)\n")
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "honest_1.ipynb").write_text(json.dumps(solution))
    for name, source in (("direct", COPY_EMBED), ("wheelfile", route)):
        nb = json.loads(json.dumps(solution))
        nb["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                            "id": name, "source": source})
        (subs / f"{name}_1.ipynb").write_text(json.dumps(nb))
    p = subprocess.run([str(venv / "bin" / "tinyinterp"), "grade", "subs", "--assignment", slug, "--out", "gb.csv",
                        "--feedback", "fb", "--workers", "2", "--quiet"], cwd=tmp_path, env=clean_env(),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rows = {r["student"]: r for r in csv.DictReader((tmp_path / "gb.csv").open())}
    assert rows["honest"]["total"] == "5"
    for name in ("direct", "wheelfile"):
        assert rows[name]["embed"] == "0" and rows[name]["total"] == "4", rows[name]
        assert "reaches the book's reference implementation `tinyinterp.functional.embed`" in \
            (tmp_path / "fb" / f"{name}.md").read_text()
