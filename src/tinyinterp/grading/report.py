"""Gradebook CSV (and a Canvas-importable variant), per-student feedback, and the run summary."""

from __future__ import annotations

import csv
import html
import io
import os
import re
import unicodedata
from pathlib import Path

from .grader import SubmissionResult


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8", errors="replace")
    os.replace(tmp, path)


_FORMULA_START = "=+-@"
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_LEADING = " \t\r\n\"'\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000\ufeff"


def csv_cell(value: object) -> str:
    """A CSV cell that no spreadsheet reads as a formula (OWASP "CSV injection"): a cell that starts with
    ``= + - @``, a tab or a carriage return, also after leading spaces or quotes (and in their full-width
    forms), gets a leading ``'``. Plain non-negative numbers are left alone, so scores stay numbers."""
    text = str(value)
    if _NUMBER.fullmatch(text):
        return text
    first = text.lstrip(_LEADING)[:1]
    if text[:1] in ("\t", "\r") or (first and unicodedata.normalize("NFKC", first)[:1] in _FORMULA_START):
        return "'" + text
    return text


class _SafeWriter:
    """``csv.writer`` whose every cell goes through :func:`csv_cell`."""

    def __init__(self, buf: io.StringIO) -> None:
        self._w = csv.writer(buf, lineterminator="\n")

    def writerow(self, row: list) -> None:
        self._w.writerow([csv_cell(c) for c in row])


def gradebook_csv(results: list[SubmissionResult], exercise_ids: list[str]) -> str:
    buf = io.StringIO()
    w = _SafeWriter(buf)
    w.writerow(["student", *exercise_ids, "total", "max_total", "status", "isolation"])
    for r in sorted(results, key=lambda r: r.student):
        pts = {e.id: e.points for e in r.exercises}
        unsafe = any(n.startswith("UNSAFE") for n in r.notes)  # graded with --unsafe-no-sandbox
        w.writerow([r.student, *(f"{pts.get(i, 0):g}" for i in exercise_ids), f"{r.total:g}", f"{r.max_total:g}",
                    r.status, "UNSAFE: no sandbox" if unsafe else "sandbox"])
    return buf.getvalue()


def canvas_csv(results: list[SubmissionResult], assignment_title: str) -> str:
    """Canvas's gradebook import format: Student, ID, SIS User ID, Section, then one column per
    assignment (here the total). Canvas matches rows on 'SIS User ID' (our student id)."""
    buf = io.StringIO()
    w = _SafeWriter(buf)
    w.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section", assignment_title])
    w.writerow(["    Points Possible", "", "", "", "", f"{results[0].max_total:g}" if results else "0"])
    for r in sorted(results, key=lambda r: r.student):  # no grade for a grader failure: nothing to import
        w.writerow(["", "", r.student, "", "", "" if r.status == "error" else f"{r.total:g}"])
    return buf.getvalue()


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")  # markup inside a line (the name never starts one)


def markdown_text(text: str) -> str:
    """``text`` (a file name the student chose) as literal text in Markdown: no HTML, no markup."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=True))


def feedback_markdown(r: SubmissionResult, assignment: str) -> str:
    lines = [f"# Feedback: {assignment}", "", f"- **Student**: {markdown_text(r.student)}",
             f"- **File**: {markdown_text(r.file)}",
             f"- **Score**: {r.total:g} / {r.max_total:g}", f"- **Status**: {r.status}"
             + (" (could not be graded: your instructor will look at it)" if r.status == "error" else ""),
             f"- **Grading time**: {r.seconds:g} s", "", "| exercise | points | tests passed | result |",
             "| --- | --- | --- | --- |"]
    for e in r.exercises:
        mark = "passed" if e.kind == "ok" else "grader error" if e.kind == "error" else e.kind.replace("_", " ")
        lines.append(f"| `{e.id}` | {e.points:g} / {e.max_points:g} | {e.cases_passed} / {e.cases_total} | {mark} |")
    lines.append("")
    for e in r.exercises:
        if e.kind != "ok":
            lines += [f"## {e.id}", "", "```text", e.message.replace("```", "'''"), "```", ""]
    if r.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in r.notes], ""]
    lines += ["Tests include hidden cases (other seeds and shapes) beyond those in the notebook; partial credit is "
              "the fraction of tests passed.", ""]
    return "\n".join(lines)


def feedback_html(r: SubmissionResult, assignment: str) -> str:
    return ("<!doctype html><meta charset='utf-8'><title>Feedback</title><pre style='white-space:pre-wrap'>"
            + html.escape(feedback_markdown(r, assignment)) + "</pre>")


def summary(results: list[SubmissionResult], problems: list[str], seconds: float) -> str:
    by_status: dict[str, int] = {}
    for r in results:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    mean = sum(r.total for r in results) / len(results) if results else 0.0
    parts = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
    text = f"graded {len(results)} submissions in {seconds:.1f} s ({parts}); mean score {mean:.2f}"
    if problems:
        text += "\n" + "\n".join(f"  note: {p}" for p in problems)
    return text
