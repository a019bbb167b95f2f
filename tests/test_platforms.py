"""`tinyinterp autograder`: each platform's export, run as the platform runs it, on real submissions.

Every results file is validated against the platform's documented format, written down here as a JSON
Schema (with the page it comes from). Grading runs in the bubblewrap sandbox when this machine allows it
(root + bwrap), as `tinyinterp grade` does; otherwise the results must say UNSAFE.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from tinyinterp.checkpoint import cache_dir
from tinyinterp.grading import load_assignment
from tinyinterp.grading.platforms import ExportOptions, export
from tinyinterp.grading.platforms.warm import BUILDERS, CHAPTER_MODELS
from tinyinterp.grading.sandbox import can_isolate

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb"))
PLATFORMS = ["gradescope", "prairielearn", "github-classroom"]
CHEAP = "01_tokens_and_embeddings"  # no trained model: a grading takes a few seconds
ISOLATION = "bubblewrap sandbox" if can_isolate() else "UNSAFE: no sandbox"

VISIBILITY = {"enum": ["hidden", "after_due_date", "after_published", "visible"]}
# https://gradescope-autograders.readthedocs.io/en/latest/specs/#output-format ("Output format": every
# key is optional there, but the top-level score is required unless each test has one). The `required`
# lists of the tests are what this exporter promises on top (name, score, max_score, output, visibility).
GRADESCOPE_RESULTS = {
    "type": "object",
    "properties": {
        "score": {"type": "number"},
        "execution_time": {"type": "number"},
        "output": {"type": "string"},
        "output_format": {"enum": ["text", "html", "simple_format", "md", "ansi"]},
        "test_output_format": {"enum": ["text", "html", "simple_format", "md", "ansi"]},
        "test_name_format": {"enum": ["text", "html", "simple_format", "md", "ansi"]},
        "visibility": VISIBILITY,
        "stdout_visibility": VISIBILITY,
        "extra_data": {"type": "object"},
        "tests": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "score", "max_score", "output", "visibility"],
            "properties": {
                "score": {"type": "number"}, "max_score": {"type": "number"},
                "status": {"enum": ["passed", "failed"]}, "name": {"type": "string"},
                "name_format": {"type": "string"}, "number": {"type": "string"}, "output": {"type": "string"},
                "output_format": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
                "visibility": VISIBILITY, "extra_data": {"type": "object"},
            },
            "additionalProperties": False,
        }},
        "leaderboard": {"type": "array"},
    },
    "required": ["score", "output", "tests"],
    "additionalProperties": False,
}
# https://prairielearn.readthedocs.io/en/latest/externalGrading/#grading-results ("Grading results")
PRAIRIELEARN_RESULTS = {
    "type": "object",
    "required": ["gradable"],
    "properties": {
        "gradable": {"type": "boolean"},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "message": {"type": "string"},
        "output": {"type": "string"},
        "images": {"type": "array"},
        "tests": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "points", "max_points"],
            "properties": {
                "name": {"type": "string"}, "description": {"type": "string"},
                "points": {"type": "number", "minimum": 0}, "max_points": {"type": "number", "minimum": 0},
                "message": {"type": "string"}, "output": {"type": "string"}, "images": {"type": "array"},
            },
            "additionalProperties": False,
        }},
    },
    "if": {"properties": {"gradable": {"const": True}}},
    "then": {"required": ["score"]},
    "additionalProperties": False,
}
# https://prairielearn.readthedocs.io/en/latest/externalGrading/#configuring-and-enabling-external-grader-support
# and https://prairielearn.readthedocs.io/en/latest/question/ (info.json)
PRAIRIELEARN_INFO = {
    "type": "object",
    "required": ["uuid", "title", "topic", "type", "gradingMethod", "externalGradingOptions"],
    "properties": {
        "uuid": {"type": "string", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"},
        "title": {"type": "string"}, "topic": {"type": "string"}, "tags": {"type": "array"},
        "type": {"const": "v3"}, "singleVariant": {"type": "boolean"}, "gradingMethod": {"const": "External"},
        "externalGradingOptions": {
            "type": "object",
            "required": ["enabled", "image", "entrypoint", "timeout"],
            "properties": {"enabled": {"const": True}, "image": {"type": "string", "minLength": 1},
                           "entrypoint": {"type": "string", "pattern": "^/grade/"},
                           "timeout": {"type": "integer", "minimum": 1}, "serverFilesCourse": {"type": "array"},
                           "enableNetworking": {"type": "boolean"}, "environment": {"type": "object"}},
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
# GitHub Classroom's .github/classroom/autograding.json, run by the education/autograding action:
# https://docs.github.com/en/education/manage-coursework-with-github-classroom/teach-with-github-classroom/use-autograding
# and https://github.com/education/autograding (timeout in minutes; the test passes when `run` exits 0
# and, if `output` is set, its output matches by `comparison`)
AUTOGRADING = {
    "type": "object",
    "required": ["tests"],
    "properties": {"tests": {"type": "array", "minItems": 1, "items": {
        "type": "object",
        "required": ["name", "run", "points"],
        "properties": {"name": {"type": "string"}, "setup": {"type": "string"}, "run": {"type": "string"},
                       "input": {"type": "string"}, "output": {"type": "string"},
                       "comparison": {"enum": ["included", "exact", "regex"]},
                       "timeout": {"type": "number", "minimum": 1, "maximum": 60},
                       "points": {"type": "number", "minimum": 0}},
        "additionalProperties": False,
    }}},
    "additionalProperties": False,
}


# ----- submissions -------------------------------------------------------------------------------------
def solution(slug):
    return (ROOT / "solutions" / f"{slug}.ipynb").read_bytes()


def exercise(slug):
    return (ROOT / "exercises" / f"{slug}.ipynb").read_bytes()


def one_wrong(slug):
    """The solution with its first solution cell replaced by the exercise's stub: that exercise gets 0."""
    sol, ex = json.loads(solution(slug)), json.loads(exercise(slug))
    i = next(i for i, c in enumerate(sol["cells"]) if "### BEGIN SOLUTION" in "".join(c["source"]))
    sol["cells"][i] = ex["cells"][i]
    src = "".join(ex["cells"][i]["source"])
    broken = next(e for e, fn in load_assignment(slug).function_names.items() if f"def {fn}(" in src)
    return json.dumps(sol).encode(), broken


SUBMISSIONS = {
    "none": lambda slug: {"notes.txt": b"my answers are in my head"},
    "two": lambda slug: {f"{slug}.ipynb": solution(slug), "scratch/other.ipynb": exercise(slug)},
    "garbage": lambda slug: {f"{slug}.ipynb": b"\x00\xffnot a notebook"},
}


def env_for(root: Path, python: str = sys.executable) -> dict:
    """The platform's environment: nothing of this one's Python settings, the shared model cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return dict(env, TINYINTERP_PLATFORM_ROOT=str(root), TINYINTERP_PYTHON=python,
                TINYINTERP_CACHE=str(os.environ.get("TINYINTERP_CACHE") or cache_dir()))


def _place(folder: Path, files: dict) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


# ----- each platform, as it runs the export ----------------------------------------------------------------
def run_gradescope(out: Path, work: Path, files: dict, python: str = sys.executable) -> dict:
    """Gradescope: the zip unpacked into /autograder/source, run_autograder copied to /autograder, the
    submission in /autograder/submission, then `run_autograder` run from /autograder."""
    ag = work / "autograder"
    (ag / "source").mkdir(parents=True)
    with zipfile.ZipFile(out / "autograder.zip") as z:
        z.extractall(ag / "source")
    shutil.copy(ag / "source" / "run_autograder", ag / "run_autograder")
    (ag / "submission").mkdir()
    _place(ag / "submission", files)
    p = subprocess.run(["bash", "run_autograder"], cwd=ag, env=env_for(work, python), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    data = json.loads((ag / "results" / "results.json").read_text())
    jsonschema.validate(data, GRADESCOPE_RESULTS)
    graded = [t for t in data["tests"] if t["max_score"] > 0]
    return {"earned": data["score"], "max": sum(t["max_score"] for t in graded), "gradable": True,
            "text": data["output"] + "\n".join(t["output"] for t in data["tests"]), "raw": data,
            "full": {t["name"].split(":")[0] for t in graded if t["score"] == t["max_score"]}}


def run_prairielearn(out: Path, work: Path, files: dict, python: str = sys.executable) -> dict:
    """PrairieLearn: the question's tests/ at /grade/tests, the student's files at /grade/student, then
    info.json's entrypoint executed."""
    (q,) = (out / "questions").iterdir()
    info = json.loads((q / "info.json").read_text())
    shutil.copytree(q / "tests", work / "grade" / "tests")
    (work / "grade" / "student").mkdir(parents=True)
    (work / "grade" / "results").mkdir()
    _place(work / "grade" / "student", files)
    entry = work / info["externalGradingOptions"]["entrypoint"].lstrip("/")
    p = subprocess.run([str(entry)], cwd=work / "grade", env=env_for(work, python), capture_output=True, text=True,
                       timeout=info["externalGradingOptions"]["timeout"])
    assert p.returncode == 0, p.stderr[-2000:]
    data = json.loads((work / "grade" / "results" / "results.json").read_text())
    jsonschema.validate(data, PRAIRIELEARN_RESULTS)
    tests = data["tests"]
    mx = sum(t["max_points"] for t in tests)
    return {"earned": data["score"] * mx, "max": mx, "gradable": data["gradable"], "raw": data,
            "text": data["message"] + "\n" + data.get("output", "") + "\n".join(t.get("message", "") for t in tests),
            "full": {t["name"] for t in tests if t["points"] == t["max_points"]}}


SUDO = "#!/bin/bash\n# the runner's sudo, here where the tests already have the rights they have\n" \
       "while [[ \"$1\" == -* ]]; do shift; done\nexec \"$@\"\n"


def run_classroom(out: Path, work: Path, files: dict, first_only: bool = False) -> dict:
    """GitHub Classroom: the repository (the export's .github and the student's files), each test's `run`
    executed by a shell in it, points when it exits 0 (education/autograding)."""
    repo = work / "repo"
    shutil.copytree(out / ".github", repo / ".github")
    _place(repo, files)
    spec = json.loads((repo / ".github" / "classroom" / "autograding.json").read_text())
    jsonschema.validate(spec, AUTOGRADING)
    shim = work / "bin"
    shim.mkdir()
    (shim / "sudo").write_text(SUDO)
    (shim / "sudo").chmod(0o755)
    env = dict(env_for(work), RUNNER_TEMP=str(work / "runner_temp"),
               PATH=f"{shim}:{Path(sys.executable).parent}:{os.environ['PATH']}")
    (work / "runner_temp").mkdir()
    earned, text, full = 0.0, "", set()
    for t in spec["tests"][:1] if first_only else spec["tests"]:
        p = subprocess.run(["bash", "-c", t["run"]], cwd=repo, env=env, capture_output=True, text=True,
                           timeout=t["timeout"] * 60)
        assert p.returncode in (0, 1), p.stderr[-2000:]
        text += p.stdout
        if p.returncode == 0:
            earned += t["points"]
            full.add(t["name"].split(" ")[0])
    return {"earned": earned, "max": sum(t["points"] for t in spec["tests"]), "gradable": True, "text": text,
            "full": full, "raw": spec, "temp": work / "runner_temp"}


RUNNERS = {"gradescope": run_gradescope, "prairielearn": run_prairielearn, "github-classroom": run_classroom}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    made = {}

    def get(platform, slug=CHEAP):
        if (platform, slug) not in made:
            out = tmp_path_factory.mktemp(f"export-{platform}")
            export(platform, slug, out, ExportOptions())
            made[platform, slug] = out
        return made[platform, slug]
    return get


# ----- grading, end to end ------------------------------------------------------------------------------------
@pytest.mark.parametrize("platform", PLATFORMS)
def test_solution_gets_full_marks(platform, exported, tmp_path):
    files = {f"{CHEAP}.ipynb": solution(CHEAP)}
    if platform == "github-classroom":  # a repository may hold other notebooks: its <slug>.ipynb is graded
        files["scratch/try.ipynb"] = exercise(CHEAP)
    if platform == "gradescope":  # a zip made on a Mac: its resource forks are not notebooks
        files[f"__MACOSX/._{CHEAP}.ipynb"] = b"\x00\x05\x16\x07"
    r = RUNNERS[platform](exported(platform), tmp_path, files)
    assert r["max"] == load_assignment(CHEAP).max_points
    assert r["earned"] == pytest.approx(r["max"]) and r["gradable"]
    assert ISOLATION in r["text"]
    if platform == "github-classroom":  # graded once: the first test saved the result, the others read it
        assert len(list(r["temp"].rglob("*.json"))) == 1
        n = len(load_assignment(CHEAP).exercises)
        assert r["text"].count(f"Score: {r['max']:g} / {r['max']:g} (status: graded)") == n


@pytest.mark.parametrize("platform", PLATFORMS)
def test_exercise_stub_gets_zero(platform, exported, tmp_path):
    r = RUNNERS[platform](exported(platform), tmp_path, {f"Copy of {CHEAP}.ipynb": exercise(CHEAP)}
                          if platform != "prairielearn" else {f"{CHEAP}.ipynb": exercise(CHEAP)})
    assert r["earned"] == 0 and r["gradable"] and r["full"] == set()
    assert "NotImplementedError" in r["text"] or "not implemented" in r["text"].lower()


@pytest.mark.parametrize("platform", PLATFORMS)
def test_one_wrong_exercise_gets_partial_credit(platform, exported, tmp_path):
    nb, broken = one_wrong(CHEAP)
    r = RUNNERS[platform](exported(platform), tmp_path, {f"{CHEAP}.ipynb": nb})
    assignment = load_assignment(CHEAP)
    others = {e.id for e in assignment.exercises} - {broken}
    assert 0 < r["earned"] < r["max"] and r["gradable"]
    assert r["full"] == others
    if platform == "gradescope":  # points only in after_published tests; the visible part shows public tests only
        tests = r["raw"]["tests"]
        assert {t["visibility"] for t in tests if t["max_score"] > 0} == {"after_published"}
        visible = [t for t in tests if t["visibility"] == "visible"]
        assert len(visible) == len(assignment.exercises) and all(t["score"] == t["max_score"] == 0 for t in visible)
        assert [t["status"] for t in visible] == ["failed" if e.id == broken else "passed"
                                                  for e in assignment.exercises]
        assert "Score" not in r["raw"]["output"] and "when your instructor publishes" in r["raw"]["output"]


@pytest.mark.parametrize("case", sorted(SUBMISSIONS))
@pytest.mark.parametrize("platform", PLATFORMS)
def test_no_notebook_two_notebooks_or_garbage_get_a_clear_message(platform, case, exported, tmp_path):
    files = SUBMISSIONS[case](CHEAP)
    if platform == "github-classroom" and case == "two":  # a repository may hold other notebooks: its <slug>.ipynb wins
        files = {"scratch_1.ipynb": exercise(CHEAP), "scratch_2.ipynb": exercise(CHEAP)}
    run = RUNNERS[platform]
    r = run(exported(platform), tmp_path, files, first_only=True) if platform == "github-classroom" else \
        run(exported(platform), tmp_path, files)
    expected = {"none": "No notebook", "two": "2 notebooks", "garbage": "unreadable notebook"}[case]
    assert expected in r["text"]
    assert r["earned"] == 0
    if platform == "prairielearn":  # not the student's score: PrairieLearn does not count it
        assert r["gradable"] is False


@pytest.mark.parametrize("platform", ["gradescope", "prairielearn"])
def test_an_image_without_tinyinterp_still_writes_a_grader_error(platform, exported, tmp_path):
    r = RUNNERS[platform](exported(platform), tmp_path, {f"{CHEAP}.ipynb": solution(CHEAP)},
                          python=str(tmp_path / "no-python-here"))
    assert r["earned"] == 0 and "Grader error, not your work" in r["text"]
    if platform == "prairielearn":
        assert r["gradable"] is False


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory) -> tuple[Path, Path]:
    """``(wheel, python)``: tinyinterp built offline into a wheel and installed in a fresh venv outside the
    repository (its dependencies, torch..., through a .pth naming this environment's site-packages)."""
    import sysconfig

    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT / "src", tmp / "source" / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp / "source" / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}

    def run(cmd):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp)
        assert p.returncode == 0, p.stderr[-2000:]
        return p.stdout

    run([*pip, "wheel", str(tmp / "source"), "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp)])
    (wheel,) = tmp.glob("tinyinterp-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")])
    python = tmp / "venv" / "bin" / "python"
    run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)])
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (site / "_deps.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n{sysconfig.get_paths()['platlib']}\n")
    where = run([str(python), "-c", "import tinyinterp; print(tinyinterp.__file__)"]).strip()
    assert Path(where).is_relative_to(tmp / "venv"), where
    return wheel, python


def test_the_installed_package_grades_alone_from_a_shipped_wheel(wheel_python, tmp_path):
    """The Gradescope zip with --wheel, run by the venv the wheel went into, outside the repository."""
    wheel, python = wheel_python
    export("gradescope", CHEAP, tmp_path / "export", ExportOptions(wheel=wheel))
    with zipfile.ZipFile(tmp_path / "export" / "autograder.zip") as z:
        assert wheel.name in z.namelist() and f"{wheel.name}[grade]" in z.read("setup.sh").decode()
    nb, broken = one_wrong(CHEAP)
    r = run_gradescope(tmp_path / "export", tmp_path / "platform", {f"{CHEAP}.ipynb": nb}, python=str(python))
    assert 0 < r["earned"] < r["max"] and broken not in r["full"] and ISOLATION in r["text"]


def test_a_chapter_with_a_trained_model_reads_it_from_the_cache(exported, tmp_path):
    r = run_prairielearn(exported("prairielearn", "02_attention"), tmp_path,
                         {"02_attention.ipynb": solution("02_attention")})
    assert r["raw"]["score"] == 1.0 and r["gradable"]


def test_without_the_sandbox_results_say_unsafe(exported, tmp_path, monkeypatch):
    from tinyinterp.grading import sandbox
    from tinyinterp.grading.platforms import prairielearn

    monkeypatch.setattr(sandbox, "can_isolate", lambda: False)
    monkeypatch.setenv("TINYINTERP_PLATFORM_ROOT", str(tmp_path))
    (tmp_path / "grade" / "student").mkdir(parents=True)
    (tmp_path / "grade" / "student" / f"{CHEAP}.ipynb").write_bytes(solution(CHEAP))
    assert prairielearn.main([CHEAP]) == 0
    data = json.loads((tmp_path / "grade" / "results" / "results.json").read_text())
    jsonschema.validate(data, PRAIRIELEARN_RESULTS)
    assert data["score"] == 1.0 and "UNSAFE: no sandbox" in data["output"] and "UNSAFE" in data["message"]


# ----- what an export contains ---------------------------------------------------------------------------------
def solution_lines(slug) -> set[str]:
    """The non-trivial lines of every solution region of the chapter's solution notebook."""
    lines, inside = set(), False
    for c in json.loads(solution(slug))["cells"]:
        for line in "".join(c["source"]).splitlines():
            if line.strip() == "### BEGIN SOLUTION":
                inside = True
            elif line.strip() == "### END SOLUTION":
                inside = False
            elif inside and len(line.strip()) >= 20:
                lines.add(line.strip())
    return lines


def export_texts(out: Path) -> dict[str, str]:
    texts = {}
    for p in out.rglob("*"):
        if p.suffix == ".zip":
            with zipfile.ZipFile(p) as z:
                texts.update({f"{p.name}/{n}": z.read(n).decode() for n in z.namelist()})
        elif p.is_file():
            texts[str(p.relative_to(out))] = p.read_text()
    return texts


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("slug", CHAPTERS)
def test_export_has_no_solution_and_well_formed_scripts(platform, slug, tmp_path):
    export(platform, slug, tmp_path, ExportOptions())
    texts = export_texts(tmp_path)
    assert texts and not any(name.endswith(".ipynb") for name in texts)
    secret = solution_lines(slug)
    assert secret
    for name, text in texts.items():
        assert "BEGIN SOLUTION" not in text, name
        leaked = [s for s in secret if s in text]
        assert not leaked, (name, leaked[:3])
        if name.endswith((".sh", "run_autograder")):
            assert subprocess.run(["bash", "-n", "-c", text]).returncode == 0, name
    if platform == "gradescope":
        assert set(texts) == {"autograder.zip/setup.sh", "autograder.zip/run_autograder"}
        assert "tinyinterp.grading.platforms.warm " + slug in texts["autograder.zip/setup.sh"]
        with zipfile.ZipFile(tmp_path / "autograder.zip") as z:
            assert all((i.external_attr >> 16) & 0o111 for i in z.infolist())
    elif platform == "prairielearn":
        info = json.loads(texts[f"questions/tinyinterp_{slug}/info.json"])
        jsonschema.validate(info, PRAIRIELEARN_INFO)
        assert f'file-names="{slug}.ipynb"' in texts[f"questions/tinyinterp_{slug}/question.html"]
        assert os.access(tmp_path / f"questions/tinyinterp_{slug}/tests/run.sh", os.X_OK)
    else:
        spec = json.loads(texts[".github/classroom/autograding.json"])
        jsonschema.validate(spec, AUTOGRADING)
        assignment = load_assignment(slug)
        ids = [t["run"].split("--exercise ")[1].split()[0] for t in spec["tests"]]
        assert ids == [e.id for e in assignment.exercises]
        assert sum(t["points"] for t in spec["tests"]) == assignment.max_points
        flow = yaml.safe_load(texts[".github/workflows/classroom.yml"])
        steps = flow["jobs"]["autograding"]["steps"]
        assert any(s.get("uses") == "education/autograding@v1" for s in steps)


def test_prairielearn_uuids_differ_between_chapters(tmp_path):
    uuids = set()
    for slug in CHAPTERS:
        export("prairielearn", slug, tmp_path / slug, ExportOptions())
        uuids.add(json.loads((tmp_path / slug / f"questions/tinyinterp_{slug}/info.json").read_text())["uuid"])
    assert len(uuids) == len(CHAPTERS)


def _literal(source: str):
    """The value a keyword argument's source text spells, or the text itself when it is not a literal."""
    try:
        return ast.literal_eval(source.strip())
    except (ValueError, SyntaxError):
        return source.strip()


@pytest.mark.parametrize("slug", CHAPTERS)
def test_every_model_a_chapter_loads_is_warmed(slug):
    """Each call in the solution notebook of a function that BUILDERS names matches exactly one builder
    (its keyword arguments, progress aside, written as the builder's), and that builder is warmed."""
    code = "\n".join("".join(c["source"]) for c in json.loads(solution(slug))["cells"] if c["cell_type"] == "code")
    used = set()
    for function in {f for _, f, _ in BUILDERS.values()}:
        for args in re.findall(rf"\b{function}\(([^)]*)\)", code):
            given = {k: _literal(v) for k, v in re.findall(r"(\w+)\s*=\s*([^,]+)", args) if k != "progress"}
            match = [name for name, (_, f, kwargs) in BUILDERS.items() if f == function and given == kwargs]
            assert len(match) == 1, f"{slug}: {function}({args}) is no model that warm.BUILDERS builds"
            used.add(match[0])
    assert slug in CHAPTER_MODELS and used <= set(CHAPTER_MODELS[slug]), used


# ----- the command line -------------------------------------------------------------------------------------
def cli(capsys, *args) -> tuple[int, str, str]:
    from tinyinterp.cli import main

    try:
        rc = main(["autograder", *map(str, args)])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_writes_a_gradescope_zip_with_package_spec_and_wheel(tmp_path, capsys):
    wheel = tmp_path / "tinyinterp-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK fake wheel")
    rc, out, err = cli(capsys, "gradescope", CHEAP, "-o", tmp_path / "a", "--wheel", wheel, "--memory-gb", "3")
    assert rc == 0 and "autograder.zip" in out, err
    with zipfile.ZipFile(tmp_path / "a" / "autograder.zip") as z:
        assert sorted(z.namelist()) == sorted(["setup.sh", "run_autograder", wheel.name])
        setup = z.read("setup.sh").decode()
        assert f"/autograder/source/{wheel.name}[grade]" in setup
        assert "--memory-gb 3" in z.read("run_autograder").decode()
    rc, out, err = cli(capsys, "gradescope", CHEAP, "-o", tmp_path / "b", "--package-spec",
                       "tinyinterp[grade] @ https://example.org/t.whl")
    assert rc == 0, err
    with zipfile.ZipFile(tmp_path / "b" / "autograder.zip") as z:
        setup = z.read("setup.sh").decode()
    assert "'tinyinterp[grade] @ https://example.org/t.whl'" in setup and "==0.1.0" not in setup


@pytest.mark.parametrize("args, message", [
    (["moodle", CHEAP], "invalid choice"),
    (["gradescope", "99_nope"], "no assignment"),
    (["gradescope", CHEAP, "--wheel", "/nonexistent/tinyinterp-0.1.0-py3-none-any.whl"], "no wheel"),
    (["github-classroom", CHEAP, "--wheel", "README.md"], "not a tinyinterp wheel"),
    (["gradescope", CHEAP, "--memory-gb", "0"], "must be positive"),
    (["prairielearn", CHEAP], "not empty"),
])
def test_cli_misuse_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    if message == "not empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    rc, _, err = cli(capsys, *args, "-o", out)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists() or sorted(out.iterdir()) == [out / "keep.txt"]  # nothing written


def test_cli_help_names_every_platform_and_what_it_writes(capsys):
    rc, out, _ = cli(capsys, "--help")
    text = " ".join(out.split())
    assert rc == 0 and all(p in text for p in PLATFORMS)
    assert "autograder.zip" in text and "info.json" in text and "autograding.json" in text and "2 misuse" in text


@pytest.mark.parametrize("args, message", [([CHEAP], "--exercise"), ([CHEAP, "--exercise", "nope"], "no exercise"),
                                           (["99_nope", "--exercise", "embed"], "no assignment")])
def test_classroom_entry_point_misuse_is_one_line_and_exit_2(args, message, capsys):
    from tinyinterp.grading.platforms import github_classroom

    try:
        rc = github_classroom.main(args)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err, err
