"""Tamper and fault suite for `tinyinterp grade`: submissions built from the real solution and
exercise notebooks; no learner code can raise its own grade, and the batch always completes."""

import csv
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tinyinterp.grading.grader import STAGES, SubmissionResult
from tinyinterp.grading.sandbox import can_isolate

ROOT = Path(__file__).resolve().parents[1]
UNSAFE = [] if can_isolate() else ["--unsafe-no-sandbox"]  # without root or bubblewrap, grading refuses unless told
SLUG = "01_tokens_and_embeddings"
SOLUTION = json.loads((ROOT / "solutions" / f"{SLUG}.ipynb").read_text())
EXERCISE = json.loads((ROOT / "exercises" / f"{SLUG}.ipynb").read_text())
FULL = {"embed": 1, "bigram_log_probs": 2, "cross_entropy_loss": 2}


def src(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def with_cell(nb, function, new_source):
    """A copy of ``nb`` whose cell defining ``function`` is replaced by ``new_source``."""
    nb = json.loads(json.dumps(nb))
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and f"def {function}(" in src(c))
    cell["source"] = new_source
    return nb


def add_cell(nb, source, at=3):
    nb = json.loads(json.dumps(nb))
    nb["cells"].insert(at, {"cell_type": "code", "metadata": {}, "source": source, "outputs": [],
                            "execution_count": None, "id": f"extra{at}"})
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grading")
    subs, out, fb = tmp / "subs", tmp / "out" / "gradebook.csv", tmp / "feedback"
    subs.mkdir()
    hits = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                hits.append(1)
                conn.close()
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    stub = "def embed(tokens, W_E, W_pos):\n    raise NotImplementedError()\n"
    cases = {
        "correct": SOLUTION,
        "blank": EXERCISE,
        "patchcheck": add_cell(with_cell(SOLUTION, "embed", "def embed(tokens, W_E, W_pos):\n    return W_E[tokens]\n"),
                               "import tinyinterp, tinyinterp.harness.judge as j, torch\n"
                               "tinyinterp.check = lambda *a, **k: True\nj._close = lambda *a, **k: True\n"
                               "j.judge = lambda *a, **k: None\ntorch.allclose = lambda *a, **k: True\n"),
        "alwayseq": with_cell(SOLUTION, "embed",
                              "import torch\nclass Yes(torch.Tensor):\n    def __eq__(self, o): return True\n"
                              "    def allclose(self, *a, **k): return True\n"
                              "def embed(tokens, W_E, W_pos):\n    return (W_E[tokens]).as_subclass(Yes)\n"),
        "fakeobj": with_cell(SOLUTION, "embed",
                             "class Fake:\n    shape = None\n    def __eq__(self, o): return True\n"
                             "def embed(tokens, W_E, W_pos):\n    return Fake()\n"),
        "editedoutputs": _claim_success(EXERCISE),
        "writer": with_cell(SOLUTION, "embed",
                            f"import pathlib\nfor p in [{str(out)!r}, {str(fb / 'writer.md')!r}, {str(fb / 'correct.md')!r}]:\n"
                            f"    try:\n        pathlib.Path(p).write_text('writer,1,2,2,5,5,graded')\n"
                            f"    except OSError:\n        pass\n"
                            f"import glob\nfor p in glob.glob({str(out) + '.state/*'!r}):\n"
                            f"    try:\n        open(p, 'w').write('{{}}')\n    except OSError:\n        pass\n" + stub),
        "sysexit": with_cell(SOLUTION, "embed", "import sys\nsys.exit(0)\n" + stub),
        "osexit": with_cell(SOLUTION, "embed", "import os\nos._exit(0)\n" + stub),
        "osexitinside": with_cell(SOLUTION, "embed", "import os\ndef embed(tokens, W_E, W_pos):\n    os._exit(3)\n"),
        "loop": with_cell(SOLUTION, "embed", "while True:\n    pass\n" + stub),
        "loopinside": with_cell(SOLUTION, "embed", "def embed(tokens, W_E, W_pos):\n    while True:\n        pass\n"),
        "sleepinside": with_cell(SOLUTION, "embed", "import time\ndef embed(tokens, W_E, W_pos):\n"
                                 "    import signal\n    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                                 "    while True:\n        time.sleep(1)\n"),
        "membomb": with_cell(SOLUTION, "embed", "hog = bytearray(2**36)  # 64 GiB\n" + stub),
        "forkbomb": with_cell(SOLUTION, "embed", "import os\nkids = 0\nfor _ in range(10_000):\n    try:\n"
                              "        if os.fork() == 0:\n            import time; time.sleep(30)\n"
                              "        kids += 1\n    except OSError:\n        break\n" + stub),
        "network": with_cell(SOLUTION, "embed", f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                             f"except OSError:\n    pass\n" + stub),
    }
    for name, nb in cases.items():
        (subs / f"{name}_01.ipynb").write_text(json.dumps(nb))
    (subs / "notjson_01.ipynb").write_text('{"cells": [ not json')
    p = subprocess.run([sys.executable, "-m", "tinyinterp.cli", "grade", str(subs), "--assignment", SLUG,
                        "--out", str(out), "--feedback", str(fb), "--workers", "2", "--quiet",
                        "--cell-timeout", "20", "--memory-gb", "3", "--canvas", str(tmp / "canvas.csv"),
                        "--root", str(ROOT), *UNSAFE], capture_output=True, text=True, timeout=900)
    stop.set()
    rows = {r["student"]: r for r in csv.DictReader(out.open())}
    results = {r.student: r for r in (SubmissionResult.from_json(f.read_text())
                                      for f in Path(str(out) + ".state").glob("*.json"))}
    return {"proc": p, "rows": rows, "feedback": fb, "hits": hits, "tmp": tmp, "out": out, "results": results}


def _claim_success(nb):
    nb = json.loads(json.dumps(nb))
    for c in nb["cells"]:
        if c["cell_type"] == "code" and "tinyinterp.check(" in src(c):
            c["outputs"] = [{"output_type": "execute_result", "execution_count": 1, "metadata": {},
                             "data": {"text/plain": "[PASSED] 1/1 points"}}]
            c["execution_count"] = 1
    nb.setdefault("metadata", {})["nbgrader"] = {"points": 100}
    return nb


def points(row):
    return {k: float(row[k]) for k in FULL}


def test_batch_completes_and_lists_everyone(graded):
    assert graded["proc"].returncode == 0, graded["proc"].stderr[-3000:]
    assert set(graded["rows"]) == {"correct", "blank", "patchcheck", "alwayseq", "fakeobj", "editedoutputs", "writer",
                                   "sysexit", "osexit", "osexitinside", "loop", "loopinside", "sleepinside", "membomb",
                                   "forkbomb", "network", "notjson"}


def test_correct_gets_full_marks_and_blank_gets_zero(graded):
    rows = graded["rows"]
    assert points(rows["correct"]) == FULL and rows["correct"]["status"] == "graded"
    assert float(rows["correct"]["total"]) == float(rows["correct"]["max_total"]) == 5
    assert sum(points(rows["blank"]).values()) == 0 and rows["blank"]["status"] == "graded"
    assert sum(points(rows["editedoutputs"]).values()) == 0


@pytest.mark.parametrize("name", ["patchcheck", "alwayseq", "fakeobj", "writer", "sysexit", "osexit",
                                  "osexitinside", "loop", "loopinside", "sleepinside", "membomb", "forkbomb",
                                  "network"])
def test_tampering_and_faults_earn_nothing_for_that_exercise(graded, name):
    row = points(graded["rows"][name])
    assert row["embed"] == 0, (name, row)
    assert row["bigram_log_probs"] == 2 and row["cross_entropy_loss"] == 2, (name, row)


def test_statuses(graded):
    rows = graded["rows"]
    assert rows["notjson"]["status"] == "unreadable"
    assert rows["loop"]["status"] == rows["sleepinside"]["status"] == "timeout"  # killed at a time limit
    assert rows["loopinside"]["status"] == "graded"  # the per-case limit stopped it: the child carried on
    assert rows["membomb"]["status"] == "memory"
    assert rows["osexit"]["status"] == "crashed" and rows["osexitinside"]["status"] == "crashed"


def test_where_the_time_goes_is_measured(graded):
    """Every submission's time per stage: the correct one spends some in each; the cell that loops costs
    its cell timeout (20 s) and no more than a restart on top."""
    correct, loop = graded["results"]["correct"], graded["results"]["loop"]
    assert set(correct.timing) == set(STAGES)
    assert all(correct.timing[s] > 0 for s in ("start_up", "cells", "tests")), correct.timing
    assert sum(correct.timing.values()) <= correct.seconds + 0.5
    assert 19 <= loop.timing["cells"] < 20 + 15, loop.timing


def test_an_infinite_loop_in_a_function_costs_one_case_limit_not_one_per_case(graded):
    """`embed` has 9 public+hidden cases of 5 s each: once one times out the rest are not tried (they would
    cost 45 s), and every case still counts as failed."""
    r = graded["results"]["loopinside"]
    embed = next(e for e in r.exercises if e.id == "embed")
    assert embed.cases_total == 9 and embed.cases_passed == 0 and "Time limit" in embed.message
    assert 5 <= r.timing["tests"] < 5 + 20, r.timing  # 45 s if every case ran to its limit


def test_batch_summary_and_score_histogram(graded):
    out = graded["proc"].stdout
    assert "status:" in out and "mean points" in out and "mean seconds per submission" in out, out[-2000:]
    assert "You left out the positional embedding" in out  # patchcheck's embed: the most frequent mistake
    figure = graded["out"].with_name("gradebook.scores.png")
    assert f"score histogram: {figure}" in out and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_writer_could_not_touch_gradebook_or_feedback(graded):
    text = graded["out"].read_text()
    assert "writer,1,2,2,5,5,graded" not in text
    fb = graded["feedback"]
    assert "writer,1,2,2" not in (fb / "writer.md").read_text()
    assert "writer,1,2,2" not in (fb / "correct.md").read_text()


@pytest.mark.skipif(not can_isolate(), reason="network namespaces need root (CI runs as root)")
def test_no_network_from_learner_code(graded):
    assert graded["hits"] == []


def test_feedback_names_mistakes_and_hides_test_code(graded):
    fb = graded["feedback"]
    text = (fb / "fakeobj.md").read_text()
    assert "Expected a torch.Tensor, got a Fake" in text
    assert "hidden" in (fb / "blank.md").read_text().lower()
    for f in fb.glob("*.md"):
        body = f.read_text()
        assert "def _embed_cases" not in body and "randn(gen" not in body


def test_canvas_csv(graded):
    rows = list(csv.reader((graded["tmp"] / "canvas.csv").open()))
    assert rows[0][:3] == ["Student", "ID", "SIS User ID"] and "Points Possible" in rows[1][0]
    assert ["", "", "correct", "", "", "5"] in rows


def test_resume_after_interruption(tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    for i in range(3):
        (subs / f"s{i}_01.ipynb").write_text(json.dumps(SOLUTION))
    out, fb = tmp_path / "gb.csv", tmp_path / "fb"
    cmd = [sys.executable, "-m", "tinyinterp.cli", "grade", str(subs), "--assignment", SLUG, "--out", str(out),
           "--feedback", str(fb), "--quiet", "--root", str(ROOT), *UNSAFE]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = Path(str(out) + ".state")
    import time
    deadline = time.time() + 120
    while time.time() < deadline and len(list(state.glob("*.json"))) < 1:
        time.sleep(0.2)
    p.kill()
    p.wait()
    saved = {f.name: f.stat().st_mtime_ns for f in state.glob("*.json")}
    assert 1 <= len(saved) < 3
    p = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    after = {f.name: f.stat().st_mtime_ns for f in state.glob("*.json")}
    assert len(after) == 3 and all(after[k] == v for k, v in saved.items())  # not regraded
    rows = list(csv.DictReader(out.open()))
    assert [r["total"] for r in rows] == ["5", "5", "5"]


def test_duplicates_are_reported_not_fatal(tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "dana_1_01.ipynb").write_text(json.dumps(EXERCISE))
    os.utime(subs / "dana_1_01.ipynb", (1, 1))
    (subs / "dana_2_01.ipynb").write_text(json.dumps(SOLUTION))
    (subs / "notes.txt").write_text("hi")
    out = tmp_path / "gb.csv"
    p = subprocess.run([sys.executable, "-m", "tinyinterp.cli", "grade", str(subs), "--assignment", SLUG, "--out",
                        str(out), "--feedback", str(tmp_path / "fb"), "--quiet", "--root", str(ROOT), *UNSAFE],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0
    assert "duplicate submission for dana" in p.stdout and "not .ipynb" in p.stdout
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1 and rows[0]["total"] == "5"


def test_self_check_cli(tmp_path):
    nb = tmp_path / f"{SLUG}.ipynb"
    nb.write_text(json.dumps(with_cell(SOLUTION, "embed", "def embed(tokens, W_E, W_pos):\n    return W_E[tokens]\n")))
    p = subprocess.run([sys.executable, "-m", "tinyinterp.cli", "check", str(nb), "--root", str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    assert "total" in p.stdout and "4/5" in p.stdout.replace(" ", "")
    assert "You left out the positional embedding" in p.stdout
    nb.write_text(json.dumps(SOLUTION))
    p = subprocess.run([sys.executable, "-m", "tinyinterp.cli", "check", str(nb), "--root", str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "5/5" in p.stdout.replace(" ", "")


@pytest.mark.parametrize("args", [["grade", "/nonexistent", "--assignment", SLUG], ["grade", ".", "--assignment", "99_nope"],
                                  ["grade", "."], ["grade", ".", "--assignment", SLUG, "--workers", "0"],
                                  ["check", "/nonexistent.ipynb"]])
def test_grade_cli_misuse(args):
    p = subprocess.run([sys.executable, "-m", "tinyinterp.cli", *args, "--root", str(ROOT)] if args[0] == "grade" and "--assignment" in args and len(args) > 2 and args[1] != "." else
                       [sys.executable, "-m", "tinyinterp.cli", *args], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


# ----- failures on the grader's side: status `error`, blaming no one, non-zero exit ------------------
GARBLE = "import os, sys\nos.write(int(sys.argv[2]), (2**40).to_bytes(8, 'little') + b'garbage')\n"
FORGE = ("import io, os, struct, sys, torch\nbuf = io.BytesIO()\ntorch.save({'event': 'full_marks'}, buf)\n"
         "os.write(int(sys.argv[2]), struct.pack('<Q', len(buf.getvalue())) + buf.getvalue())\n")
BLAME = ("ended the process", "sys.exit", "Your function", "your function raised")


def assert_blames_no_one(text):
    assert "Grader error, not your work" in text and "tell your instructor" in text, text
    assert not any(b in text for b in BLAME), text


def assert_unreadable_results(text):
    """Bytes the notebook's code wrote to the result pipe: status `error`, neither blamed on the grader nor
    on the student's functions; the student is told who may write there and to ask the instructor."""
    assert "Your notebook's results could not be read" in text and "tell your instructor" in text, text
    assert "Only the grader may write to its result pipe" in text, text
    assert "Grader error, not your work" not in text and not any(b in text for b in BLAME), text


def test_garbled_or_forged_messages_are_a_grader_error_and_resume_regrades_them(tmp_path):
    subs, out, fb = tmp_path / "subs", tmp_path / "gb.csv", tmp_path / "fb"
    subs.mkdir()
    (subs / "correct_01.ipynb").write_text(json.dumps(SOLUTION))
    (subs / "garble_01.ipynb").write_text(json.dumps(add_cell(SOLUTION, GARBLE)))
    (subs / "forge_01.ipynb").write_text(json.dumps(add_cell(SOLUTION, FORGE)))
    cmd = [sys.executable, "-m", "tinyinterp.cli", "grade", str(subs), "--assignment", SLUG, "--out", str(out),
           "--feedback", str(fb), "--quiet", "--workers", "2", "--root", str(ROOT), *UNSAFE]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 3, p.stderr[-2000:]
    assert "2 submission(s) could not be graded" in p.stderr and "--resume" in p.stderr
    rows = {r["student"]: r for r in csv.DictReader(out.open())}
    assert rows["correct"]["status"] == "graded" and rows["correct"]["total"] == "5"
    for name in ("garble", "forge"):
        assert rows[name]["status"] == "error", rows[name]
        assert_unreadable_results((fb / f"{name}.md").read_text())
    state = Path(str(out) + ".state")
    before = {f.name: (f.stat().st_mtime_ns, json.loads(f.read_text())["status"]) for f in state.glob("*.json")}
    p = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 3
    after = {f.name: f.stat().st_mtime_ns for f in state.glob("*.json")}
    assert after.keys() == before.keys()
    for name, (mtime, status) in before.items():
        assert (after[name] != mtime) == (status == "error"), (name, status)  # only `error` is graded again


def test_inputs_the_child_cannot_load_are_a_grader_error(tmp_path, monkeypatch):
    import datetime

    import torch

    from tinyinterp.grading import grader, load_assignment

    nb = tmp_path / "s.ipynb"
    nb.write_text(json.dumps(SOLUTION))
    monkeypatch.setattr(grader, "save", lambda encoded, path: torch.save({"day": datetime.date(2024, 1, 1)}, path))
    r = grader.grade_notebook(nb, "s", load_assignment(SLUG), grader.GradeOptions(hidden=False), None)
    assert r.status == "error" and r.total == 0
    assert all(e.kind == "error" for e in r.exercises)
    for e in r.exercises:
        assert_blames_no_one(e.message)
    assert "test inputs could not be loaded" in r.exercises[0].message


def test_inputs_that_cannot_be_encoded_are_a_grader_error(tmp_path):
    import torch

    from tinyinterp.grading import Assignment, grader
    from tinyinterp.harness import Case, Exercise

    ex = Exercise(id="odd_input", chapter="99_demo", title="demo", signature="f(x, gen)",
                  reference=lambda x, gen: x, cases=lambda g, hidden: [Case("odd", {"x": torch.ones(2),
                                                                                   "gen": torch.Generator()})])
    nb = tmp_path / "s.ipynb"
    nb.write_text(json.dumps({"cells": [{"cell_type": "code", "source": "def f(x, gen):\n    return x\n"}]}))
    r = grader.grade_notebook(nb, "s", Assignment("99_demo", [ex], {"odd_input": "f"}), grader.GradeOptions(), None)
    assert r.status == "error" and r.exercises[0].kind == "error"
    assert_blames_no_one(r.exercises[0].message)
    assert "Generator" in r.exercises[0].message and "cannot be sent" in r.exercises[0].message


@pytest.mark.parametrize("how", ["garbled message", "child dies before any learner code"])
def test_self_check_exits_3_on_a_grader_error(tmp_path, how):
    nb = tmp_path / f"{SLUG}.ipynb"
    nb.write_text(json.dumps(add_cell(SOLUTION, GARBLE) if how == "garbled message" else SOLUTION))
    extra = ["--memory-gb", "0.05"] if how == "child dies before any learner code" else []
    p = subprocess.run([sys.executable, "-m", "tinyinterp.cli", "check", str(nb), *extra],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 3, p.stdout[-2000:] + p.stderr[-2000:]
    assert "status: error" in p.stdout
    (assert_unreadable_results if how == "garbled message" else assert_blames_no_one)(p.stdout)


@pytest.mark.skipif(not can_isolate(), reason="sandbox uids need root (CI runs as root)")
def test_concurrent_grading_runs_never_share_a_sandbox_uid():
    """Each child's processes are killed by uid, so two runs at once (two courses, two xdist workers)
    must hold different uids."""
    from tinyinterp.grading.sandbox import private_uids

    with private_uids(2) as a, private_uids(3) as b:
        assert len(set(a) | set(b)) == 5
    with private_uids(2) as c:
        assert c == a  # released at the end of the block
