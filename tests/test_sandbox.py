"""The grading sandbox and "copying is not solving", attacked as a determined student would: every hostile
submission is the chapter 1 solution plus a cell of the student's, graded with `tinyinterp grade`.

An attack that succeeds costs the student the `embed` exercise (its function raises with what it found), so
each test fails if the attack works; the feedback is also searched for what the attack was after.

- one batch of hostile submissions: root-only files, the submissions/output/feedback/state folders, the book, `.git`,
  a host unix socket (path and abstract), FIFOs and symlinks planted where the old grader read, and
  every route to the package's reference implementation;
- separate runs for: /tmp, /var/tmp and /dev/shm shared between two submissions, a daemon, two grading
  runs at once, `kill -9` of a grading run and a rerun, and a library class that calls a reference;
- the graded copy of the package, for EVERY registered exercise (no sandbox needed).
"""

import csv
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from tinyinterp.grading.sandbox import BASE_UID, N_UIDS, ORACLE_PACKAGES, can_isolate, oracle_package_dirs

ROOT = Path(__file__).resolve().parents[1]
SLUG = "01_tokens_and_embeddings"
SOLUTION = json.loads((ROOT / "solutions" / f"{SLUG}.ipynb").read_text())
FULL = {"embed": 1, "bigram_log_probs": 2, "cross_entropy_loss": 2}
PACKAGE_DIR = ROOT / "src" / "tinyinterp"
sandboxed = pytest.mark.skipif(not can_isolate(), reason="the sandbox needs root and bubblewrap (CI runs as root)")

# The student's cell sets LEAK to whatever the attack found; `embed` then raises with it (0 points, and the
# finding in the feedback), else behaves as the solution's.
ATTACK = '''\
_solution_embed = embed
LEAK = []
{attack}
def embed(tokens, W_E, W_pos):
    if LEAK:
        raise RuntimeError("LEAKED: " + " | ".join(map(str, LEAK)))
    return _solution_embed(tokens, W_E, W_pos)
'''


def add_cell(nb: dict, source: str) -> dict:
    nb = json.loads(json.dumps(nb))
    nb["cells"].append({"cell_type": "code", "metadata": {}, "source": source, "outputs": [],
                        "execution_count": None, "id": f"student{len(nb['cells'])}"})
    return nb


def attack(source: str) -> dict:
    return add_cell(SOLUTION, ATTACK.format(attack=source))


def copy_route(body: str) -> dict:
    """The solution, with `embed` written by delegating to the book's reference through ``body`` (which
    binds ``ref``)."""
    indented = "\n".join("    " + line for line in body.splitlines())
    return add_cell(SOLUTION, f"def embed(tokens, W_E, W_pos):\n{indented}\n    return ref(tokens, W_E, W_pos)\n")


def grade(subs: dict[str, dict], tmp: Path, *, workers: int = 2, env: dict | None = None, slug: str = SLUG,
          timeout: float = 600, wait: bool = True):
    folder = tmp / "subs"
    folder.mkdir()
    for name, nb in subs.items():
        (folder / f"{name}_1.ipynb").write_text(json.dumps(nb))
    out, fb = tmp / "out" / "gradebook.csv", tmp / "feedback"
    cmd = [sys.executable, "-m", "tinyinterp.cli", "grade", str(folder), "--assignment", slug, "--out", str(out),
           "--feedback", str(fb), "--workers", str(workers), "--quiet", "--root", str(ROOT), "--cell-timeout", "100"]
    run_env = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env), out, fb
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=run_env)
    rows = {r["student"]: r for r in csv.DictReader(out.open())} if out.exists() else {}
    feedback = {f.stem: f.read_text() for f in fb.glob("*.md")} if fb.exists() else {}
    return p, rows, feedback


def points(row: dict) -> dict:
    return {k: float(row[k]) for k in FULL}


# ----- processes, seen from the host -----------------------------------------------------------------------
def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, real uid, start time) of every process on this machine."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            status = Path(f"/proc/{entry.name}/status").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z":
            continue
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        found[int(entry.name)] = (int(fields[1]), uid, fields[19])
    return found


def descendants(root: int, procs: dict) -> set[int]:
    kids, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, _, _) in procs.items() if ppid in frontier} - kids
        kids |= frontier
    return kids


class Watch(threading.Thread):
    """Records, until stopped, every sandbox-uid process descending from ``pid``: {(pid, start): uid}, and the
    sets of sandbox uids alive at the same moment."""

    def __init__(self, *pids: int) -> None:
        super().__init__(daemon=True)
        self.roots, self.seen, self.together, self.stop = pids, {}, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            procs = processes()
            now = {}
            for root in self.roots:
                for pid in descendants(root, procs):
                    _, uid, start = procs[pid]
                    if BASE_UID <= uid < BASE_UID + N_UIDS:
                        self.seen[(pid, start)] = uid
                        now.setdefault(root, set()).add(uid)
            self.together.append(now)
            time.sleep(0.05)


def alive(seen: dict) -> list:
    procs = processes()
    return [(pid, uid) for (pid, start), uid in seen.items() if pid in procs and procs[pid][2] == start]


# ----- one batch of hostile submissions ---------------------------------------------------------------------
SUBMODULE = {"captum": "attr", "shap": "explainers", "scipy": "stats", "sklearn": "linear_model"}

@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    token = secrets.token_hex(8)
    cache = tmp / "cache"  # the model cache the sandbox sees (read-only): a root-only file in it
    cache.mkdir()
    cache.chmod(0o755)
    (cache / "public.txt").write_text("public")
    (cache / "public.txt").chmod(0o644)
    secret = cache / "secret.txt"
    secret.write_text(f"SECRET-{token}")
    secret.chmod(0o600)
    home_secret = Path.home() / f".tinyinterp-test-secret-{token}"
    home_secret.write_text(f"SECRET-{token}")
    home_secret.chmod(0o600)
    sockdir = tmp / "sockets"
    sockdir.mkdir()
    sockdir.chmod(0o777)
    path_server = socket.socket(socket.AF_UNIX)
    path_server.bind(str(sockdir / "root-service.sock"))
    os.chmod(sockdir / "root-service.sock", 0o666)
    abstract_server = socket.socket(socket.AF_UNIX)
    abstract_server.bind(f"\0tinyinterp-test-{token}")
    hits: list[str] = []
    for server in (path_server, abstract_server):
        server.listen(5)
        server.settimeout(0.5)
        threading.Thread(target=_serve, args=(server, hits), daemon=True).start()
    subs_dir, out_dir = tmp / "subs", tmp / "out"
    # (the book root's path exists, as the mount points of .venv and src/tinyinterp; nothing else of it)
    visible = [subs_dir, out_dir, tmp / "feedback", Path(str(out_dir / "gradebook.csv") + ".state"),
               ROOT / ".git", ROOT / "solutions", ROOT / "chapters", ROOT / "_config.yml", ROOT / "Makefile",
               ROOT / "src" / "tinyinterp.egg-info", ROOT / ".venv" / "include", home_secret, "/run",
               "/var/run", sockdir / "root-service.sock", "/etc/shadow", "/etc/passwd"]
    original = PACKAGE_DIR / "functional.py"
    subs = {
        "correct": SOLUTION,
        "secrets": attack(
            "for _p in ['/etc/shadow', %r, %r]:\n"
            "    try:\n        LEAK.append(open(_p).read())\n    except OSError:\n        pass\n"
            "try:  # the cache folder is there: only the uid keeps its secret\n"
            "    assert open(%r).read() == 'public'\nexcept Exception as e:\n"
            "    LEAK.append(f'control failed: {e!r}')\n" % (str(secret), str(home_secret), str(cache / "public.txt"))),
        "visibility": attack(
            "import os\nLEAK += [p for p in %r if os.path.lexists(p)]\n"
            "for _pid in os.listdir('/proc'):\n"
            "    for _what in ('cmdline', 'environ'):\n"
            "        try:\n            _text = open(f'/proc/{_pid}/{_what}', 'rb').read()\n"
            "        except OSError:\n            continue\n"
            "        if %r in _text or %r in _text:\n            LEAK.append(f'/proc/{_pid}/{_what}')\n"
            % ([str(p) for p in visible], str(subs_dir).encode(), str(out_dir).encode())),
        "sockets": attack(
            "import socket\nfor _address in [%r, %r]:\n"
            "    _s = socket.socket(socket.AF_UNIX)\n"
            "    try:\n        _s.connect(_address)\n        LEAK.append('connected to ' + repr(_address))\n"
            "    except OSError:\n        pass\n" % (str(sockdir / "root-service.sock"), f"\0tinyinterp-test-{token}")),
        # the tests' oracle packages (dev extra) would do Part V's exercises: the child must not import them
        "oracles": attack(
            "import importlib, os\nfor _m in %r:\n"
            "    try:\n        importlib.import_module(_m)\n        LEAK.append('imported ' + _m)\n"
            "    except ImportError:\n        pass\n"
            "for _d in %r:\n    try:\n        open(os.path.join(_d, '__init__.py'), 'w').write('x')\n"
            "        LEAK.append('wrote into ' + _d)\n    except OSError:\n        pass\n"
            % ([f"{d.name}.{SUBMODULE[d.name]}" for d in oracle_package_dirs()], [str(d) for d in oracle_package_dirs()])),
        # where the old grader read the child's output, job and inputs: FIFOs (a read hangs) and
        # symlinks to a root-only file; then megabytes of output and a crash (the grader reads the log)
        "fifos": add_cell(SOLUTION,
                          "import os, sys\nfor _d in {os.getcwd(), os.environ.get('HOME', '/tmp'), '/tmp'}:\n"
                          "    for _n in ('output.log', 'job.json', 'inputs.pt'):\n"
                          "        _p = os.path.join(_d, _n)\n"
                          "        try:\n            os.remove(_p)\n        except OSError:\n            pass\n"
                          "        try:\n            os.mkfifo(_p)\n        except OSError:\n            pass\n"
                          "    try:\n        os.symlink(%r, os.path.join(_d, 'secret-link'))\n"
                          "    except OSError:\n        pass\n"
                          "sys.stdout.write('x' * 5_000_000)\nsys.stderr.write('MemoryError ' * 500_000)\n"
                          "sys.stdout.flush()\nos.kill(os.getpid(), 9)\n" % str(secret)),
        # every route to the book's reference implementation of `embed`
        "direct": copy_route("from tinyinterp.functional import embed as ref"),
        "splitimport": copy_route("import importlib\n"
                                  "ref = getattr(importlib.import_module('tinyinterp.' + 'func' + 'tional'), 'em' + 'bed')"),
        "registry": copy_route("import tinyinterp.harness\nref = tinyinterp.harness.get_exercise('embed').reference"),
        "execsource": copy_route("import inspect, tinyinterp.functional as F\nns = {'__name__': 'copied'}\n"
                                 "exec(compile(inspect.getsource(F), 'copied.py', 'exec'), ns)\nref = ns['embed']"),
        "originalfile": copy_route("import importlib.util\n"
                                   f"spec = importlib.util.spec_from_file_location('orig', {str(original)!r})\n"
                                   "mod = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(mod)\n"
                                   "ref = mod.embed"),
        "syspath": copy_route(f"import sys\nsys.path.insert(0, {str(ROOT / 'src')!r})\n"
                              "for k in [k for k in sys.modules if k.startswith('tinyinterp')]:\n"
                              "    del sys.modules[k]\nimport tinyinterp.functional\nref = tinyinterp.functional.embed"),
        "bytecode": copy_route("import importlib.util, marshal\n"
                               f"pyc = importlib.util.cache_from_source({str(original)!r})\n"
                               "ns = {'__name__': 'copied'}\nexec(marshal.loads(open(pyc, 'rb').read()[16:]), ns)\n"
                               "ref = ns['embed']"),
        "solutions": copy_route("import json, subprocess\nsrc = None\n"
                                f"for attempt in (lambda: json.load(open({str(ROOT / 'solutions' / (SLUG + '.ipynb'))!r})),\n"
                                f"                lambda: json.loads(subprocess.run(['git', '-C', {str(ROOT)!r}, 'show',\n"
                                f"                    'HEAD:solutions/{SLUG}.ipynb'], capture_output=True).stdout)):\n"
                                "    try:\n        nb = attempt()\n    except Exception:\n        continue\n"
                                "    src = next(''.join(c['source']) for c in nb['cells'] if 'def embed(' in ''.join(c['source']))\n"
                                "ns = {}\nexec(src, ns)\nref = ns['embed']"),
    }
    try:
        p, rows, feedback = grade(subs, tmp, env={"TINYINTERP_CACHE": str(cache)})
    finally:
        home_secret.unlink()
    return {"proc": p, "rows": rows, "feedback": feedback, "hits": hits, "token": token}


ROUTES = ["direct", "splitimport", "registry", "execsource", "originalfile", "syspath", "bytecode"]


@sandboxed
@pytest.mark.slow
def test_a_batch_of_hostile_submissions(batch):
    """One grading run (so one sandbox setup per xdist worker); every problem is listed at once."""
    p, rows, feedback = batch["proc"], batch["rows"], batch["feedback"]
    assert p.returncode == 0, p.stderr[-3000:]
    problems = []
    if "isolation: bubblewrap sandbox" not in p.stdout or "cgroup" not in p.stdout:
        problems.append(f"summary line: {p.stdout[-600:]}")
    if {r["isolation"] for r in rows.values()} != {"sandbox"}:
        problems.append(f"the gradebook's isolation column: {[r['isolation'] for r in rows.values()]}")
    if points(rows["correct"]) != FULL:
        problems.append(f"the honest submission lost points: {feedback['correct'][-800:]}")
    if len(oracle_package_dirs()) != len(ORACLE_PACKAGES):  # the dev extra installs them all (make setup)
        problems.append(f"oracle packages not found to hide: {oracle_package_dirs()}")
    for name in ("secrets", "visibility", "sockets", "oracles"):  # the attack finds nothing
        if points(rows[name]) != FULL or rows[name]["status"] != "graded":
            problems.append(f"{name}: {feedback[name][-800:]}")
    if batch["hits"]:
        problems.append(f"a host unix socket was reached {len(batch['hits'])} times")
    for name, text in feedback.items():
        if batch["token"] in text or "LEAKED" in text:
            problems.append(f"{name}: the feedback shows what the attack found")
    if points(rows["fifos"]) != FULL or rows["fifos"]["status"] != "crashed":  # neither hangs nor leaks
        problems.append(f"fifos: {rows['fifos']['status']}: {feedback['fifos'][-800:]}")
    for name in ROUTES:  # every route to the reference: 0 for that exercise, and the feedback says why
        text = feedback[name]
        if points(rows[name]) != {**FULL, "embed": 0} or "copying is not solving" not in text or \
                "reaches the book's reference implementation `tinyinterp.functional.embed`" not in text:
            problems.append(f"route {name}: {points(rows[name])}: {text[-800:]}")
    text = feedback["solutions"]  # solutions/ and the book's git history are out of reach
    if points(rows["solutions"]) != {**FULL, "embed": 0} or "def embed" in text or "W_pos[:seq_len]" in text:
        problems.append(f"solutions: {text[-800:]}")
    assert not problems, "\n\n".join(problems)


def _serve(server, hits) -> None:
    while True:
        try:
            conn, _ = server.accept()
            hits.append("hit")
            conn.close()
        except socket.timeout:
            continue
        except OSError:
            return


# ----- state that could cross from one submission to the next -----------------------------------------------
def _nr(name: str) -> int:
    """This machine's number of a system call (the cells call them through libc's ``syscall``)."""
    import pyseccomp

    return pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) if can_isolate() else -1


# the kernel keyring: a key kept for the uid (@u -4, @us -5) or in the session keyring inherited from the
# grader (@s -3) would reach whatever runs next as the same uid
KEYRINGS = (-3, -4, -5)
WRITER = f'''\
import ctypes, os, time, signal
for _d in ("/tmp", "/var/tmp", "/dev/shm"):
    open(os.path.join(_d, "left-by-writer"), "w").write("x")
for _ring in {KEYRINGS}:  # add_key
    ctypes.CDLL(None).syscall({_nr("add_key")}, b"user", b"left-by-writer", b"x", ctypes.c_size_t(1),
                              ctypes.c_long(_ring))
''' + '''\
if os.fork() == 0:  # a daemon: double fork, own session; it attacks whatever runs next as its uid
    os.setsid()
    if os.fork() == 0:
        time.sleep(3)
        for _ in range(1200):
            for _d in ("/tmp", "/var/tmp", "/dev/shm"):
                try:
                    open(os.path.join(_d, "left-by-daemon"), "w").write("x")
                except OSError:
                    pass
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            time.sleep(0.1)
        os._exit(0)
    os._exit(0)
os.wait()
'''
READER = ('import os\nLEAK += [os.path.join(_d, _f) for _d in ("/tmp", "/var/tmp", "/dev/shm") for _f in os.listdir(_d)'
          ' if _f.startswith("left-by")]\n'
          f'import ctypes\nfor _ring in {KEYRINGS}:  # keyctl(KEYCTL_SEARCH) for the writer\'s key\n'
          f'    if ctypes.CDLL(None).syscall({_nr("keyctl")}, 10, ctypes.c_long(_ring), b"user", b"left-by-writer",'
          ' 0) > 0:\n'
          '        LEAK.append(f"the key left by the writer in keyring {_ring}")\n'
          'LEAK += [_line for _line in open("/proc/keys") if "left-by-writer" in _line]\n'
          'import time\ntime.sleep(5)  # the daemon, if alive, strikes now\n')


@sandboxed
@pytest.mark.slow
def test_nothing_crosses_from_one_submission_to_the_next(tmp_path):
    """Graded in order by one worker (so with the same sandbox uid): the writer leaves files in /tmp, /var/tmp,
    /dev/shm, keys in the kernel keyrings and a daemon; the reader must see no file and no key, and nothing
    of the writer may survive it."""
    subs = {"a": add_cell(SOLUTION, WRITER), "b": attack(READER)}
    popen, out, fb = grade(subs, tmp_path, workers=1, wait=False)
    watch = Watch(popen.pid)
    watch.start()
    _, err = popen.communicate(timeout=600)
    watch.stop.set()
    watch.join()
    assert popen.returncode == 0, err[-3000:]
    rows = {r["student"]: r for r in csv.DictReader(out.open())}
    assert points(rows["b"]) == FULL and rows["b"]["status"] == "graded", (fb / "b.md").read_text()[-1500:]
    assert watch.seen and alive(watch.seen) == []


@sandboxed
@pytest.mark.slow
def test_two_grading_runs_at_once_use_different_uids_and_do_not_interfere(tmp_path):
    """Each run's student kills every process it may (kill -1) for a few seconds while the other run grades:
    with a uid shared between runs it would kill the other run's child."""
    killer = add_cell(SOLUTION, "import os, signal, time\nt = time.time()\nwhile time.time() - t < 8:\n"
                                "    try:\n        os.kill(-1, signal.SIGKILL)\n    except OSError:\n        pass\n"
                                "    time.sleep(0.02)\n")
    slow_honest = add_cell(SOLUTION, "import time\ntime.sleep(6)\n")
    runs = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        runs.append(grade({"killer": killer, "honest": slow_honest}, tmp_path / name, workers=2, wait=False))
    watch = Watch(*(popen.pid for popen, _, _ in runs))
    watch.start()
    for popen, out, fb in runs:
        _, err = popen.communicate(timeout=600)
        assert popen.returncode == 0, err[-3000:]
        rows = {r["student"]: r for r in csv.DictReader(out.open())}
        assert points(rows["honest"]) == FULL and rows["honest"]["status"] == "graded", \
            (fb / "honest.md").read_text()[-1500:]
        assert points(rows["killer"]) == FULL
    watch.stop.set()
    watch.join()
    both = [now for now in watch.together if len(now) == 2]
    assert both, "the two runs never had children at the same time"
    for now in both:
        a, b = now.values()
        assert not a & b, now


@sandboxed
@pytest.mark.slow
def test_kill_9_of_a_grading_run_leaves_nothing_that_harms_the_next(tmp_path):
    """A student's daemon (own session, double fork) outlives nothing: `kill -9` of the grader ends the
    sandbox and everything in it; the next run reuses the uid (and the dead run's cgroup) safely."""
    daemon = add_cell(SOLUTION, WRITER + "time.sleep(60)\n")
    (tmp_path / "first").mkdir()
    popen, _, _ = grade({"daemon": daemon}, tmp_path / "first", workers=1, wait=False)
    watch = Watch(popen.pid)
    watch.start()
    deadline = time.time() + 120
    while time.time() < deadline and len(watch.seen) < 2:  # the child's python and the daemon
        time.sleep(0.1)
    time.sleep(4)  # the daemon is up and attacking
    popen.send_signal(signal.SIGKILL)
    popen.wait()
    time.sleep(1)
    watch.stop.set()
    watch.join()
    assert len(set(watch.seen.values())) == 1 and len(watch.seen) >= 2, watch.seen
    deadline = time.time() + 10
    while alive(watch.seen) and time.time() < deadline:
        time.sleep(0.1)
    assert alive(watch.seen) == [], "processes of the killed run survived it"
    (tmp_path / "second").mkdir()
    p, rows, feedback = grade({"honest": attack(READER)}, tmp_path / "second", workers=1)
    assert p.returncode == 0, p.stderr[-3000:]
    assert points(rows["honest"]) == FULL and rows["honest"]["status"] == "graded", feedback["honest"][-1500:]


@sandboxed
def test_a_uid_is_never_handed_out_while_a_process_has_it():
    from tinyinterp.grading.sandbox import private_uids

    with private_uids(1) as (uid,):
        pass
    squatter = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "30"])
    try:
        time.sleep(0.2)
        with private_uids(2) as got:
            assert uid not in got
    finally:
        squatter.kill()
        squatter.wait()


@sandboxed
@pytest.mark.slow
def test_a_library_class_that_calls_the_reference_earns_zero(tmp_path):
    slug = "07_superposition"
    solution = json.loads((ROOT / "solutions" / f"{slug}.ipynb").read_text())
    via_class = add_cell(solution, "import torch\nfrom tinyinterp.superposition import ToyModel\n"
                                   "def toy_model_forward(x, W, b):\n"
                                   "    m = ToyModel(W.shape[2], W.shape[1], torch.ones(W.shape[0]))\n"
                                   "    with torch.no_grad():\n        m.W.copy_(W)\n        m.b_final.copy_(b)\n"
                                   "    return m(x)\n")
    p, rows, feedback = grade({"honest": solution, "viaclass": via_class}, tmp_path, slug=slug)
    assert p.returncode == 0, p.stderr[-3000:]
    honest, copied = rows["honest"], rows["viaclass"]
    assert float(honest["total"]) == float(honest["max_total"]) > 0
    assert float(copied["toy_model_forward"]) == 0
    assert float(copied["total"]) == float(honest["total"]) - float(honest["toy_model_forward"])
    assert "reaches the book's reference implementation `tinyinterp.superposition.toy_model_forward`" in \
        feedback["viaclass"]


# ----- without the sandbox -----------------------------------------------------------------------------------
def test_grade_refuses_without_a_sandbox_unless_told_and_then_says_unsafe(tmp_path, monkeypatch, capsys):
    from tinyinterp import cli
    from tinyinterp.grading import sandbox

    monkeypatch.setattr(sandbox, "sandbox_problem", lambda: "bubblewrap is not installed (test)")
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "dana_1.ipynb").write_text(json.dumps(SOLUTION))
    args = ["grade", str(subs), "--assignment", SLUG, "--out", str(tmp_path / "gb.csv"), "--feedback",
            str(tmp_path / "fb"), "--quiet", "--root", str(ROOT)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "bubblewrap is not installed" in err and "--unsafe-no-sandbox" in err
    assert not (tmp_path / "gb.csv").exists()
    assert cli.main([*args, "--unsafe-no-sandbox"]) == 0
    captured = capsys.readouterr()
    assert "UNSAFE: no sandbox" in captured.out and "UNSAFE: no sandbox" in captured.err
    assert "UNSAFE: no sandbox" in (tmp_path / "fb" / "dana.md").read_text()
    row = next(csv.DictReader((tmp_path / "gb.csv").open()))
    assert row["total"] == "5" and row["isolation"] == "UNSAFE: no sandbox"  # the gradebook says so too


def test_self_check_runs_unsandboxed_and_says_so(tmp_path):
    nb = tmp_path / f"{SLUG}.ipynb"
    nb.write_text(json.dumps(copy_route("from tinyinterp.functional import embed as ref")))
    p = subprocess.run([sys.executable, "-m", "tinyinterp.cli", "check", str(nb)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "isolation: none" in p.stderr and "unsandboxed" in p.stderr
    assert "reaches the book's reference implementation `tinyinterp.functional.embed`" in p.stdout


# ----- the graded copy of the package, for every registered exercise (no sandbox needed) ---------------------
def test_every_reference_is_withheld_in_the_graded_copy_and_nothing_of_it_remains(tmp_path):
    """All references at once, and the functions each exercise withholds with its reference (each chapter's
    copy withholds a subset of these): the copy has no original body as text or bytecode, each raises
    ReferenceUnavailable naming itself in a fresh interpreter, and cache keys are unchanged (the same cached
    models load in the sandbox)."""
    import ast
    import importlib.util
    import inspect
    import textwrap

    from tinyinterp.checkpoint import SOURCE_SETS, source_hash
    from tinyinterp.grading import graded_copy
    from tinyinterp.harness import all_exercises

    exercises = list(all_exercises().values())
    package = graded_copy.build(exercises, tmp_path)
    texts = {f: f.read_text() for f in package.rglob("*.py")}
    for ex, ref in ((ex, ref) for ex in exercises for ref in (ex.reference, *ex.withheld)):
        fn = ast.parse(textwrap.dedent(inspect.getsource(ref))).body[0]
        body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        lines = textwrap.dedent(inspect.getsource(ref)).splitlines()[body[0].lineno - 1:body[-1].end_lineno]
        original = "\n".join(line.strip() for line in lines)
        for f, text in texts.items():
            assert original not in "\n".join(line.strip() for line in text.splitlines()), (ex.id, ref, f)
    for pyc in package.rglob("*.pyc"):  # compiled from the rewritten source, nothing else
        source, data = Path(importlib.util.source_from_cache(str(pyc))), pyc.read_bytes()
        if int.from_bytes(data[4:8], "little") == 0:  # timestamp-based: mtime and size of the source
            assert data[8:16] == (int(source.stat().st_mtime).to_bytes(4, "little")
                                  + source.stat().st_size.to_bytes(4, "little")), pyc
        else:  # hash-based (SOURCE_DATE_EPOCH set)
            assert data[8:16] == importlib.util.source_hash(source.read_bytes()), pyc
    code = f'''
import inspect, json
from tinyinterp.harness import all_exercises
from tinyinterp.checkpoint import source_hash
raised = {{}}
for ex in all_exercises().values():
    for i, fn in enumerate((ex.reference, *ex.withheld)):
        params = inspect.signature(fn).parameters.values()
        positional = [p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        keyword = {{p.name: None for p in params if p.default is p.empty and p.kind is p.KEYWORD_ONLY}}
        key = ex.id if i == 0 else f"{{ex.id}} withheld {{i}}"
        try:
            fn(*[None] * len(positional), **keyword)
            raised[key] = None
        except Exception as e:
            raised[key] = [type(e).__name__, str(e)]
print(json.dumps({{"raised": raised, "hashes": {{k: source_hash(k) for k in {sorted(SOURCE_SETS)!r}}}}}))
'''
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout)
    for ex in exercises:
        for i, fn in enumerate((ex.reference, *ex.withheld)):
            key = ex.id if i == 0 else f"{ex.id} withheld {i}"
            assert got["raised"][key] == ["ReferenceUnavailable", f"{fn.__module__}.{fn.__qualname__}"], key
    assert got["hashes"] == {k: source_hash(k) for k in SOURCE_SETS}


@pytest.mark.parametrize("source, qualname, why", [
    ("def f(x):\n    return x\nf = lambda x: x\n", "f", "bound more than once"),
    ("def f(x):\n    return x\ndef f(x):\n    return -x\n", "f", "bound more than once"),
    ("from torch import relu as f\n", "f", "no `def`"),
    ("def g(x):\n    def f(x):\n        return x\n    return f\n", "f", "no `def`"),
    ("class C:\n    def f(self):\n        return 1\n    f = staticmethod(f)\n", "C.f", "bound more than once"),
])
def test_a_reference_that_cannot_be_withheld_fails_loudly(source, qualname, why):
    from tinyinterp.grading.graded_copy import UnpoisonableReference, poison_source

    with pytest.raises(UnpoisonableReference, match=why):
        poison_source(source, "tinyinterp.demo", {qualname})


def test_a_lambda_or_foreign_reference_fails_loudly():
    from tinyinterp.grading.graded_copy import UnpoisonableReference, reference_targets
    from tinyinterp.harness import Exercise

    lam = Exercise(id="demo", chapter="99_demo", title="demo", signature="f(x)", reference=lambda x: x,
                   cases=lambda g, hidden: [])
    for ex in (lam, types.SimpleNamespace(id="demo", reference=len)):
        with pytest.raises(UnpoisonableReference, match="not defined in the tinyinterp package"):
            reference_targets([ex])


def test_poisoning_keeps_everything_but_the_body():
    from tinyinterp.grading.graded_copy import poison_source

    source = ('import torch\n\n@torch.no_grad()\ndef f(x, y=2):\n    """Doc."""\n    z = x + y\n'
              '    return z * len("Φ×")  # a comment\n\n\ndef g(x): return f(x) + 1\n\nclass C:\n    def m(self):\n'
              '        return 3\n')
    out = poison_source(source, "tinyinterp.demo", {"f", "g", "C.m"})
    assert out.count("ReferenceUnavailable('tinyinterp.demo.f')  # a comment\n") == 1
    assert "z = x + y" not in out and "Φ" not in out and "Doc." not in out
    assert "def g(x): raise __import__" in out and "ReferenceUnavailable('tinyinterp.demo.C.m')" in out
    assert out.startswith("import torch\n\n@torch.no_grad()\ndef f(x, y=2):\n    raise")
    assert len(out.splitlines()) < len(source.splitlines())


@sandboxed
def test_grading_refuses_to_mount_a_folder_that_holds_what_it_hides(tmp_path):
    """A model cache that contains the feedback folder would show it to learner code: one line, exit 2."""
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "dana_1.ipynb").write_text(json.dumps(SOLUTION))
    p = subprocess.run([sys.executable, "-m", "tinyinterp.cli", "grade", str(subs), "--assignment", SLUG, "--out",
                        str(tmp_path / "gb.csv"), "--feedback", str(tmp_path / "fb"), "--quiet"], cwd=tmp_path,
                       env={**os.environ, "TINYINTERP_CACHE": str(tmp_path)}, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert f"{tmp_path}" in p.stderr and "must not see" in p.stderr
    assert not (tmp_path / "gb.csv").exists()


def test_the_instructor_guide_states_the_limits_the_sandbox_applies():
    from tinyinterp.grading.cgroups import BWRAP_TASKS, CPU_WEIGHT
    from tinyinterp.grading.launch import OUTPUT_TAIL_BYTES
    from tinyinterp.grading.sandbox import DENIED_SYSCALLS, Limits

    guide = " ".join((ROOT / "book" / "instructor_guide.md").read_text().split())
    lim = Limits()
    for claim in (f"a fresh tmpfs ({lim.scratch_bytes // 2**20} MiB)", f"(3 × {lim.scratch_bytes // 2**20} MiB)",
                  f"`RLIMIT_CPU` {lim.cpu_seconds} s", f"`RLIMIT_NPROC` {lim.max_processes}",
                  f"`RLIMIT_FSIZE` {lim.max_file_bytes // 2**20} MiB", f"({BASE_UID} and up",
                  f"the last {OUTPUT_TAIL_BYTES // 2**10} KiB", "`--unsafe-no-sandbox`", "UNSAFE: no sandbox",
                  "reaches the book's reference implementation", f"`pids.max` {lim.max_processes + BWRAP_TASKS}",
                  f"`{'` '.join(CPU_WEIGHT['v1'])} in cgroup v1, `{'` '.join(CPU_WEIGHT['v2'])} in v2"):
        assert claim in guide, claim
    for name in DENIED_SYSCALLS:  # each denied system call, by name or as `prefix_*`
        assert f"`{name}`" in guide or any(f"`{name[:i]}*`" in guide for i in range(len(name))), name
