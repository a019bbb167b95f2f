"""One `tinyinterp grade` batch of hostile and unlucky submissions, built as students would (from the real
chapter 1 solution): odd tensors returned, oversized output, a forged multi-GB tensor, a message flood,
forged fields, a mutated caller frame, odd notebooks, odd file names, ids that collide, formula ids,
a correct cell that also calls check. The batch and --resume complete, each submission gets its own
status (`output_limit`, `error`, `unreadable`) and the others are untouched."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinyinterp.grading.ids import normalise_id

ROOT = Path(__file__).resolve().parents[1]
SLUG = "01_tokens_and_embeddings"
SOLUTION = json.loads((ROOT / "solutions" / f"{SLUG}.ipynb").read_text())
EXERCISE = json.loads((ROOT / "exercises" / f"{SLUG}.ipynb").read_text())
FULL = {"embed": 1.0, "bigram_log_probs": 2.0, "cross_entropy_loss": 2.0}
EMBED_LOST = {**FULL, "embed": 0.0}
RIGHT = "    return W_E[tokens] + W_pos[: tokens.shape[1]]\n"

# how a student's code finds the result pipe: the child's open FileIO (else the fd on its command line)
FIND_FD = ("import gc, io, os, sys, json, struct\n"
           "def result_fd():\n"
           "    for o in gc.get_objects():\n"
           "        if isinstance(o, io.FileIO) and not o.closed and o.mode == 'wb' and o.fileno() > 2:\n"
           "            return o.fileno()\n"
           "    return int(sys.argv[2])\n")
FORGED_HUGE = FIND_FD + (
    "from tinyinterp.grading import protocol as P\n"
    "def embed(tokens, W_E, W_pos):\n"
    "    head = json.dumps({'event': 'case', 'id': 'embed', 'case': 0, 'timed_out': False, 'error_type': None,\n"
    "                       'traceback': '', 'seconds': 0.0, 'output': {'$tensor': 't0'},\n"
    "                       'inputs_after': {'tokens': 0, 'W_E': 0, 'W_pos': 0}}).encode()\n"
    "    st = json.dumps({'t0': {'dtype': 'F32', 'shape': [2**17, 2**17], 'data_offsets': [0, 2**36]}}).encode()\n"
    "    blob = struct.pack('<Q', len(st)) + st\n"
    "    os.write(result_fd(), P.FRAME.pack(P.MAGIC, len(head), len(blob) + 2**36) + head + blob)\n" + RIGHT)
FLOOD = FIND_FD + ("from tinyinterp.grading.protocol import encode\n"
                   "fd, m = result_fd(), encode({'event': 'exercise_end', 'id': 'embed'})\n"
                   "for _ in range(100_000):\n    os.write(fd, m)\n")
FORGED_FIELD = FIND_FD + ("from tinyinterp.grading.protocol import encode\n"
                          "os.write(result_fd(), encode({'event': 'case', 'id': 'embed', 'case': 0, 'output': 1,\n"
                          "    'timed_out': False, 'error_type': None, 'traceback': '', 'seconds': 'fast',\n"
                          "    'inputs_after': {'tokens': 0, 'W_E': 0, 'W_pos': 0}}))\n")
FRAME_MUTATION = ("import sys\ndef embed(tokens, W_E, W_pos):\n    f = sys._getframe(1)\n"
                  "    while f is not None and not (isinstance(f.f_locals.get('inputs'), dict)\n"
                  "                                 and 'W_pos' in f.f_locals['inputs']):\n"
                  "        f = f.f_back\n"
                  "    if f is not None:\n        f.f_locals['inputs'].pop('W_pos')\n" + RIGHT)
ALSO_CHECKS = ("def embed(tokens, W_E, W_pos):\n" + RIGHT + "tinyinterp.check('embed', embed)\n"
               "from tinyinterp import check as c, progress as p\nc('embed', embed)\np()\n"
               "from tinyinterp.harness import check as hc\nhc('embed', embed)\n"
               "from tinyinterp.harness.check import check as hcc\nassert hcc('embed', embed)\n")


def src(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def with_embed(source):
    nb = json.loads(json.dumps(SOLUTION))
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and "def embed(" in src(c))
    cell["source"] = source
    return nb


def add_cell(source, at=3):
    nb = json.loads(json.dumps(SOLUTION))
    nb["cells"].insert(at, {"cell_type": "code", "metadata": {}, "source": source, "outputs": [],
                            "execution_count": None, "id": "extra"})
    return nb


def returns(expr):
    return with_embed("import torch\ndef embed(tokens, W_E, W_pos):\n"
                      f"    right = W_E[tokens] + W_pos[: tokens.shape[1]]\n    return {expr}\n")


SUBMISSIONS = {  # file name -> notebook (dict) or raw bytes
    "correct_1.ipynb": SOLUTION,
    "alsochecks_1.ipynb": with_embed(ALSO_CHECKS),
    "meta_1.ipynb": returns("torch.empty(right.shape, device='meta')"),
    "nested_1.ipynb": returns("torch.nested.nested_tensor([r for r in right])"),
    "sparse_1.ipynb": returns("right.to_sparse()"),
    "bigout_1.ipynb": returns("torch.zeros(4096, 4096)"),
    "forgedhuge_1.ipynb": with_embed(FORGED_HUGE),
    "flood_1.ipynb": add_cell(FLOOD),
    "forgedfield_1.ipynb": add_cell(FORGED_FIELD),
    "frame_1.ipynb": with_embed(FRAME_MUTATION),
    "deep_1.ipynb": b"[" * 100_000 + b"]" * 100_000,
    "numbers_1.ipynb": {**SOLUTION, "cells": [{"cell_type": "code", "source": [1, 2], "metadata": {}}]},
    "L" * 249 + ".ipynb": SOLUTION,
    os.fsdecode(b"\xff\xfeweird_1.ipynb"): SOLUTION,
    "new\nline_1.ipynb": SOLUTION,
    "-rf_1.ipynb": SOLUTION,
    '=HYPERLINK("evil.example","click")_1.ipynb': SOLUTION,
    "dana smith_1.ipynb": EXERCISE,  # older (see below): the newer file of the same student is graded
    "dana,smith_2.ipynb": SOLUTION,
    "ALICE_1.ipynb": EXERCISE,
    "alice_2.ipynb": SOLUTION,
}
OLDER = ["dana smith_1.ipynb", "ALICE_1.ipynb"]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """The batch, graded once per test session: under xdist the first worker grades it and the others wait
    for its result (a file lock in the session's shared temporary folder)."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this session's folder, common to its workers
    tmp = shared / "hostile"
    with FileLock(str(shared / "hostile.lock")):
        if not (tmp / "runs.json").exists():
            tmp.mkdir(exist_ok=True)
            runs = grade_the_batch(tmp)
            (tmp / "runs.json").write_text(json.dumps(runs))
    runs = json.loads((tmp / "runs.json").read_text())
    out = tmp / "gradebook.csv"
    rows = {r["student"]: r for r in csv.DictReader(out.open())} if out.exists() else {}
    return {**runs, "rows": rows, "feedback": tmp / "feedback", "tmp": tmp}


def grade_the_batch(tmp: Path) -> dict:
    subs, out, fb = tmp / "subs", tmp / "gradebook.csv", tmp / "feedback"
    subs.mkdir()
    for name, nb in SUBMISSIONS.items():
        data = nb if isinstance(nb, bytes) else json.dumps(nb).encode()
        (subs / name).write_bytes(data)
    for name in OLDER:
        os.utime(subs / name, (1, 1))
    os.mkfifo(subs / "fifo_1.ipynb")  # reading it would block forever
    (tmp / "elsewhere.ipynb").write_text(json.dumps(SOLUTION))
    (subs / "link_1.ipynb").symlink_to(tmp / "elsewhere.ipynb")
    cmd = [sys.executable, "-m", "tinyinterp.cli", "grade", str(subs), "--assignment", SLUG, "--out", str(out),
           "--feedback", str(fb), "--workers", "2", "--quiet", "--canvas", str(tmp / "canvas.csv"),
           "--root", str(ROOT)]
    runs = {}
    for name, extra in (("first", []), ("resumed", ["--resume"])):
        p = subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=900)
        runs[name] = {"returncode": p.returncode, "stdout": p.stdout, "stderr": p.stderr}
        if name == "first":
            runs["first_rows"] = out.read_text() if out.exists() else ""
    return runs


def points(row):
    return {k: float(row[k]) for k in FULL}


def feedback(batch, sid):
    return (batch["feedback"] / f"{sid}.md").read_text()


EXPECTED_IDS = {"correct", "alsochecks", "meta", "nested", "sparse", "bigout", "forgedhuge", "flood", "forgedfield",
                "frame", "deep", "numbers", normalise_id("L" * 249), "weird", "new_line", "rf", "hyperlink__evil",
                "dana_smith", "alice"}


def test_the_batch_and_resume_complete_with_one_row_per_student(batch):
    for run in ("first", "resumed"):
        p = batch[run]
        assert p["returncode"] == 3, (run, p["returncode"], p["stderr"][-3000:])  # some submissions are `error`
        assert "Traceback" not in p["stderr"], p["stderr"][-3000:]
    assert set(batch["rows"]) == EXPECTED_IDS, sorted(batch["rows"])
    assert batch["first_rows"] == (batch["tmp"] / "gradebook.csv").read_text()


def test_a_correct_cell_that_also_calls_check_is_graded(batch):
    row = batch["rows"]["alsochecks"]
    assert points(row) == FULL and row["status"] == "graded", row


@pytest.mark.parametrize("sid, words", [("meta", "tensor on the meta device"), ("nested", "nested tensor"),
                                        ("sparse", "sparse_coo tensor")])
def test_odd_tensors_returned_are_the_wrong_type(batch, sid, words):
    row = batch["rows"][sid]
    assert points(row) == EMBED_LOST and row["status"] == "graded", row
    assert f"got a {words}" in feedback(batch, sid)


@pytest.mark.parametrize("sid, words", [("bigout", "[4096, 4096]"), ("forgedhuge", "[131072, 131072]")])
def test_oversized_output_is_output_limit_for_that_exercise_only(batch, sid, words):
    row = batch["rows"][sid]
    assert points(row) == EMBED_LOST and row["status"] == "output_limit", row
    text = feedback(batch, sid)
    assert "Output over the grader's limit" in text and words in text and "not read" in text


def test_a_message_flood_is_refused_at_its_first_forged_message_not_a_timeout(batch):
    row = batch["rows"]["flood"]
    assert row["status"] == "error", row  # read no further than the first message out of place
    text = feedback(batch, "flood")
    assert "exercise_end of 'embed' out of order" in text and "Only the grader may write to its result pipe" in text


@pytest.mark.parametrize("sid, words", [("forgedfield", "seconds is not a duration"),
                                        ("frame", "inputs_after of case 0 of 'embed' does not name its inputs")])
def test_forged_fields_and_mutated_frames_are_this_submissions_error(batch, sid, words):
    row = batch["rows"][sid]
    assert row["status"] == "error", row
    text = feedback(batch, sid)
    assert "Only the grader may write to its result pipe" in text and words in text  # not "not your work"
    assert "Grader error, not your work" not in text


@pytest.mark.parametrize("sid, words", [("deep", "nested too deeply"), ("numbers", "not text")])
def test_odd_notebooks_are_unreadable(batch, sid, words):
    row = batch["rows"][sid]
    assert row["status"] == "unreadable" and float(row["total"]) == 0
    assert words in feedback(batch, sid)


@pytest.mark.parametrize("sid", [normalise_id("L" * 249), "weird", "new_line", "rf", "hyperlink__evil"])
def test_odd_file_names_are_graded_under_a_safe_id(batch, sid):
    row = batch["rows"][sid]
    assert points(row) == FULL and row["status"] == "graded", row
    assert "**File**" in feedback(batch, sid)


def test_ids_differing_in_case_or_punctuation_are_duplicates_never_overwritten(batch):
    out = batch["first"]["stdout"]
    assert "duplicate submission for dana_smith" in out and "duplicate submission for alice" in out
    for sid in ("dana_smith", "alice"):
        assert points(batch["rows"][sid]) == FULL  # the newer file, the solution
        assert "Score**: 5 / 5" in feedback(batch, sid)
    names = sorted(p.name for p in batch["feedback"].iterdir())
    assert names == sorted(f"{sid}.md" for sid in EXPECTED_IDS)


def test_fifos_and_symlinks_in_the_submissions_folder_are_ignored(batch):
    out = batch["first"]["stdout"]
    assert "fifo_1.ipynb" in out and "link_1.ipynb" in out and "not regular files" in out


def test_no_csv_cell_is_a_formula(batch):
    for name in ("gradebook.csv", "canvas.csv"):
        for row in csv.reader((batch["tmp"] / name).open()):
            for cell in row:
                assert not cell.lstrip(" \"'")[:1] in ("=", "+", "-", "@") or cell.startswith("'"), (name, cell)
                assert "\n" not in cell and "\r" not in cell


def test_an_exception_in_the_judge_is_this_submissions_error(tmp_path, monkeypatch):
    """Whatever an output makes the judge do, it is contained: status `error`, blaming no one."""
    from tinyinterp.grading import grader, load_assignment

    def judge_that_raises(ex, case, outcome, expected, others=()):
        if ex.id == "embed":
            raise IndexError("the judge tripped on an output")
        return real_judge(ex, case, outcome, expected, others)

    real_judge = grader.judge
    monkeypatch.setattr(grader, "judge", judge_that_raises)
    nb = tmp_path / "s.ipynb"
    nb.write_text(json.dumps(SOLUTION))
    r = grader.grade_notebook(nb, "s", load_assignment(SLUG), grader.GradeOptions(hidden=False), None)
    assert r.status == "error", r
    embed, *others = r.exercises
    assert embed.kind == "error" and "IndexError" in embed.message and "not your work" in embed.message
    assert all(e.kind == "ok" for e in others)


def test_cells_that_call_check_still_run_and_only_book_demo_cells_are_skipped():
    from tinyinterp.grading import load_assignment
    from tinyinterp.grading.assignment import cells_to_run, source_hash

    assignment = load_assignment(SLUG)
    nb = with_embed(ALSO_CHECKS)
    run = dict(cells_to_run(assignment, nb))
    sources = {i: src(c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"}
    assert any(s.startswith("def embed(") and "tinyinterp.check('embed', embed)" in s for s in run.values())
    assert any("tinyinterp.check(\"bigram_log_probs\"" in s for s in run.values())  # the book's check cells run too
    skipped = set(sources) - set(run)
    assert skipped and all(source_hash(sources[i]) in assignment.skip_hashes for i in skipped)


def test_every_route_to_the_checker_is_harmless_while_grading(monkeypatch):
    import importlib
    import sys as _sys

    import tinyinterp
    import tinyinterp.harness
    from tinyinterp.grading.neutral import CheckSkipped, neutralise_checker

    for module in (tinyinterp, tinyinterp.harness, _sys.modules["tinyinterp.harness.check"]):
        for name in ("check", "progress"):
            monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    namespace = {}
    neutralise_checker(namespace)
    exec("import tinyinterp\nfrom tinyinterp import check as c, progress as p\n"
         "from tinyinterp.harness import check as hc\n"
         "from tinyinterp.harness.check import check as hcc, progress as hp\n"
         "results = [tinyinterp.check('embed', None), c('embed', None), p(), hc('embed', None),\n"
         "           hcc('embed', None), hp(), check('embed', None), progress()]", namespace)
    assert all(type(r) is CheckSkipped and r for r in namespace["results"])
    assert type(importlib.import_module("tinyinterp").check("embed", None)) is CheckSkipped
