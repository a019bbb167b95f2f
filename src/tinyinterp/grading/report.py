"""Gradebook CSV (and a Canvas-importable variant), per-student feedback, and the run summary."""

from __future__ import annotations

import csv
import html
import io
import os
from pathlib import Path

from .grader import SubmissionResult


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def gradebook_csv(results: list[SubmissionResult], exercise_ids: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["student", *exercise_ids, "total", "max_total", "status"])
    for r in sorted(results, key=lambda r: r.student):
        pts = {e.id: e.points for e in r.exercises}
        w.writerow([r.student, *(f"{pts.get(i, 0):g}" for i in exercise_ids), f"{r.total:g}", f"{r.max_total:g}",
                    r.status])
    return buf.getvalue()


def canvas_csv(results: list[SubmissionResult], assignment_title: str) -> str:
    """Canvas's gradebook import format: Student, ID, SIS User ID, Section, then one column per
    assignment (here the total). Canvas matches rows on 'SIS User ID' (our student id)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section", assignment_title])
    w.writerow(["    Points Possible", "", "", "", "", f"{results[0].max_total:g}" if results else "0"])
    for r in sorted(results, key=lambda r: r.student):  # no grade for a grader failure: nothing to import
        w.writerow(["", "", r.student, "", "", "" if r.status == "error" else f"{r.total:g}"])
    return buf.getvalue()


def feedback_markdown(r: SubmissionResult, assignment: str) -> str:
    lines = [f"# Feedback: {assignment}", "", f"- **Student**: {r.student}", f"- **File**: {r.file}",
             f"- **Score**: {r.total:g} / {r.max_total:g}", f"- **Status**: {r.status}"
             + (" (the grader failed, not your work: your instructor will look at it)" if r.status == "error" else ""),
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
