"""What the sandbox shares through the kernel, attacked: the keyring and the other system calls the seccomp
filter denies, and the CPU (a submission that forks busy loops in sessions of their own must not outweigh
the child graded beside it: each child has cgroups of its own, with the same CPU weight). The helpers and
the hostile-submission style are those of ``test_sandbox.py``.
"""

import csv
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_sandbox import BASE_UID, N_UIDS, SOLUTION, ROOT, add_cell, descendants, grade, points, processes, sandboxed
from tinyinterp.grading import sandbox
from tinyinterp.grading.cgroups import ChildCgroups

needs_cpu_cgroup = pytest.mark.skipif(not (sandbox.can_isolate() and ChildCgroups.available("cpu")),
                                      reason="needs the sandbox and a CPU cgroup the grader may create")

# each denied system call, with arguments that are harmless without the filter too (an invalid command, a
# NULL pointer or a bad fd: the kernel refuses them with another errno, and creates nothing)
PROBE = '''
import ctypes, json, pyseccomp
libc = ctypes.CDLL(None, use_errno=True)
args = {"add_key": (None, None, None, 0, -4), "request_key": (None, None, None, 0), "keyctl": (-1, 0, 0),
        "bpf": (-1, None, 0), "perf_event_open": (None, 0, -1, -1, 0), "userfaultfd": (-1,),
        "io_uring_setup": (0, None), "io_uring_enter": (-1, 0, 0, 0, None), "io_uring_register": (-1, 0, None, 0),
        "kexec_load": (0, 0, None, -1), "kexec_file_load": (-1, -1, 0, None, -1)}
found = {}
for name in %r:
    ctypes.set_errno(0)
    nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    r = libc.syscall(nr, *(ctypes.c_long(a) if isinstance(a, int) else a for a in args[name]))
    found[name] = (r, ctypes.get_errno())
print(json.dumps(found))
'''


@sandboxed
def test_every_denied_system_call_fails_with_eperm_in_the_sandbox():
    """The keyring calls first: a key is kept per uid, so without the filter one submission could leave one
    for the next graded as the same uid (``test_nothing_crosses_from_one_submission_to_the_next``)."""
    code = PROBE % (list(sandbox.DENIED_SYSCALLS),)
    p = sandbox.run_sandboxed(sandbox.PROBE_UID, [sys.executable, "-c", code], timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    found = json.loads(p.stdout)
    assert set(found) == set(sandbox.DENIED_SYSCALLS) and {"add_key", "request_key", "keyctl"} <= set(found)
    assert {name: r for name, r in found.items() if r != [-1, errno.EPERM]} == {}, found
    # and the rest of the kernel works: threads, processes, a new session
    p = sandbox.run_sandboxed(sandbox.PROBE_UID, [sys.executable, "-c", "import os, threading; t = threading.Thread("
                              "target=print); t.start(); t.join(); pid = os.fork()\nif pid == 0: os.setsid(); "
                              "os._exit(7)\nprint(os.waitpid(pid, 0)[1] >> 8)"], timeout=60)
    assert p.returncode == 0 and p.stdout.split() == ["7"], (p.stdout, p.stderr[-2000:])


@sandboxed
def test_without_the_seccomp_binding_grading_refuses_in_one_line(tmp_path):
    """``pyseccomp`` (the ``grade`` extra) missing: the sandbox is unavailable, and says why in one line."""
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    (tmp_path / "pyseccomp.py").write_text("raise ImportError('hidden by the test')\n")
    p = subprocess.run([sys.executable, "-c", "from tinyinterp.grading.sandbox import sandbox_problem; "
                        "print(sandbox_problem())"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(p.stdout.strip().splitlines()) == 1 and "pyseccomp is not installed" in p.stdout, p.stdout
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "dana_1.ipynb").write_text(json.dumps(SOLUTION))
    p = subprocess.run([sys.executable, "-m", "tinyinterp.cli", "grade", str(tmp_path / "subs"), "--assignment",
                        "01_tokens_and_embeddings", "--out", str(tmp_path / "gb.csv"), "--feedback",
                        str(tmp_path / "fb"), "--root", str(ROOT)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "pyseccomp" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


# ----- the CPU -------------------------------------------------------------------------------------------------
def cpu_cgroup(pid: int) -> Path | None:
    """The folder of the CPU cgroup ``pid`` is in, as the host sees it."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if ChildCgroups.version() == "v1" and "cpu" in controllers.split(","):
            return Path("/sys/fs/cgroup/cpu") / path.lstrip("/")
        if ChildCgroups.version() == "v2" and controllers == "":
            return Path("/sys/fs/cgroup") / path.lstrip("/")
    return None


def settled_cpu_cgroup(pid: int, start: str) -> Path | None:
    """:func:`cpu_cgroup`, for a process that had not begun to exit when it was read (an exiting process
    leaves its cgroups, for the root's, before it becomes a zombie): the kernel sets PF_EXITING first."""
    cg = cpu_cgroup(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    exiting = fields[0] in "ZXx" or int(fields[6]) & 0x4  # PF_EXITING
    return None if exiting or fields[19] != start else cg


WEIGHT = {"v1": ("cpu.shares", "1024"), "v2": ("cpu.weight", "100")}  # a plain process's, each version
# forks a few processes, each in a new session (which would escape the scheduler's per-session autogroup)
SESSIONS = '''\
import os, time
kids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        os.setsid()
        time.sleep(6)
        os._exit(0)
    kids.append(pid)
time.sleep(6)
for pid in kids:
    os.waitpid(pid, 0)
'''


@needs_cpu_cgroup
@pytest.mark.slow
def test_each_child_has_a_cpu_cgroup_of_its_own_with_the_same_weight(tmp_path):
    """Two submissions graded side by side (--workers 2), one of them forking processes into new sessions:
    every process of each child is in that child's CPU cgroup (``tinyinterp-uid-<its uid>``), whose weight is
    a plain process's, whatever the learner does; the grader is not in one; the cgroups go with the run."""
    subs = {"sessions": add_cell(SOLUTION, SESSIONS), "honest": add_cell(SOLUTION, "import time\ntime.sleep(6)\n")}
    popen, out, fb = grade(subs, tmp_path, workers=2, wait=False)
    seen: dict[int, dict[int, Path | None]] = {}  # uid -> {pid: its CPU cgroup}
    settings: dict[Path, tuple[str, int]] = {}  # cgroup -> (its weight, its inode)
    while popen.poll() is None:
        procs = processes()
        for pid in descendants(popen.pid, procs):
            ppid, uid, start = procs[pid]
            # (a child of the grader itself as a sandbox uid is its kill helper, kill_uid: not the learner's)
            if BASE_UID <= uid < BASE_UID + N_UIDS and ppid != popen.pid:
                cg = settled_cpu_cgroup(pid, start)
                if cg is not None or pid not in seen.get(uid, {}):
                    seen.setdefault(uid, {})[pid] = cg
                name, _ = WEIGHT[ChildCgroups.version()]
                if cg is not None and cg not in settings:
                    try:
                        settings[cg] = ((cg / name).read_text().strip(), cg.stat().st_ino)
                    except OSError:
                        pass  # the child ended meanwhile
        time.sleep(0.05)
    _, err = popen.communicate()
    assert popen.returncode == 0, err[-3000:]
    rows = {r["student"]: r for r in csv.DictReader(out.open())}
    assert all(rows[n]["status"] == "graded" for n in subs), rows
    assert points(rows["sessions"]) == points(rows["honest"]) == {"embed": 1, "bigram_log_probs": 2,
                                                                 "cross_entropy_loss": 2}
    assert len(seen) == 2, seen  # two workers, two uids, seen at work
    assert max(sum(cg is not None for cg in pids.values()) for pids in seen.values()) >= 5, seen  # 1 + 4 forks
    for uid, pids in seen.items():
        groups = {cg for cg in pids.values() if cg is not None}
        assert groups == {ChildCgroups.paths_for(uid)["cpu"]}, (uid, pids)
    assert cpu_cgroup(popen.pid) not in {ChildCgroups.paths_for(uid)["cpu"] for uid in seen}
    assert {weight for weight, _ in settings.values()} == {WEIGHT[ChildCgroups.version()][1]}, settings
    # gone, or a new one of another run that took the uid since (another inode)
    assert not [cg for cg, (_, ino) in settings.items() if cg.exists() and cg.stat().st_ino == ino], settings


@needs_cpu_cgroup
def test_the_cgroups_a_killed_run_left_are_removed_by_the_next():
    """A run killed with ``kill -9`` leaves its children's cgroups (memory, cpu, pids) behind; the next run
    removes them once their uid's lock is free (another run that took that uid since would hold its lock:
    then the folder is that run's new one, another inode)."""
    with sandbox.private_uids(1) as (uid,):
        left = ChildCgroups.create(uid, 2**30, 64)  # as a killed run would leave it: the lock goes, it stays
    assert left is not None and set(left.dirs) >= {"cpu", "pids"}, ChildCgroups.paths_for(uid)
    inodes = {d: d.stat().st_ino for d in left.folders}
    with sandbox.private_uids(1):
        pass
    assert not [d for d, ino in inodes.items() if d.exists() and d.stat().st_ino == ino], inodes
