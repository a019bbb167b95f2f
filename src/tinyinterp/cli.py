"""The ``tinyinterp`` command line. Misuse prints one line and exits with status 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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
        plan = release(root, check_only=args.check)
    except (ReleaseError, FileNotFoundError) as e:
        print(f"tinyinterp release: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, FileNotFoundError) else 1
    changed = [*plan.stale, *plan.orphans]
    if args.check:
        if changed:
            names = ", ".join(str(p.relative_to(root)) for p in changed)
            print(f"exercises/ is stale: {names}. Run `tinyinterp release`.", file=sys.stderr)
            return 1
        print(f"exercises/ is up to date ({len(plan.outputs)} notebooks).")
        return 0
    print(f"wrote {len(plan.stale)} of {len(plan.outputs)} exercise notebooks"
          + (f", removed {len(plan.orphans)} orphans" if plan.orphans else "") + ".")
    return 0


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
    r.set_defaults(func=cmd_release)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
