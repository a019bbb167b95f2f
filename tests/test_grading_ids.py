"""Student ids, file names, CSV cells and odd notebooks, as a hostile (or unlucky) class produces them:
ids are normalised to one safe, case-insensitive form, and two files with one id are duplicates; no
CSV cell can be read as a formula; feedback never leaves its folder; and a file that is not a usable
notebook is `unreadable` with a one-line reason, never an exception. Fast: no notebook runs here."""

import csv
import html
import io
import json
import os
import re
import string
import unicodedata
from pathlib import Path

import pytest

from tinyinterp.grading import grader, load_assignment
from tinyinterp.grading.batch import feedback_path, student_id
from tinyinterp.grading.grader import ExerciseResult, SubmissionResult
from tinyinterp.grading.ids import MAX_ID, display_name, normalise_id
from tinyinterp.grading.report import canvas_csv, csv_cell, gradebook_csv

SLUG = "01_tokens_and_embeddings"
SAFE = set(string.ascii_lowercase + string.digits + "._-")
HOSTILE_IDS = ["Alice", "ALICE", "ａｌｉｃｅ", "alice ", " alice", "o'brien", "o brien", "O’Brien", "josé", "jose\u0301",
               "王伟", "李娜", "Straße", "=HYPERLINK(\"evil.example\",\"click\")", "+1-555", "-rf", "@SUM(A1)",
               "../../etc/passwd", "/abs/path", "C:\\Windows", "a\x00b", "a\nb", "\t=1", "x" * 300, "é" * 200,
               "..", ".", "", "con", "NUL.txt", "lpt1", os.fsdecode(b"\xff\xfe-bytes"), "\u202eevil", "a/b", "a\\b"]


@pytest.mark.parametrize("raw", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
def test_normalised_ids_are_safe_file_names_and_csv_cells(raw):
    sid = normalise_id(raw)
    assert sid and set(sid) <= SAFE and len(sid) <= MAX_ID + 1
    assert sid[0] not in "._-=+@" and sid == normalise_id(sid) == normalise_id(sid.upper())
    assert csv_cell(sid) == sid
    assert sid.split(".")[0] not in {"con", "nul", "lpt1", "prn", "aux"}


@pytest.mark.parametrize("a, b", [("Alice", "alice"), ("ALICE", "ａｌｉｃｅ"), ("o'brien", "o brien"),
                                  ("josé", "jose\u0301"), ("Straße", "STRASSE"), ("dana smith", "Dana_Smith"), ("Dana Smith", "dana,smith")])
def test_ids_differing_in_case_punctuation_or_spaces_are_one_student(a, b):
    assert normalise_id(a) == normalise_id(b)


def test_different_ids_stay_different():
    ids = ["alice", "alice2", "bob", "王伟", "李娜", "x" * 300, "x" * 299 + "y", "jean-luc", "jean.luc", "..", "."]
    assert len({normalise_id(i) for i in ids}) == len(ids)


def test_student_id_from_hostile_file_names():
    assert student_id(Path("=HYPERLINK(x)_123_01.ipynb"), r"^(?P<student>[^_.]+)") == "hyperlink_x"
    assert student_id(Path("-rf_1.ipynb"), r"^(?P<student>[^_.]+)") == "rf"
    assert student_id(Path(os.fsdecode(b"\xff\xfe_1.ipynb")), r"^(?P<student>[^_.]+)").startswith("id_")


@pytest.mark.parametrize("raw", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
def test_feedback_stays_in_its_folder(tmp_path, raw):
    path = feedback_path(tmp_path, normalise_id(raw), "md")
    assert path.parent == tmp_path and len(path.name.encode()) < 100
    path.write_text("ok")  # a real file name on this file system
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_feedback_path_refuses_an_id_that_is_not_normalised(tmp_path):
    for raw in ["../x", "/etc/passwd", "Alice", "a\x00b"]:
        with pytest.raises(ValueError):
            feedback_path(tmp_path, raw, "md")


# ----- CSV injection (OWASP) ------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1+1", "@SUM(A1)", "\t=1", "\r=1", " =1", "  @x", '"=1', "'=1",
                                  "\"'=cmd|' /C calc'!A0", "＝1", "﹦1", "\u3000=1", "=HYPERLINK(\"http://evil\",\"x\")"])
def test_formula_cells_are_escaped(cell):
    out = csv_cell(cell)
    assert out.startswith("'") and out[1:] == cell


@pytest.mark.parametrize("cell", ["alice", "5", "0.5", "1e+06", "graded", "output_limit", "    Points Possible", ""])
def test_plain_cells_and_scores_are_unchanged(cell):
    assert csv_cell(cell) == cell


def _result(student, status="graded"):
    return SubmissionResult(student, "f.ipynb", status, 1.0, 5.0, [ExerciseResult("embed", 1.0, 1.0, 1, 1, "", "ok")],
                            0.1, [])


def _first_chars(text):
    for row in csv.reader(io.StringIO(text)):
        for cell in row:
            stripped = cell.lstrip(" \t\r\n\"'\u3000")
            if cell[:1] in ("\t", "\r") or (stripped and unicodedata.normalize("NFKC", stripped[0]) in "=+-@"):
                assert cell.startswith("'"), cell


def test_gradebook_and_canvas_csv_escape_every_cell():
    results = [_result(s) for s in ["=HYPERLINK(\"http://evil\",\"x\")", "+cmd", "-2+3", "@A1", "\tx", "alice"]]
    results.append(_result("bob", status="=1+1"))
    gb = gradebook_csv(results, ["embed", "=evil"])
    cv = canvas_csv(results, "=assignment")
    _first_chars(gb)
    _first_chars(cv)
    assert "'=HYPERLINK" in gb and "'=HYPERLINK" in cv and "'=1+1" in gb and "'=evil" in gb and "'=assignment" in cv
    rows = {r["student"]: r for r in csv.DictReader(io.StringIO(gb))}
    assert rows["alice"]["total"] == "1" and rows["alice"]["embed"] == "1"


def test_display_names_are_one_printable_utf8_line():
    for raw in [os.fsdecode(b"\xff\xfe.ipynb"), "a\nb\r\x00.ipynb", "x" * 1000]:
        shown = display_name(raw)
        shown.encode("utf-8")
        assert "\n" not in shown and "\r" not in shown and "\x00" not in shown and len(shown) <= 120


# ----- notebooks that are not usable: `unreadable`, one line, never an exception ----------------------
SOLUTION = json.loads((Path(__file__).resolve().parents[1] / "solutions" / f"{SLUG}.ipynb").read_text())


def _nb(**changes):
    nb = json.loads(json.dumps(SOLUTION))
    nb.update(changes)
    return nb


ODD_NOTEBOOKS = {
    "deep nesting": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "deep nesting in a cell": (json.dumps(_nb(cells=[{"cell_type": "code", "source": "x"}]))
                               .replace('"x"', "[" * 50_000 + "]" * 50_000), "nested too deeply"),
    "sources are numbers": (json.dumps(_nb(cells=[{"cell_type": "code", "source": [1, 2]}])), "not text"),
    "source is a dict": (json.dumps(_nb(cells=[{"cell_type": "code", "source": {"a": "b"}}])), "not text"),
    "nbformat 3": (json.dumps({"nbformat": 3, "worksheets": [{"cells": [{"cell_type": "code", "input": "x = 1"}]}]}),
                   "nbformat 3"),
    "cells not dicts": (json.dumps(_nb(cells=["def embed(): pass", 3])), "not a JSON object"),
    "cells not a list": (json.dumps(_nb(cells={"0": {}})), "no list of cells"),
    "a list": ("[]", "not an object"),
    "not utf8": (b"\xff\xfe{}", "not UTF-8"),
    "not json": ('{"cells": [ nope', "not JSON"),
}


@pytest.mark.parametrize("name", sorted(ODD_NOTEBOOKS))
def test_odd_notebooks_are_unreadable_with_a_reason(tmp_path, name):
    content, words = ODD_NOTEBOOKS[name]
    nb = tmp_path / "s.ipynb"
    nb.write_bytes(content if isinstance(content, bytes) else content.encode())
    r = grader.grade_notebook(nb, "s", load_assignment(SLUG), grader.GradeOptions(hidden=False), None)
    assert r.status == "unreadable" and r.total == 0, (r.status, r.notes)
    assert words in r.notes[0] and "\n" not in r.notes[0], r.notes


def test_a_huge_notebook_is_refused_before_it_is_read(tmp_path):
    nb = tmp_path / "s.ipynb"
    with open(nb, "wb") as f:
        f.truncate(3 * 2**30)  # 3 GiB (sparse: no disk used)
    r = grader.grade_notebook(nb, "s", load_assignment(SLUG), grader.GradeOptions(hidden=False), None)
    assert r.status == "unreadable" and "over the limit" in r.notes[0], r.notes


def test_a_fifo_or_symlink_is_not_read(tmp_path):
    fifo, link = tmp_path / "f.ipynb", tmp_path / "l.ipynb"
    os.mkfifo(fifo)  # opening it for reading would block forever
    link.symlink_to("/etc/passwd")
    for p in (fifo, link):
        r = grader.grade_notebook(p, "s", load_assignment(SLUG), grader.GradeOptions(hidden=False), None)
        assert r.status == "unreadable", (p, r.notes)


def test_an_unexpected_exception_is_this_submissions_error(tmp_path, monkeypatch):
    nb = tmp_path / "s.ipynb"
    nb.write_text(json.dumps(SOLUTION))

    def boom(*a, **k):
        raise RuntimeError("a bug in the grader")

    monkeypatch.setattr(grader, "cells_to_run", boom)
    r = grader.grade_notebook(nb, "s", load_assignment(SLUG), grader.GradeOptions(hidden=False), None)
    assert r.status == "error" and "RuntimeError" in r.notes[0] and "not your work" in r.notes[0]


@pytest.mark.parametrize("name", ["<img src=x onerror=alert(1)>_1.ipynb", "[click](javascript:alert(1))_1.ipynb",
                                  "**bold** `code` |pipe|_1.ipynb", "&lt;_1.ipynb"])
def test_a_file_name_is_plain_text_in_the_markdown_feedback(name):
    from tinyinterp.grading.grader import SubmissionResult
    from tinyinterp.grading.report import feedback_markdown

    md = feedback_markdown(SubmissionResult("s", display_name(name), "graded", 0, 0, [], 0.1, []), "demo")
    line = next(line for line in md.splitlines() if line.startswith("- **File**: "))
    value = line[len("- **File**: "):]
    assert "<" not in value and ">" not in value  # no HTML survives
    assert not re.search(r"(?<!\\)[`*_\[\]|]", value), value  # every markup character escaped
    unescaped = html.unescape(re.sub(r"\\(.)", r"\1", value))
    assert unescaped == display_name(name)  # and the reader still sees the name as it was
