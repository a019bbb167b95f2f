"""What the exporters share: where a platform puts things, picking the submitted notebook, grading it
with the same core as ``tinyinterp grade`` (hidden tests, mistake diagnoses, partial credit, the
bubblewrap sandbox when this machine allows it), and the text students see.

Run time (on the platform) goes through :func:`grade_submission`; export time (the instructor's
machine) through :class:`ExportOptions` and :func:`install_commands`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...cli import _add_run_limits, _find_root, _Parser

PLATFORM_ROOT_ENV = "TINYINTERP_PLATFORM_ROOT"  # stands in for "/" in /autograder/... and /grade/...
CACHE_DIR = "/opt/tinyinterp-cache"  # the trained models, warmed when the image is built
VENV_DIR = "/opt/tinyinterp-venv"  # where setup.sh / the Dockerfile install tinyinterp
MAX_TEXT = 20_000  # characters of one feedback string (tracebacks are the learner's and can be long)


class ExportError(Exception):
    """An export that cannot be made as asked (the CLI prints it as one line, exit 2)."""


def platform_path(path: str) -> Path:
    """``path`` (absolute, as the platform documents it) under ``$TINYINTERP_PLATFORM_ROOT`` when set."""
    root = os.environ.get(PLATFORM_ROOT_ENV)
    return Path(root) / path.lstrip("/") if root else Path(path)


# ----- the limits a run uses ----------------------------------------------------------------------------
@dataclass
class RunSettings:
    cell_timeout_s: float = 60.0
    submission_timeout_s: float = 300.0
    memory_gb: float = 4.0

    def argv(self) -> list[str]:
        return ["--cell-timeout", f"{self.cell_timeout_s:g}", "--submission-timeout",
                f"{self.submission_timeout_s:g}", "--memory-gb", f"{self.memory_gb:g}"]


def run_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The arguments every platform's run entry point takes: the chapter and the limits (those of
    ``tinyinterp grade``; misuse is one line and exit 2, as for the tinyinterp command)."""
    p = _Parser(prog=prog, description=description)
    p.add_argument("chapter", help="the chapter slug, e.g. 01_tokens_and_embeddings")
    _add_run_limits(p)
    return p


def settings_from(args) -> RunSettings:
    return RunSettings(args.cell_timeout, args.submission_timeout, args.memory_gb)


# ----- the submission ----------------------------------------------------------------------------------
def find_notebooks(folder: Path) -> list[Path]:
    """Every regular file named ``*.ipynb`` under ``folder`` (never a symlink: the grader reads what it
    picks), sorted; hidden folders (.git, .ipynb_checkpoints) and macOS zip debris (__MACOSX, ._*) skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):  # does not follow symlinked folders
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        for name in filenames:
            if name.startswith("._"):
                continue
            p = Path(dirpath) / name
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if name.lower().endswith(".ipynb") and stat.S_ISREG(st.st_mode):
                found.append(p)
    return sorted(found)


def pick_notebook(folder: Path, slug: str) -> tuple[Path | None, str | None]:
    """``(the notebook, None)``, or ``(None, why not)`` when there is none or more than one."""
    if not folder.is_dir():
        return None, f"No submission folder ({folder}). Submit your notebook, {slug}.ipynb."
    found = find_notebooks(folder)
    if not found:
        others = sorted(p.name for p in folder.rglob("*") if p.is_file())[:5]
        return None, (f"No notebook (.ipynb file) was submitted. Submit your {slug}.ipynb (File > Download > "
                      f"Download .ipynb)" + (f"; found only: {', '.join(others)}" if others else "") + ".")
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(folder)) for p in found[:10])
        return None, (f"{len(found)} notebooks were submitted ({names}); submit only one, your "
                      f"{slug}.ipynb, so that the grader knows which to grade.")
    return found[0], None


# ----- grading -------------------------------------------------------------------------------------------
@dataclass
class Graded:
    """One submission graded: the result (hidden tests included), optionally the public-tests-only
    result (what ``tinyinterp check`` and the notebook's check cells show), and the isolation used."""
    result: object  # grading.grader.SubmissionResult
    public: object | None
    isolation: str
    sandboxed: bool
    seconds: float = 0.0


def _book_root(start: Path) -> Path | None:
    try:
        return _find_root(start)
    except FileNotFoundError:
        return None


def grade_submission(path: Path, slug: str, settings: RunSettings, hide: list[Path],
                     public_too: bool = False) -> Graded:
    """Grade ``path`` as ``tinyinterp grade`` would: in the sandbox when :func:`~..sandbox.can_isolate`,
    else unsandboxed with the result's notes saying UNSAFE. Raises only for a grader-side problem."""
    from ..assignment import load_assignment
    from .. import forkserver
    from ..grader import GradeOptions, grade_notebook
    from ..sandbox import Limits, can_isolate, isolation_summary, preflight, private_uids

    start = time.perf_counter()
    assignment = load_assignment(slug)
    limits = Limits(memory_bytes=int(settings.memory_gb * 2**30))
    sandboxed = can_isolate()
    book = _book_root(Path.cwd())
    hidden_dirs = sorted({Path(os.path.abspath(h)) for h in hide} | ({book, book / "solutions"} if book else set()))

    def options(hidden: bool) -> GradeOptions:
        return GradeOptions(cell_timeout_s=settings.cell_timeout_s, submission_timeout_s=settings.submission_timeout_s,
                            limits=limits, hidden=hidden, hide=list(hidden_dirs), unsafe_no_sandbox=not sandboxed)

    if sandboxed:
        preflight(hidden_dirs)  # SandboxUnavailable: a misconfigured image, reported as a grader error
    isolation = isolation_summary(limits, sandboxed=sandboxed)
    with private_uids(1) as uids:
        try:
            result = grade_notebook(path, "student", assignment, options(True), uids[0])
            public = grade_notebook(path, "student", assignment, options(False), uids[0]) if public_too else None
        finally:
            forkserver.close_all()  # the uid's pre-warmed template ends before the uid is given back
    return Graded(result, public, isolation, sandboxed, round(time.perf_counter() - start, 2))


# ----- what students read --------------------------------------------------------------------------------
def clean(text: str, limit: int = MAX_TEXT) -> str:
    """Valid UTF-8 (a learner's output may hold anything), at most ``limit`` characters."""
    text = str(text).encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 40] + f"\n... ({len(text) - limit + 40} more characters)"


def isolation_line(g: Graded) -> str:
    """First line of every visible output: sandboxed, or UNSAFE and why."""
    if g.result.status == "unreadable":
        return "Isolation: none needed (the notebook could not be read, so none of it ran)"
    if g.sandboxed:
        return "Isolation: your notebook ran in a " + g.isolation.split(": ", 1)[-1]
    return g.isolation  # starts "UNSAFE: no sandbox (why): learner code runs as you; ..."


def exercise_text(e, public: bool = False) -> str:
    """One exercise's feedback: points, tests passed, and the diagnosis when not all passed."""
    if public:  # no points: the score counts the hidden tests too
        head = f"{e.cases_passed} of {e.cases_total} public tests (those of the notebook's check cells) passed"
    else:
        head = (f"{e.points:g} / {e.max_points:g} points; {e.cases_passed} of {e.cases_total} tests (public and "
                f"hidden) passed")
    return clean(head if e.kind == "ok" else f"{head}.\n{e.message}")


def summary_text(g: Graded, slug: str) -> str:
    r = g.result
    lines = [isolation_line(g), f"tinyinterp autograder, {slug}: {r.file}",
             f"Score: {r.total:g} / {r.max_total:g} (status: {r.status})"]
    if r.status == "error":
        lines.append("The grader failed on this submission (not your work): tell your instructor.")
    exercise_messages = {e.message for e in r.exercises}
    notes = [n for n in r.notes if n not in exercise_messages]
    if notes:
        lines += ["Notes:", *[f"- {n}" for n in notes]]
    lines.append("Partial credit is the fraction of tests passed; the tests include hidden cases (other seeds "
                 "and shapes) beyond those in the notebook.")
    return clean("\n".join(lines))


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` atomically (the platform never reads half a file)."""
    import json

    from ..report import atomic_write

    atomic_write(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


# ----- export ---------------------------------------------------------------------------------------------
@dataclass
class ExportOptions:
    package_spec: str = ""  # pip requirement for tinyinterp (default: tinyinterp[grade]==this version)
    wheel: Path | None = None  # a tinyinterp wheel to ship in the export and install instead
    torch_index_url: str = "https://download.pytorch.org/whl/cpu"  # "" = PyPI's default torch
    settings: RunSettings = field(default_factory=RunSettings)
    image: str = ""  # PrairieLearn: the grader image name (default: tinyinterp-grader:<version>)

    def spec(self) -> str:
        from ... import __version__

        return self.package_spec or f"tinyinterp[grade]=={__version__}"


def install_commands(opts: ExportOptions, pip: str, wheel_at: str | None) -> list[str]:
    """Shell lines installing torch (the CPU build by default) and tinyinterp (the shipped wheel at
    ``wheel_at`` when there is one, else :meth:`ExportOptions.spec`), with ``pip`` (a command)."""
    lines = []
    if opts.torch_index_url:
        lines.append(f"{pip} install --no-cache-dir torch --index-url {shlex.quote(opts.torch_index_url)}")
    target = f"{wheel_at}[grade]" if wheel_at else opts.spec()
    lines.append(f"{pip} install --no-cache-dir {shlex.quote(target)}")
    return lines


def check_wheel(wheel: Path | None) -> None:
    if wheel is None:
        return
    if not wheel.is_file():
        raise ExportError(f"no wheel at {wheel}")
    if not (wheel.name.startswith("tinyinterp-") and wheel.name.endswith(".whl")):
        raise ExportError(f"{wheel.name} is not a tinyinterp wheel (tinyinterp-<version>-...whl; build one with "
                          f"`python -m pip wheel --no-deps -w dist .`)")


def prepare_out(out: Path) -> None:
    """Create ``out``; refuse a file, or a folder that is not empty (never overwrite an export)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty; choose a new folder (an export never overwrites files)")
    out.mkdir(parents=True, exist_ok=True)


def write_text(path: Path, text: str, executable: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if executable:
        path.chmod(0o755)
    return path


def run_command(module: str, slug: str, settings: RunSettings) -> str:
    """The command line of a platform's run entry point, with ``$PY`` the Python that has tinyinterp."""
    return " ".join(['"$PY"', "-m", f"tinyinterp.grading.platforms.{module}", shlex.quote(slug),
                     *settings.argv()])
