"""Gradescope: ``autograder.zip`` (``setup.sh`` + ``run_autograder``) and the run entry point.

Gradescope's contract (https://gradescope-autograders.readthedocs.io/en/latest/specs/): setup.sh runs
once, as root, when the image is built; run_autograder runs per submission with the student's files in
/autograder/submission/ and must write /autograder/results/results.json.

Visibility: each exercise gets two tests. ``<id>: public tests`` (visible at once, 0 points) holds the
result of the public tests only, the same tests as the notebook's check cells and ``tinyinterp check``.
``<id>: graded`` (``after_published``) holds the score with hidden tests and partial credit, exactly
what ``tinyinterp grade`` gives; the top-level ``score`` is their sum. The top-level ``output`` (always
visible) says how the notebook was isolated and reports the public run only.
"""

from __future__ import annotations

import io
import sys
import time
import zipfile
from pathlib import Path

from .common import (CACHE_DIR, VENV_DIR, ExportOptions, Graded, check_wheel, clean, exercise_text,
                     grade_submission, install_commands, isolation_line, pick_notebook, platform_path,
                     run_command, run_parser, settings_from, summary_text, write_json)

SUBMISSION, RESULTS, SOURCE = "/autograder/submission", "/autograder/results/results.json", "/autograder/source"
PENDING = "Your score with the hidden tests appears here when your instructor publishes the grades."


# ----- export --------------------------------------------------------------------------------------------
def setup_sh(slug: str, opts: ExportOptions) -> str:
    from ... import __version__

    wheel_at = f"{SOURCE}/{opts.wheel.name}" if opts.wheel else None
    pip = f"{VENV_DIR}/bin/pip"
    return "\n".join([
        "#!/usr/bin/env bash",
        f"# Gradescope runs this once, as root, when it builds the autograder image for {slug}.",
        f"# Written by `tinyinterp autograder gradescope {slug}` (tinyinterp {__version__}).",
        "set -euo pipefail",
        "export DEBIAN_FRONTEND=noninteractive",
        "apt-get update -qq",
        "# python, and the grading sandbox: bubblewrap, setpriv (util-linux), libseccomp",
        "apt-get install -y -qq python3 python3-venv python3-pip bubblewrap util-linux libseccomp2",
        f"python3 -m venv {VENV_DIR}",
        f"{pip} install --no-cache-dir --upgrade pip",
        *install_commands(opts, pip, wheel_at),
        "# train the chapter's models now, so that no submission waits for them (read-only while grading)",
        f"export TINYINTERP_CACHE={CACHE_DIR}",
        f"{VENV_DIR}/bin/python -m tinyinterp.grading.platforms.warm {slug}",
        f"chmod -R a+rX {CACHE_DIR}",
        "# whether the sandbox works here (grading without it is reported as UNSAFE in every result)",
        f"{VENV_DIR}/bin/python -c \"from tinyinterp.grading.sandbox import sandbox_problem; "
        "print('sandbox:', sandbox_problem() or 'available')\" || true",
        "",
    ])


def run_autograder(slug: str, opts: ExportOptions) -> str:
    failed = ('{"score": 0, "output": "Grader error, not your work: the autograder wrote no results (is tinyinterp '
              'installed? did setup.sh fail?). Tell your instructor.", "tests": []}')
    return "\n".join([
        "#!/usr/bin/env bash",
        f"# Gradescope runs this for every submission of {slug}: it grades the one .ipynb in",
        "# /autograder/submission/ and writes /autograder/results/results.json.",
        'ROOT="${TINYINTERP_PLATFORM_ROOT:-}"  # tests: stands in for /',
        f'export TINYINTERP_CACHE="${{TINYINTERP_CACHE:-{CACHE_DIR}}}"',
        f'PY="${{TINYINTERP_PYTHON:-{VENV_DIR}/bin/python}}"',
        'RESULTS="$ROOT/autograder/results/results.json"',
        'rm -f "$RESULTS"',
        run_command("gradescope", slug, opts.settings),
        '[ -s "$RESULTS" ] && exit 0',
        "# no results: tinyinterp is missing (setup.sh failed?) or the grader itself was killed",
        'mkdir -p "$(dirname "$RESULTS")"',
        f"echo '{failed}' > \"$RESULTS\"",
        "",
    ])


def export(slug: str, out: Path, opts: ExportOptions) -> list[Path]:
    check_wheel(opts.wheel)
    zpath = out / "autograder.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in (("setup.sh", setup_sh(slug, opts)), ("run_autograder", run_autograder(slug, opts))):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o100755 << 16)
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, text)
        if opts.wheel:
            z.write(opts.wheel, opts.wheel.name)
    zpath.write_bytes(buf.getvalue())
    return [zpath]


# ----- run -----------------------------------------------------------------------------------------------
def _test(name: str, score: float, max_score: float, output: str, visibility: str, passed: bool) -> dict:
    return {"name": name, "score": round(float(score), 4), "max_score": float(max_score),
            "status": "passed" if passed else "failed", "output": clean(output), "visibility": visibility}


def results(g: Graded | None, problem: str | None, assignment, seconds: float) -> dict:
    """results.json for one submission: graded (``g``), or not gradable (``problem``: score 0)."""
    if g is None:
        tests = [_test(f"{ex.id}: graded", 0, ex.points, problem, "visible", False) for ex in assignment.exercises]
        return {"score": 0.0, "execution_time": int(seconds), "output": clean(problem), "tests": tests,
                "stdout_visibility": "hidden"}
    r, pub = g.result, g.public
    tests = []
    for e, p in zip(r.exercises, pub.exercises):
        tests.append(_test(f"{p.id}: public tests", 0, 0, exercise_text(p, public=True), "visible", p.kind == "ok"))
        tests.append(_test(f"{e.id}: graded (public and hidden tests)", e.points, e.max_points, exercise_text(e),
                           "after_published", e.kind == "ok"))
    tests.append(_test("summary of the graded run", 0, 0, summary_text(g, assignment.slug), "after_published",
                       r.status == "graded"))
    passed = sum(p.cases_passed for p in pub.exercises)
    visible = [isolation_line(g), f"tinyinterp autograder, {assignment.slug}: {r.file}",
               f"Public tests passed: {passed} of {sum(p.cases_total for p in pub.exercises)} (status: {pub.status}).",
               PENDING]
    if "error" in (r.status, pub.status):
        visible.append("The grader failed on this submission (not your work): tell your instructor.")
    shown = set() if pub.status == "unreadable" else {p.message for p in pub.exercises}
    notes = [n for n in pub.notes if n not in shown]
    visible += ["Notes:", *[f"- {n}" for n in notes]] if notes else []
    return {"score": round(float(r.total), 4), "execution_time": int(seconds), "output": clean("\n".join(visible)),
            "tests": tests, "stdout_visibility": "hidden"}


def grade(slug: str, settings) -> dict:
    from ..assignment import load_assignment

    start = time.perf_counter()
    assignment = load_assignment(slug)
    path, problem = pick_notebook(platform_path(SUBMISSION), slug)
    if path is None:
        return results(None, problem, assignment, time.perf_counter() - start)
    hide = [platform_path(d) for d in (SUBMISSION, SOURCE, "/autograder/results")]
    g = grade_submission(path, slug, settings, hide, public_too=True)
    return results(g, None, assignment, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    args = run_parser("python -m tinyinterp.grading.platforms.gradescope",
                      "Grade /autograder/submission/*.ipynb; write /autograder/results/results.json.").parse_args(argv)
    try:
        data = grade(args.chapter, settings_from(args))
    except Exception as e:  # noqa: BLE001 - the platform must always get a results file
        data = {"score": 0.0, "output": f"Grader error, not your work: {type(e).__name__}: {clean(str(e), 500)}. "
                                        f"Tell your instructor.", "tests": [], "stdout_visibility": "hidden"}
    write_json(platform_path(RESULTS), data)
    print(data["output"])
    for t in data["tests"]:
        print(f"{t['name']}: {t['score']:g} / {t['max_score']:g}")
    print(f"score: {data['score']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
