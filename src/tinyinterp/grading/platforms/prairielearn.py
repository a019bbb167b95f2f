"""PrairieLearn: an externally graded question folder, its grader image, and the run entry point.

PrairieLearn's contract (https://prairielearn.readthedocs.io/en/latest/externalGrading/): the question's
``tests/`` folder is mounted at /grade/tests, the student's files at /grade/student; the entrypoint
writes /grade/results/results.json with ``gradable``, ``score`` (0..1), ``message``, ``output`` and
``tests`` (name, points, max_points, message, output). A submission that cannot be graded (no notebook,
several, not a notebook, or a failure on the grader's side) is ``gradable: false``: the student is told
why and is not marked down.
"""

from __future__ import annotations

import json
import shlex
import sys
import uuid
from pathlib import Path

from .common import (CACHE_DIR, VENV_DIR, ExportOptions, check_wheel, clean, exercise_text, grade_submission,
                     install_commands, pick_notebook, platform_path, run_command, run_parser, settings_from,
                     summary_text, write_json, write_text)

STUDENT, RESULTS, TESTS = "/grade/student", "/grade/results/results.json", "/grade/tests"
ENTRYPOINT = f"{TESTS}/run.sh"


def question_dir(slug: str) -> str:
    return f"questions/tinyinterp_{slug}"


def image_name(opts: ExportOptions) -> str:
    from ... import __version__

    return opts.image or f"tinyinterp-grader:{__version__}"


def timeout_s(opts: ExportOptions) -> int:
    """PrairieLearn's limit for the whole container: the submission's limit plus start-up."""
    return int(opts.settings.submission_timeout_s + 120)


# ----- export --------------------------------------------------------------------------------------------
def info_json(slug: str, opts: ExportOptions) -> dict:
    return {
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://tinyinterp/autograder/prairielearn/{slug}")),
        "title": f"Interpretability from Scratch: {slug}",
        "topic": "Interpretability",
        "tags": ["tinyinterp", slug],
        "type": "v3",
        "singleVariant": True,
        "gradingMethod": "External",
        "externalGradingOptions": {"enabled": True, "image": image_name(opts), "entrypoint": ENTRYPOINT,
                                   "timeout": timeout_s(opts)},
    }


def question_html(slug: str) -> str:
    return f"""<pl-question-panel>
  <p>Upload your notebook for the chapter <code>{slug}</code> of <em>Interpretability from Scratch</em>,
  named exactly <code>{slug}.ipynb</code> (rename a download such as "Copy of {slug}.ipynb").</p>
  <p>It is graded by running it, with the public tests of its check cells and hidden tests (other seeds and
  shapes); partial credit is the fraction of tests passed. Check it first with
  <code>tinyinterp check {slug}.ipynb</code>.</p>
</pl-question-panel>

<pl-file-upload file-names="{slug}.ipynb"></pl-file-upload>

<pl-submission-panel>
  <pl-external-grader-results></pl-external-grader-results>
  <pl-file-preview></pl-file-preview>
</pl-submission-panel>
"""


def run_sh(slug: str, opts: ExportOptions) -> str:
    failed = json.dumps({"gradable": False, "score": 0, "tests": [],
                         "message": "Grader error, not your work: the grader wrote no results (is tinyinterp "
                                    "installed in the image?). Tell your instructor."})
    return "\n".join([
        "#!/bin/bash",
        f"# PrairieLearn runs this (externalGradingOptions.entrypoint) for every submission of {slug}:",
        f"# it grades {STUDENT}/{slug}.ipynb and writes {RESULTS}.",
        'ROOT="${TINYINTERP_PLATFORM_ROOT:-}"  # tests: stands in for /',
        f'export TINYINTERP_CACHE="${{TINYINTERP_CACHE:-{CACHE_DIR}}}"',
        f'PY="${{TINYINTERP_PYTHON:-{VENV_DIR}/bin/python}}"',
        'RESULTS="$ROOT/grade/results/results.json"',
        'rm -f "$RESULTS"',
        run_command("prairielearn", slug, opts.settings),
        '[ -s "$RESULTS" ] && exit 0',
        "# no results: tinyinterp is missing from the image, or the grader itself was killed",
        'mkdir -p "$(dirname "$RESULTS")"',
        f"echo {shlex.quote(failed)} > \"$RESULTS\"",
        "",
    ])


def dockerfile(slug: str, opts: ExportOptions) -> str:
    from ... import __version__

    wheel_at = f"/opt/tinyinterp-wheel/{opts.wheel.name}" if opts.wheel else None
    install = " \\\n && ".join(install_commands(opts, f"{VENV_DIR}/bin/pip", wheel_at))
    return "\n".join([
        f"# The grader image for {slug} (tinyinterp {__version__}): docker build -t {image_name(opts)} .",
        "FROM python:3.11-slim",
        "# the grading sandbox: bubblewrap, setpriv (util-linux), libseccomp",
        "RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap util-linux libseccomp2 \\",
        " && rm -rf /var/lib/apt/lists/*",
        f"RUN python -m venv {VENV_DIR} && {VENV_DIR}/bin/pip install --no-cache-dir --upgrade pip",
        *([f"COPY {opts.wheel.name} /opt/tinyinterp-wheel/"] if opts.wheel else []),
        f"RUN {install}",
        "# the chapter's trained models, read-only while grading (no submission waits for training)",
        f"ENV TINYINTERP_CACHE={CACHE_DIR}",
        f"RUN {VENV_DIR}/bin/python -m tinyinterp.grading.platforms.warm {slug} && chmod -R a+rX {CACHE_DIR}",
        "",
    ])


def export(slug: str, out: Path, opts: ExportOptions) -> list[Path]:
    check_wheel(opts.wheel)
    q = out / question_dir(slug)
    written = [write_text(q / "info.json", json.dumps(info_json(slug, opts), indent=2) + "\n"),
               write_text(q / "question.html", question_html(slug)),
               write_text(q / "tests" / "run.sh", run_sh(slug, opts), executable=True),
               write_text(out / "grader-image" / "Dockerfile", dockerfile(slug, opts))]
    if opts.wheel:
        dest = out / "grader-image" / opts.wheel.name
        dest.write_bytes(opts.wheel.read_bytes())
        written.append(dest)
    return written


# ----- run -----------------------------------------------------------------------------------------------
def not_gradable(why: str) -> dict:
    """Not graded, not counted: the first line says why; the output holds the rest."""
    return {"gradable": False, "score": 0.0, "message": clean(why.split("\n", 1)[0], 1000), "output": clean(why),
            "tests": []}


def grade(slug: str, settings) -> dict:
    from ..assignment import load_assignment

    load_assignment(slug)  # an unknown chapter fails here, before the student's files are looked at
    path, problem = pick_notebook(platform_path(STUDENT), slug)
    if path is None:
        return not_gradable(problem)
    hide = [platform_path(d) for d in (STUDENT, TESTS, "/grade/results")]
    g = grade_submission(path, slug, settings, hide)
    r = g.result
    text = summary_text(g, slug)
    if r.status == "unreadable":
        return not_gradable(f"{r.notes[0] if r.notes else 'unreadable notebook'}. Upload the .ipynb file itself "
                            f"(in Jupyter or Colab: File > Download > .ipynb).\n\n{text}")
    if r.status == "error":  # the grader's failure (or a garbled result pipe): never the student's score
        first = next((n for n in r.notes if n.startswith(("Grader error", "Your notebook's results"))),
                     "Grader error, not your work: tell your instructor.")
        return not_gradable(f"{first}\n\n{text}")
    tests = [{"name": e.id, "points": round(float(e.points), 4), "max_points": float(e.max_points),
              "message": exercise_text(e), "output": clean(e.message)} for e in r.exercises]
    score = r.total / r.max_total if r.max_total else 0.0
    message = f"{r.total:g} / {r.max_total:g} points ({r.status})" + ("" if g.sandboxed else "; UNSAFE: no sandbox")
    return {"gradable": True, "score": round(min(1.0, max(0.0, score)), 6), "message": message,
            "output": text, "tests": tests}


def main(argv: list[str] | None = None) -> int:
    args = run_parser("python -m tinyinterp.grading.platforms.prairielearn",
                      "Grade /grade/student/*.ipynb; write /grade/results/results.json.").parse_args(argv)
    try:
        data = grade(args.chapter, settings_from(args))
    except Exception as e:  # noqa: BLE001 - PrairieLearn must always get a results file
        data = not_gradable(f"Grader error, not your work: {type(e).__name__}: {clean(str(e), 500)}. "
                            f"Tell your instructor.")
    write_json(platform_path(RESULTS), data)
    print(data["message"])
    if data.get("output"):
        print(data["output"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
