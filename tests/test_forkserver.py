"""The pre-warmed sandbox template (tinyinterp/grading/forkserver.py): each submission forked from it gets a
sandbox as fresh and as unprivileged as one started from scratch, grades the same, and a template that cannot
start or dies is the grader's problem, never the learner's. (Everything in tests/test_sandbox.py and
tests/test_grading*.py also runs through the template, which is the default.)"""

import csv
import errno
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tinyinterp.grading import forkserver, grader
from tinyinterp.grading.assignment import load_assignment
from tinyinterp.grading.graded_copy import graded_package
from tinyinterp.grading.inputs import save
from tinyinterp.grading.launch import sealed_fd, start_child
from tinyinterp.grading.sandbox import Limits, can_bring_up_loopback, can_isolate, private_uids

ROOT = Path(__file__).resolve().parents[1]
SLUG = "01_tokens_and_embeddings"
pytestmark = pytest.mark.skipif(not can_isolate(), reason="the sandbox needs root and bubblewrap (CI runs as root)")

PROBE = """\
import ctypes, json, os, socket, sys, torch
status = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)
snmp = [l.split() for l in open('/proc/net/snmp') if l.startswith('Udp:')]
libc = ctypes.CDLL(None, use_errno=True)
userns = (libc.unshare(0x10000000), ctypes.get_errno())  # CLONE_NEWUSER
try:  # loopback is up, as in bwrap's own namespace
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(('127.0.0.1', 0))
    server.sendto(b'x', server.getsockname())
    server.settimeout(5)
    loopback = server.recv(1) == b'x'
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(40):  # to a closed port: counted in this network namespace's /proc/net/snmp (Udp NoPorts)
        sender.sendto(b'x', ('127.0.0.1', 9))
except OSError:
    loopback = False
writes = {}
for target in [os.environ['TINYINTERP_CACHE'], os.path.dirname(os.__file__), sys.prefix]:
    try:
        open(os.path.join(target, 'written-by-learner'), 'w').write('x')
        writes[target] = 'written'
    except OSError as e:
        writes[target] = type(e).__name__
print('PROBE' + json.dumps({
    'uid': os.getuid(), 'pid': os.getpid(), 'shm': os.listdir('/dev/shm'),
    'tmp': [(n, os.path.isdir('/tmp/' + n), os.stat('/tmp/' + n).st_uid) for n in os.listdir('/tmp')],
    'status': {k: status[k].strip() for k in ('Uid', 'Gid', 'Groups', 'CapInh', 'CapPrm', 'CapEff', 'CapBnd',
                                              'CapAmb', 'NoNewPrivs', 'Seccomp')},
    'cache': sorted(os.listdir(os.environ['TINYINTERP_CACHE'])), 'writes': writes,
    'processes': sorted(int(p) for p in os.listdir('/proc') if p.isdigit()),
    'template': getattr(sys.modules.get('tinyinterp.grading.forkserver'), '_in_template', False),
    'udp': dict(zip(snmp[0][1:], snmp[1][1:])), 'tcp': open('/proc/net/tcp').read().splitlines()[1:],
    'hostname': socket.gethostname(), 'loopback': loopback, 'userns': userns, 'seed': torch.initial_seed()}))
open('/tmp/left-by-probe', 'w').write('x')
open('/dev/shm/left-by-probe', 'w').write('x')
"""


def run_child(uid: int, cell: str) -> tuple[str, int]:
    """One child (a cell and no exercises), as the grader starts it: its output and exit status."""
    job = sealed_fd(json.dumps({"cells": [[0, cell]], "skip_cells": [], "skip_exercises": [],
                                "exercises": {}}).encode(), "job")
    buf = io.BytesIO()
    save({}, buf)
    inputs = sealed_fd(buf.getvalue(), "inputs")
    r, w = os.pipe()
    child = start_child([str(job), str(w), str(inputs)], uid=uid, package=graded_package(load_assignment(SLUG)),
                        limits=Limits(), hide=[], pass_fds=(job, w, inputs))
    for fd in (job, w, inputs):
        os.close(fd)
    while os.read(r, 1 << 16):
        pass
    os.close(r)
    deadline = time.monotonic() + 60
    while child.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.kill()
    child.close()
    return child.output_tail(20000), child.returncode


def probe(out: str) -> dict:
    return json.loads(next(line[5:] for line in out.splitlines() if line.startswith("PROBE")))


@pytest.fixture
def cache_under_tmp(tmp_path, monkeypatch):
    """A model cache below /tmp (where a fresh tmpfs is mounted in each fork): it must stay visible, read-only."""
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o755)
    (cache / "model.pt").write_text("weights")
    (cache / "model.pt").chmod(0o644)
    monkeypatch.setenv("TINYINTERP_CACHE", str(cache))
    assert str(cache).startswith("/tmp/")
    return cache


def test_each_fork_is_unprivileged_fresh_and_alone(cache_under_tmp):
    forkserver.close_all()
    with private_uids(1) as (uid,):
        try:
            first = probe(run_child(uid, PROBE)[0])
            second = probe(run_child(uid, PROBE)[0])
        finally:
            forkserver.close_all()
    for seen in (first, second):
        assert seen["template"], f"the child did not come from the template: {forkserver.problem}"
        assert seen["uid"] == uid and seen["pid"] != 1  # pid 1 of its namespace is the (root) init, not learner code
        assert seen["status"] == {"Uid": f"{uid}\t{uid}\t{uid}\t{uid}", "Gid": f"{uid}\t{uid}\t{uid}\t{uid}",
                                  "Groups": "", "CapInh": "0" * 16, "CapPrm": "0" * 16, "CapEff": "0" * 16,
                                  "CapBnd": "0" * 16, "CapAmb": "0" * 16, "NoNewPrivs": "1", "Seccomp": "2"}
        # nothing left by the first child reaches the second: /tmp holds only root's folders on the way to the
        # read-only binds below it (the cache here; a virtual environment under /tmp too, in a fresh clone)
        assert [cache_under_tmp.parts[2], True, 0] in seen["tmp"] and seen["shm"] == [], seen["tmp"]
        assert all(is_dir and owner == 0 for _, is_dir, owner in seen["tmp"]), seen["tmp"]
        assert seen["cache"] == ["model.pt"]  # the read-only bind below /tmp is bound again in each fork
        assert set(seen["writes"].values()) <= {"OSError", "PermissionError"}, seen["writes"]
        assert seen["processes"] == [1, seen["pid"]], seen["processes"]  # nothing else visible
        # a network namespace of its own: the first child's 40 packets are not counted in the second's
        assert seen["udp"]["NoPorts"] == "0" and seen["tcp"] == [], seen
        assert seen["loopback"] == can_bring_up_loopback(), seen
        assert seen["hostname"] == "sandbox" and seen["userns"] == [-1, errno.EPERM], seen
    assert first["seed"] != second["seed"]  # fresh random seeds, as a fresh process has
    assert sorted(os.listdir(cache_under_tmp)) == ["model.pt"]


def test_without_the_template_the_child_starts_its_own_sandbox(cache_under_tmp, monkeypatch):
    monkeypatch.setenv("TINYINTERP_GRADER_TEMPLATE", "0")
    with private_uids(1) as (uid,):
        seen = probe(run_child(uid, PROBE)[0])
    assert not seen["template"] and seen["uid"] == uid and seen["status"]["CapEff"] == "0" * 16
    assert seen["cache"] == ["model.pt"] and seen["loopback"] and seen["userns"] == [-1, errno.EPERM]


def test_a_template_that_cannot_start_falls_back_and_says_so(monkeypatch):
    forkserver.close_all()
    monkeypatch.setattr(forkserver, "sandbox_argv", lambda *a, **k: ["/bin/false"])
    monkeypatch.setattr(forkserver, "problem", None)
    with private_uids(1) as (uid,):
        out, code = run_child(uid, "import sys\nprint('TEMPLATE', getattr(sys.modules.get("
                              "'tinyinterp.grading.forkserver'), '_in_template', False))\n")
    assert "TEMPLATE False" in out and code == 0
    assert forkserver.problem and "template did not start" in forkserver.problem


def test_a_template_that_dies_mid_notebook_is_a_grader_error(tmp_path):
    """The learner's cell sleeps; the template is killed under it: status `error`, blaming no one."""
    forkserver.close_all()
    nb = json.loads((ROOT / "solutions" / f"{SLUG}.ipynb").read_text())
    nb["cells"].insert(3, {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                           "id": "sleep", "source": "import time\ntime.sleep(60)\n"})
    path = tmp_path / "s.ipynb"
    path.write_text(json.dumps(nb))
    box = []
    with private_uids(1) as (uid,):
        t = threading.Thread(target=lambda: box.append(grader.grade_notebook(
            path, "s", load_assignment(SLUG), grader.GradeOptions(hidden=False), uid)))
        t.start()
        deadline = time.monotonic() + 60
        while uid not in forkserver._servers and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3)
        forkserver._servers[uid].proc.kill()
        t.join(timeout=120)
        forkserver.close_all()
    r = box[0]
    assert r.status == "error", (r.status, r.notes)
    assert any("sandbox template ended" in n and "not your work" in n for n in r.notes), r.notes


def _grade(subs: Path, out: Path, template: bool) -> dict:
    env = {**os.environ, "TINYINTERP_GRADER_TEMPLATE": "1" if template else "0"}
    p = subprocess.run([sys.executable, "-m", "tinyinterp.cli", "grade", str(subs), "--assignment", SLUG, "--out",
                        str(out), "--feedback", str(out.parent / "fb"), "--workers", "2", "--quiet", "--root", str(ROOT)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert ("pre-warmed template into namespaces" in p.stdout) == template, p.stdout[-1500:]
    assert "template was not used" not in p.stdout, p.stdout[-1500:]
    return {r["student"]: r for r in csv.DictReader(out.open())}


def test_the_template_grades_exactly_as_a_fresh_sandbox(tmp_path):
    solution = json.loads((ROOT / "solutions" / f"{SLUG}.ipynb").read_text())
    wrong = json.loads(json.dumps(solution))
    for c in wrong["cells"]:
        if c["cell_type"] == "code" and "def embed(" in "".join(c["source"]):
            c["source"] = "def embed(tokens, W_E, W_pos):\n    return W_E[tokens]\n"
    subs = tmp_path / "subs"
    subs.mkdir()
    for name, nb in {"correct": solution, "wrong": wrong}.items():
        (subs / f"{name}.ipynb").write_text(json.dumps(nb))
    (subs / "blank.ipynb").write_text((ROOT / "exercises" / f"{SLUG}.ipynb").read_text())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with_template = _grade(subs, tmp_path / "a" / "gb.csv", template=True)
    without = _grade(subs, tmp_path / "b" / "gb.csv", template=False)
    assert with_template == without
    assert with_template["correct"]["total"] == "5" and with_template["wrong"]["total"] == "4"


def test_mount_points_with_odd_names_are_read_back_exactly():
    assert forkserver.mountinfo_path(r"/tmp/a\040b\011c\134d/ü") == "/tmp/a b\tc\\d/ü"


def test_a_late_reply_is_never_taken_for_another_and_silence_gives_the_template_up():
    """Replies carry the request's number: one that comes after its request gave up is dropped, not handed
    to the next request; a request with no reply in time marks the template lost and ends it."""
    server = object.__new__(forkserver.ForkServer)
    killed = []
    server.cond, server.lost, server.log = threading.Condition(), False, io.BytesIO()
    server.proc = type("Proc", (), {"kill": lambda self: killed.append(1)})()
    server.replies = [{"event": "spawned", "pid": 11, "seq": 1}, {"event": "spawned", "pid": 14, "seq": 2}]
    assert server._reply(1.0, seq=2)["pid"] == 14 and server.replies == []
    with pytest.raises(forkserver.TemplateLost):
        server._reply(0.2, seq=3)
    assert server.lost and killed == [1]


def test_a_fork_that_cannot_set_up_its_sandbox_is_graded_from_scratch(tmp_path, monkeypatch):
    """The fork's init cannot join a cgroup (here: an fd it cannot write): no notebook code ran, so the
    child starts again in a sandbox of its own, the templates are retired for the run, and the student is
    graded normally."""
    forkserver.close_all()
    monkeypatch.setattr(forkserver, "problem", None)
    real_spawn = forkserver.ForkServer.spawn

    def spawn_with_a_bad_cgroup(self, job_fd, result_fd, inputs_fd, out_fd, cgroup_fds):
        bad = os.open("/dev/null", os.O_RDONLY)
        try:
            return real_spawn(self, job_fd, result_fd, inputs_fd, out_fd, [*cgroup_fds, bad])
        finally:
            os.close(bad)

    monkeypatch.setattr(forkserver.ForkServer, "spawn", spawn_with_a_bad_cgroup)
    path = tmp_path / "s.ipynb"
    path.write_text((ROOT / "solutions" / f"{SLUG}.ipynb").read_text())
    with private_uids(1) as (uid,):
        try:
            r = grader.grade_notebook(path, "s", load_assignment(SLUG), grader.GradeOptions(hidden=False), uid)
        finally:
            forkserver.close_all()
    assert r.status == "graded" and r.total == r.max_total, (r.status, r.notes)
    assert forkserver.problem and "could not set up its sandbox" in forkserver.problem
