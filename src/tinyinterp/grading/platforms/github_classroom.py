"""GitHub Classroom: ``.github/classroom/autograding.json`` + ``.github/workflows/classroom.yml``, and the
command each test runs.

The workflow runs ``education/autograding``, which runs each test of autograding.json in the student's
repository and gives its ``points`` when the command exits 0 (pass or fail, no partial credit). There is
one test per exercise: it passes when that exercise has full marks (hidden tests included); the printed
feedback shows the partial credit. The whole notebook is graded once per workflow run: the first test
grades it and saves the result (keyed by the notebook's content) in the runner's temp folder, the others
read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shlex
import sys
import tempfile
from pathlib import Path

from .common import (CACHE_DIR, ExportOptions, Graded, check_wheel, exercise_text, find_notebooks, grade_submission,
                     install_commands, run_parser, settings_from, summary_text, write_json, write_text)

WHEEL_DIR = ".github/classroom"
MODULE = "tinyinterp.grading.platforms.github_classroom"


# ----- export --------------------------------------------------------------------------------------------
def test_command(slug: str, exercise: str, opts: ExportOptions) -> str:
    """Run as root (sudo keeps the environment and PATH) so that the sandbox can be used."""
    return " ".join(['sudo -E env "PATH=$PATH"', "python", "-m", MODULE, shlex.quote(slug), "--exercise",
                     shlex.quote(exercise), *opts.settings.argv()])


def autograding_json(slug: str, opts: ExportOptions) -> dict:
    from ..assignment import load_assignment

    minutes = max(2, math.ceil((opts.settings.submission_timeout_s + 120) / 60))
    tests = []
    for ex in load_assignment(slug).exercises:
        pts = int(ex.points) if float(ex.points).is_integer() else ex.points
        tests.append({"name": f"{ex.id} ({pts} pt)", "setup": "", "run": test_command(slug, ex.id, opts),
                      "input": "", "output": "", "comparison": "included", "timeout": minutes, "points": pts})
    return {"tests": tests}


def workflow_yml(slug: str, opts: ExportOptions) -> str:
    from ... import __version__

    wheel_at = f"{WHEEL_DIR}/{opts.wheel.name}" if opts.wheel else None
    install = "\n".join(f"          {line}" for line in install_commands(opts, "python -m pip", wheel_at))
    return f"""# Autograding for {slug} (tinyinterp {__version__}): `tinyinterp autograder github-classroom {slug}`.
name: Autograding
on:
  push:
  workflow_dispatch:
permissions:
  checks: write
  actions: read
  contents: read
jobs:
  autograding:
    name: Autograding
    runs-on: ubuntu-latest
    if: github.actor != 'github-classroom[bot]'
    timeout-minutes: 60
    env:
      TINYINTERP_CACHE: {CACHE_DIR}
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      - name: Install tinyinterp and the grading sandbox (bubblewrap, util-linux, libseccomp)
        run: |
          sudo apt-get update -qq
          sudo apt-get install -y -qq bubblewrap util-linux libseccomp2
          python -m pip install --upgrade pip
{install}
          sudo install -d -o "$(id -u)" -g "$(id -g)" {CACHE_DIR}
      - name: Restore the trained models
        uses: actions/cache@v4
        with:
          path: {CACHE_DIR}
          key: tinyinterp-models-{__version__}-{slug}-${{{{ hashFiles('.github/classroom/autograding.json') }}}}
      - name: Train the chapter's models (only when not restored)
        run: |
          python -m tinyinterp.grading.platforms.warm {slug}
          chmod -R a+rX {CACHE_DIR}
      - name: Grade (one test per exercise; the notebook is graded once)
        uses: education/autograding@v1
"""


def export(slug: str, out: Path, opts: ExportOptions) -> list[Path]:
    check_wheel(opts.wheel)
    written = [write_text(out / ".github" / "classroom" / "autograding.json",
                          json.dumps(autograding_json(slug, opts), indent=2) + "\n"),
               write_text(out / ".github" / "workflows" / "classroom.yml", workflow_yml(slug, opts))]
    if opts.wheel:
        dest = out / WHEEL_DIR / opts.wheel.name
        dest.write_bytes(opts.wheel.read_bytes())
        written.append(dest)
    return written


# ----- run -----------------------------------------------------------------------------------------------
def pick_repo_notebook(repo: Path, slug: str) -> tuple[Path | None, str | None]:
    """``<slug>.ipynb`` when exactly one notebook has that name, else the repository's only notebook."""
    found = find_notebooks(repo)
    named = [p for p in found if p.name.lower() == f"{slug}.ipynb".lower()]
    if len(named) == 1:
        return named[0], None
    if len(found) == 1:
        return found[0], None
    if not found:
        return None, f"No notebook (.ipynb file) in this repository: commit your {slug}.ipynb."
    names = ", ".join(str(p.relative_to(repo)) for p in found[:10])
    return None, (f"{len(found)} notebooks in this repository ({names}) and {'several' if named else 'none'} named "
                  f"{slug}.ipynb: keep exactly one {slug}.ipynb so that the grader knows which to grade.")


def _results_dir() -> Path:
    """A folder only this user can write, in the runner's temp folder (gone after the job)."""
    d = Path(os.environ.get("RUNNER_TEMP") or tempfile.gettempdir()) / f"tinyinterp-grading-{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        d.mkdir(mode=0o700, parents=True)
    st = os.lstat(d)
    if os.path.islink(d) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise RuntimeError(f"{d} is not a private folder of this user; remove it")
    return d


def graded_once(path: Path, slug: str, settings) -> Graded:
    """The notebook's grading, computed by the first test of this run and read back by the others."""
    from ... import __version__
    from ..grader import SubmissionResult

    h = hashlib.sha256(path.read_bytes())
    h.update(json.dumps([slug, settings.argv(), __version__]).encode())
    d = _results_dir()
    saved = d / f"{h.hexdigest()[:32]}.json"
    with open(d / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if saved.is_file():
            data = json.loads(saved.read_text())
            return Graded(SubmissionResult.from_json(data["result"]), None, data["isolation"], data["sandboxed"])
        g = grade_submission(path, slug, settings, hide=[d])
        if g.result.status != "error":  # a grader failure is tried again by the next test
            write_json(saved, {"result": g.result.to_json(), "isolation": g.isolation, "sandboxed": g.sandboxed})
        return g


def main(argv: list[str] | None = None) -> int:
    p = run_parser(f"python -m {MODULE}", "Grade this repository's notebook (once per run) and pass when EXERCISE "
                   "has full marks: exit 0 full marks, 1 not (or not gradable), 2 misuse.")
    p.add_argument("--exercise", required=True, help="the exercise id this test is about")
    p.add_argument("--repo", default=".", help="the repository's folder (default: here)")
    args = p.parse_args(argv)
    from ..assignment import load_assignment

    try:
        assignment = load_assignment(args.chapter)
    except (FileNotFoundError, ValueError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    if args.exercise not in {ex.id for ex in assignment.exercises}:
        print(f"{p.prog}: error: {args.chapter} has no exercise {args.exercise!r}; it has: "
              f"{', '.join(ex.id for ex in assignment.exercises)}", file=sys.stderr)
        return 2
    path, problem = pick_repo_notebook(Path(args.repo), args.chapter)
    if path is None:
        print(f"{args.exercise}: not graded. {problem}")
        return 1
    try:
        g = graded_once(path, args.chapter, settings_from(args))
    except Exception as e:  # noqa: BLE001 - a failed test with a reason, never a traceback
        print(f"{args.exercise}: grader error, not your work ({type(e).__name__}: {e}). Tell your instructor.")
        return 1
    e = next(x for x in g.result.exercises if x.id == args.exercise)
    full = e.points >= e.max_points and g.result.status != "error"
    print(f"{e.id}: {'PASSED' if full else 'NOT FULL MARKS'} -- {exercise_text(e)}")
    print("GitHub Classroom gives this test's points only for full marks; the partial credit above is what "
          "`tinyinterp grade` would give.\n")
    print(summary_text(g, args.chapter))
    return 0 if full else 1


if __name__ == "__main__":
    sys.exit(main())
