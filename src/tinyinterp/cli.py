"""The ``tinyinterp`` command line. Misuse prints one line and exits with status 2; a grading failure
on the grader's side (status ``error``) exits with :data:`EXIT_GRADER_ERROR`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


EXIT_GRADER_ERROR = 3
GRADE_EXIT_CODES = ("exit status: 0 every submission was graded (whatever its score); 2 misuse; "
                    f"{EXIT_GRADER_ERROR} at least one submission has status `error` (the grader failed, not the "
                    "student: see its feedback, fix the cause, rerun with --resume); 130 interrupted.")
CHECK_EXIT_CODES = ("exit status: 0 full marks; 1 some tests fail; 2 misuse (no such file, or the chapter "
                    f"cannot be told: use --assignment); {EXIT_GRADER_ERROR} grader error (status `error`: "
                    "not your work; tell your instructor).")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _find_root(start: Path) -> Path:
    for p in [start, *start.parents]:
        if (p / "_config.yml").exists() and (p / "solutions").is_dir():
            return p
    raise FileNotFoundError(f"no book root (a folder with _config.yml and solutions/) at or above {start}")


def cmd_exercises(args) -> int:
    from .harness import all_exercises

    exercises = [ex.describe() for ex in all_exercises().values()]
    if args.chapter:
        exercises = [e for e in exercises if e["chapter"] == args.chapter]
    if args.json:
        print(json.dumps(exercises, indent=2))
    else:
        for e in exercises:
            print(f"{e['id']:24} {e['chapter']:28} {e['points']} pt  difficulty {e['difficulty']}  "
                  f"importance {e['importance']}  ~{e['minutes']} min  {e['signature']}")
    return 0


def cmd_release(args) -> int:
    from .release import ReleaseError, release

    try:
        root = _find_root(Path(args.root).resolve())
        if args.nbgrader:
            from .release import write_nbgrader_source

            written = write_nbgrader_source(root, Path(args.nbgrader))
            print(f"wrote {len(written)} nbgrader source notebooks under {args.nbgrader}/source/")
            return 0
        plan = release(root, check_only=args.check)
    except (ReleaseError, FileNotFoundError) as e:
        print(f"tinyinterp release: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, FileNotFoundError) else 1
    changed = [*plan.stale, *plan.orphans]
    if args.check:
        if changed:
            names = ", ".join(str(p.relative_to(root)) for p in changed)
            print(f"exercises/ or the grading data is stale: {names}. Run `tinyinterp release`.", file=sys.stderr)
            return 1
        print(f"exercises/ and the grading data are up to date ({len(plan.outputs)} files).")
        return 0
    print(f"wrote {len(plan.stale)} of {len(plan.outputs)} files (exercise notebooks and grading data)"
          + (f", removed {len(plan.orphans)} orphans" if plan.orphans else "") + ".")
    return 0


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return v
    return parse


def _grade_options(args, hidden: bool):
    from .grading.grader import GradeOptions
    from .grading.sandbox import Limits

    return GradeOptions(cell_timeout_s=args.cell_timeout, submission_timeout_s=args.submission_timeout,
                        limits=Limits(memory_bytes=int(args.memory_gb * 2**30)), hidden=hidden)


def _id_pattern(text: str) -> str:
    import re

    try:
        compiled = re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"not a regular expression ({e}): {text!r}") from None
    if "student" not in compiled.groupindex:
        raise argparse.ArgumentTypeError(f"needs a (?P<student>...) group: {text!r}")
    return text


class UsageError(Exception):
    """Misuse of a command: ``main`` prints it as one line and exits with status 2."""


def _assignment(slug: str):
    """The assignment from the grading data installed with the package."""
    from .grading import load_assignment

    try:
        return load_assignment(slug)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None


def _optional_root(args) -> Path | None:
    """The book root (``--root``, else searched upwards from here), or None outside a book."""
    try:
        return _find_root(Path(args.root or ".").resolve())
    except FileNotFoundError as e:
        if args.root:
            raise UsageError(str(e)) from None
        return None


def _stale_data_note(root: Path) -> str | None:
    """A note when the book's solutions/ no longer match the installed package's grading data."""
    from .grading.assignment import book_data, installed_data

    try:
        here = json.loads(book_data(root))["assignments"]
    except (OSError, ValueError, KeyError):
        return None
    if here == installed_data():
        return None
    return (f"note: {root / 'solutions'} differs from the grading data installed with tinyinterp; grading uses the "
            f"installed data (run `tinyinterp release`, and reinstall unless it is an editable install)")


def _grader_error_summary(results) -> str | None:
    bad = sorted(r.student for r in results if r.status == "error")
    if not bad:
        return None
    return (f"{len(bad)} submission(s) could not be graded (status `error`: the grader failed, not the students): "
            f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}. See their feedback, fix the cause, and rerun "
            f"with --resume (only these are graded again).")


def _hidden_from_learners(root: Path | None, folders: list, files: list) -> list[Path]:
    """Folders the sandbox must never show: the book (its solutions/ and .git), the submissions and
    feedback folders, and the folders of the output files (gradebook, Canvas CSV; batch adds the .state)."""
    hide = [root, root / "solutions"] if root else []
    hide += [Path(p).resolve() for p in folders if p] + [Path(p).resolve().parent for p in files if p]
    return hide


def _require_sandbox(options) -> None:
    """Refuse to grade without the sandbox, unless --unsafe-no-sandbox (one line, exit 2)."""
    from .grading.sandbox import SandboxUnavailable, preflight, sandbox_problem

    if options.unsafe_no_sandbox:
        return
    problem = sandbox_problem()
    if problem is None:
        try:
            preflight(options.hide)
            return
        except SandboxUnavailable as e:
            problem = str(e)
    raise UsageError(f"cannot sandbox learner code: {problem}. Grade as root with bubblewrap installed (`make "
                     f"sandbox-deps`), or pass --unsafe-no-sandbox to run learner code unsandboxed, as you")


def cmd_grade(args) -> int:
    from .grading.batch import BatchConfig, run_batch
    from .grading.sandbox import isolation_summary

    subs = Path(args.submissions)
    if not subs.is_dir():
        raise UsageError(f"{subs} is not a folder of submissions")
    assignment = _assignment(args.assignment)
    root = _optional_root(args)
    options = _grade_options(args, hidden=True)
    options.hide = _hidden_from_learners(root, [subs, args.feedback], [args.out, args.canvas])
    options.unsafe_no_sandbox = args.unsafe_no_sandbox
    _require_sandbox(options)
    note = _stale_data_note(root) if root else None
    if note:
        print(note, file=sys.stderr)
    cfg = BatchConfig(subs, Path(args.out), Path(args.feedback), args.workers, args.resume,
                      Path(args.canvas) if args.canvas else None, args.feedback_format, args.id_pattern,
                      options, progress=not args.quiet)
    isolation = isolation_summary(options.limits, sandboxed=not options.unsafe_no_sandbox)
    print(isolation, file=sys.stderr)
    try:
        results, notes = run_batch(cfg, assignment)
    except KeyboardInterrupt:
        print("interrupted: finished submissions are saved; run again with --resume to continue", file=sys.stderr)
        return 130
    for line in notes:
        print(line)
    print(isolation)
    print(f"gradebook: {cfg.out}  feedback: {cfg.feedback}/" + (f"  canvas: {cfg.canvas}" if cfg.canvas else ""))
    errors = _grader_error_summary(results)
    if errors:
        print(errors, file=sys.stderr)
        return EXIT_GRADER_ERROR
    return 0


def _chapter(path: Path, override: str | None) -> str:
    """``--assignment``, else the notebook's metadata, else its file name (Colab/browser decorations
    such as "Copy of" and " (1)" allowed)."""
    from .grading.assignment import chapter_of, known_chapters
    from .grading.notebook import NotebookError, read_notebook

    if override:
        return override
    try:
        known = known_chapters()
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    try:
        nb = read_notebook(path)
    except NotebookError:
        nb = {}  # the name may still tell; grading then reports the notebook as unreadable
    slug = chapter_of(path, nb, known)
    if slug is None:
        raise UsageError(f"cannot tell which chapter {path.name} is (no tinyinterp metadata, no chapter in its "
                         f"name); name it with --assignment, one of: {', '.join(known)}")
    return slug


def cmd_check(args) -> int:
    from .grading.grader import grade_notebook

    path = Path(args.notebook)
    if not path.is_file():
        raise UsageError(f"no notebook at {path}")
    assignment = _assignment(_chapter(path, args.assignment))
    options = _grade_options(args, hidden=False)
    root = _optional_root(args)
    options.hide = [root / "solutions"] if root else []
    from .grading.sandbox import isolation_summary

    print(isolation_summary(options.limits, sandboxed=False, learner_own_code=True), file=sys.stderr)
    r = grade_notebook(path, "you", assignment, options, None)
    from .grading.ids import display_name

    print(f"{assignment.slug}: {display_name(path.name)}")
    print(f"{'exercise':26} {'points':>9}  tests   result")
    for e in r.exercises:
        print(f"{e.id:26} {e.points:>4g}/{e.max_points:<4g}  {e.cases_passed:>2}/{e.cases_total:<3}  "
              f"{'passed' if e.kind == 'ok' else e.kind}")
    print(f"{'total':26} {r.total:>4g}/{r.max_total:<4g}  status: {r.status}")
    for e in r.exercises:
        if e.kind != "ok":
            print(f"\n{e.id}: {e.message}")
    notes = [n for n in r.notes if n not in {e.message for e in r.exercises}]
    if notes:
        print("\nnotes:\n" + "\n".join(f"- {n}" for n in notes))
    if r.status == "error":
        return EXIT_GRADER_ERROR
    return 0 if r.total == r.max_total else 1


AUTOGRADER_EPILOG = ("Gradescope: DIR/autograder.zip (setup.sh, run_autograder). PrairieLearn: DIR/questions/"
                     "tinyinterp_<slug>/ (info.json, question.html, tests/run.sh) and DIR/grader-image/Dockerfile. "
                     "GitHub Classroom: DIR/.github/classroom/autograding.json and "
                     "DIR/.github/workflows/classroom.yml. "
                     "No solution or reference notebook is written. Exit status: 0 written; 2 misuse.")


def cmd_autograder(args) -> int:
    from .grading.platforms import ExportError, ExportOptions, RunSettings, export

    _assignment(args.chapter)  # unknown chapter: one line, exit 2
    settings = RunSettings(args.cell_timeout, args.submission_timeout, args.memory_gb)
    opts = ExportOptions(package_spec=args.package_spec or "", wheel=Path(args.wheel) if args.wheel else None,
                         torch_index_url=args.torch_index_url, settings=settings, image=args.image or "")
    out = Path(args.out)
    try:
        written = export(args.platform, args.chapter, out, opts)
    except ExportError as e:
        raise UsageError(str(e)) from None
    print(f"wrote the {args.platform} autograder for {args.chapter} into {out}/:")
    for p in written:
        print(f"  {p.relative_to(out)}")
    print(f"tinyinterp is installed there from: {opts.wheel.name + ' (shipped)' if opts.wheel else opts.spec()}")
    return 0


def _add_run_limits(p) -> None:
    p.add_argument("--cell-timeout", type=_positive(float), default=60.0, metavar="S",
                   help="wall-clock limit per notebook cell, seconds (default 60)")
    p.add_argument("--submission-timeout", type=_positive(float), default=300.0, metavar="S",
                   help="wall-clock limit per submission, seconds (default 300)")
    p.add_argument("--memory-gb", type=_positive(float), default=4.0, metavar="GB",
                   help="address-space limit of the learner's process (default 4)")


def _add_limits(p) -> None:
    _add_run_limits(p)
    p.add_argument("--root", default=None,
                   help="the book's root folder, whose solutions/ is hidden from learner code (default: search "
                        "upwards from here; none is needed: grading data ships with the package)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tinyinterp", description="Interpretability from Scratch: exercises, release and grading.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    sub.required = True

    e = sub.add_parser("exercises", help="list every registered exercise",
                       description="List every registered exercise: id, chapter, points, difficulty, importance, "
                                   "minutes, signature and known mistakes.")
    e.add_argument("--json", action="store_true", help="print JSON (for outside tools)")
    e.add_argument("--chapter", help="only this chapter's exercises, e.g. 02_attention")
    e.set_defaults(func=cmd_exercises)

    r = sub.add_parser("release", help="regenerate exercises/ from solutions/",
                       description="Regenerate exercises/ from solutions/ (stubs for solution regions, nbgrader "
                                   "metadata, no outputs). With --check, change nothing and exit 1 if stale.")
    r.add_argument("--check", action="store_true", help="exit 1 if exercises/ differs from what release would write")
    r.add_argument("--root", default=".", help="the book's root folder (default: search upwards from here)")
    r.add_argument("--nbgrader", metavar="COURSE_DIR",
                   help="instead, write an nbgrader course tree (COURSE_DIR/source/<slug>/<slug>.ipynb, solutions kept, "
                        "nbgrader metadata added) for `nbgrader generate_assignment`")
    r.set_defaults(func=cmd_release)

    c = sub.add_parser("check", help="self-grade a saved notebook from a terminal",
                       description="Re-run a saved exercise notebook in a fresh process and print the points table "
                                   "(public tests only: the same tests as the check cells). Works on a lone notebook "
                                   "in any folder with only the installed package. The chapter comes from the "
                                   "notebook's metadata (written by `tinyinterp release`), else from its file name "
                                   "('Copy of 02_attention (1).ipynb' is fine), else from --assignment.",
                       epilog=CHECK_EXIT_CODES)
    c.add_argument("notebook", help="the .ipynb file, e.g. one downloaded from Colab")
    c.add_argument("--assignment", help="the chapter slug, e.g. 02_attention (default: from the notebook's metadata "
                                        "or file name)")
    _add_limits(c)
    c.set_defaults(func=cmd_check)

    g = sub.add_parser("grade", help="grade a folder of submissions with hidden tests",
                       description="Grade every .ipynb in SUBMISSIONS_DIR in a sandbox, with public and hidden tests "
                                   "and partial credit. Writes a gradebook CSV (student, one column per exercise, "
                                   "total, max_total, status), per-student feedback, and optionally a Canvas CSV. "
                                   "The student id is taken from the file name with --id-pattern.",
                       epilog=GRADE_EXIT_CODES)
    g.add_argument("submissions", metavar="SUBMISSIONS_DIR")
    g.add_argument("--assignment", required=True, help="the chapter slug, e.g. 01_tokens_and_embeddings")
    g.add_argument("--out", default="gradebook.csv", help="gradebook CSV path (default gradebook.csv)")
    g.add_argument("--feedback", default="feedback", help="folder for per-student feedback (default feedback/)")
    g.add_argument("--feedback-format", choices=["md", "html"], default="md")
    g.add_argument("--canvas", metavar="CSV", help="also write a Canvas-importable gradebook here")
    g.add_argument("--workers", type=_positive(int), default=1, help="submissions graded at once (default 1)")
    g.add_argument("--resume", action="store_true",
                   help="keep results saved by an interrupted run (those with status `error` are graded again)")
    g.add_argument("--id-pattern", default=r"^(?P<student>[^_.]+)", type=_id_pattern,
                   help="regex with a (?P<student>...) group, searched in the file name (default: up to the first _)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="grade without the bubblewrap sandbox (needed when not root or without bubblewrap): learner "
                        "code then runs as you, with resource limits only; the summary and feedback say UNSAFE")
    _add_limits(g)
    g.set_defaults(func=cmd_grade)
    a = sub.add_parser("autograder", help="export a ready-to-upload autograder for one chapter",
                       description="Write an autograder for one chapter for Gradescope, PrairieLearn or GitHub "
                                   "Classroom. It grades with the same core as `tinyinterp grade` (hidden tests, "
                                   "mistake diagnoses, partial credit), in the bubblewrap sandbox where the "
                                   "platform allows it, else unsandboxed and saying UNSAFE in every result.",
                       epilog=AUTOGRADER_EPILOG)
    a.add_argument("platform", choices=["gradescope", "prairielearn", "github-classroom"])
    a.add_argument("chapter", help="the chapter slug, e.g. 01_tokens_and_embeddings")
    a.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (new or empty)")
    a.add_argument("--package-spec", metavar="SPEC",
                   help="what the platform pip-installs (default: tinyinterp[grade]==this version)")
    a.add_argument("--wheel", metavar="PATH", help="ship this tinyinterp wheel in the export and install it instead")
    a.add_argument("--torch-index-url", default="https://download.pytorch.org/whl/cpu", metavar="URL",
                   help="where torch is installed from first (default: the CPU build); '' for PyPI's default")
    a.add_argument("--image", metavar="NAME", help="PrairieLearn: the grader image's name (default: "
                                                   "tinyinterp-grader:<version>)")
    _add_run_limits(a)
    a.set_defaults(func=cmd_autograder)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"tinyinterp {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
