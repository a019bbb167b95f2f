"""A pre-warmed template for the sandbox: one fork server per grading worker, so that a submission does not
pay again for starting Python and importing torch (about 1.5 s of the ~3 s a submission costs).

The template is trusted code only: ``python -m tinyinterp.grading.forkserver`` runs in a bubblewrap sandbox
built like every child's (:func:`.sandbox.sandbox_argv`: its own pid, network, IPC and UTS namespaces, only
the read-only binds, the seccomp filter), as root inside it with CAP_SYS_ADMIN, SETUID, SETGID and SETPCAP
only. It imports torch, matplotlib and the graded copy of the package, and never runs learner code. For each
submission it forks; the fork makes the submission's sandbox fresh before any learner code runs:

- new mount, pid and IPC namespaces (and a cgroup namespace once it has joined its cgroups); in them, fresh
  tmpfs on ``/tmp``, ``/var/tmp`` and ``/dev/shm`` and a ``/proc`` of its own; the submission's process is
  pid 1 of its namespace, so when it ends the kernel ends everything it started;
- the submission's cgroups, its resource limits, stdin from /dev/null, stdout and stderr to the grader's pipe,
  no file descriptor but the job's (the template's socket is closed first), a new session;
- then it becomes the worker's uid with no capabilities (bounding, ambient and inheritable sets emptied too)
  and no_new_privs, and checks all of that in ``/proc/self/status`` before it runs anything else; the seccomp
  filter is the template's, inherited.

A fork shares nothing writable with the template or with earlier submissions: memory is copy-on-write, and
everything a submission can write (the tmpfs, IPC objects) belongs to its own namespaces and ends with it.
When the template cannot start here (``TINYINTERP_GRADER_TEMPLATE=0`` also turns it off), each submission
starts its own interpreter in its own bubblewrap sandbox, as before (:func:`.launch.start_child`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

from .sandbox import Limits, SandboxUnavailable, apply_rlimits, sandbox_argv, scrubbed_env, seccomp_program

READY_TIMEOUT_S = 120.0
REPLY_TIMEOUT_S = 30.0
MAX_FDS = 16

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
EXIT_SETUP_FAILED = 70  # the fork could not make its sandbox: a grader error, never the learner's


def enabled() -> bool:
    return os.environ.get("TINYINTERP_GRADER_TEMPLATE", "1") != "0"


# ----- the template (runs in the sandbox, as root with a few capabilities, trusted code only) ------------
def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _preload() -> None:
    """Import what every child imports (and the book's modules its cells import), once."""
    import importlib
    import pkgutil

    import matplotlib
    import numpy  # noqa: F401
    import torch  # noqa: F401

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401

    import tinyinterp
    for mod in pkgutil.iter_modules(tinyinterp.__path__):
        if mod.name not in ("cli", "grading", "release"):
            with contextlib.suppress(Exception):
                importlib.import_module(f"tinyinterp.{mod.name}")
    for name in ("child", "inputs", "protocol", "neutral"):
        importlib.import_module(f"tinyinterp.grading.{name}")
    sys.stdout.flush()
    sys.stderr.flush()


_in_template = False  # True in the template and its forks (tests tell the two ways of starting apart by it)


def serve(sock_fd: int, uid: int, limits: Limits) -> None:
    global _in_template
    _in_template = True
    _preload()
    sock = socket.socket(fileno=sock_fd)
    sock.sendall(json.dumps({"event": "ready"}).encode())
    children: set[int] = set()
    while True:
        while children:  # report every child that ended
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            sock.sendall(json.dumps({"event": "exit", "pid": pid, "code": _exit_status(status)}).encode())
        ready, _, _ = select.select([sock], [], [], 0.05)
        if not ready:
            continue
        msg, fds, _, _ = socket.recv_fds(sock, 4096, MAX_FDS)
        if not msg:  # the grader closed its end: end every child and stop
            for pid in children:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            return
        request = json.loads(msg)
        if request["op"] == "spawn":
            try:
                pid = _fork_child(sock, fds, uid, limits)
                children.add(pid)
                reply = {"event": "spawned", "pid": pid, "seq": request["seq"]}
            except OSError as e:
                reply = {"event": "error", "message": f"fork failed: {e}", "seq": request["seq"]}
            finally:
                for fd in fds:
                    os.close(fd)
            sock.sendall(json.dumps(reply).encode())
        elif request["op"] == "kill" and request["pid"] in children:
            with contextlib.suppress(OSError):
                os.kill(request["pid"], signal.SIGKILL)


def _exit_status(status: int) -> int:
    """A wait status as an exit code, a signal N as 128 + N (as bwrap and the shell report it)."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _close_fds_except(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in keep:
            with contextlib.suppress(OSError):
                os.close(int(name))


def _fork_child(sock: socket.socket, fds: list[int], uid: int, limits: Limits) -> int:
    """Fork the submission's keeper and return its pid. The keeper (root, in the template's namespaces)
    makes new namespaces and forks their init, which makes the mounts and forks the submission's process;
    the keeper exits with the init's status: the submission's, or 128 + the signal that ended it."""
    pid = os.fork()
    if pid:
        return pid
    try:  # the keeper: no learner code ever runs here
        sock.close()  # learner code must never reach the template
        libc = _libc()
        _check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWUTS), "unshare")
        _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        alive_r, alive_w = os.pipe()  # init sees EOF on it if this keeper is gone
        init = os.fork()
        if init == 0:
            os.close(alive_w)
            _init(libc, uid, limits, fds, alive_r)
        os.close(alive_r)
        for fd in fds:
            os.close(fd)
        os._exit(_exit_status(os.waitpid(init, 0)[1]))
    except BaseException:  # noqa: BLE001
        os._exit(EXIT_SETUP_FAILED)


SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")


def mountinfo_path(field: str) -> str:
    """A path as /proc/self/mountinfo writes it: space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts_below(folders) -> list[str]:
    """Mount points strictly inside ``folders``, in the order they were mounted (parents first)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = mountinfo_path(line.split()[4])
        if any(point.startswith(f + "/") for f in folders):
            found.append(point)
    return found


def _loopback_up() -> None:
    """Bring up ``lo`` in the fork's new network namespace, as bwrap does in its own."""
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0)))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


def _init(libc, uid: int, limits: Limits, fds: list[int], keeper_alive: int) -> None:
    """Pid 1 of the submission's pid namespace, root, no learner code: fresh scratch folders (the read-only
    binds that lay below them, such as a virtual environment under /tmp, bound again on top), its own /proc
    and cgroups; then fork the submission's process, reap every orphan, and exit with the submission's status
    (the kernel then ends whatever else is left in the namespace)."""
    job_fd, result_fd, inputs_fd, out_fd, *cgroup_fds = fds
    try:
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "parent-death signal")
        if select.select([keeper_alive], [], [], 0)[0]:  # the keeper died before the line above took effect
            os._exit(EXIT_SETUP_FAILED)
        with contextlib.suppress(OSError):  # without CAP_NET_ADMIN (see sandbox.can_bring_up_loopback): lo stays down
            _loopback_up()
        socket.sethostname("sandbox")
        below = [(point, os.open(point, os.O_PATH | os.O_CLOEXEC)) for point in _mounts_below(SCRATCH)]
        for scratch in SCRATCH:
            _check(libc.mount(b"tmpfs", scratch.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                              f"size={limits.scratch_bytes},mode=1777".encode()), f"mount tmpfs {scratch}")
        for point, fd in below:  # folders made here belong to root, mode 0755, as bwrap makes them
            source = f"/proc/self/fd/{fd}"
            if os.path.isdir(source):
                os.makedirs(point, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(point), exist_ok=True)
                os.close(os.open(point, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            _check(libc.mount(source.encode(), point.encode(), None, MS_BIND, None), f"bind {point}")
            _check(libc.mount(None, point.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV,
                              None), f"read-only {point}")
            os.close(fd)
        _check(libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount proc")
        for fd in cgroup_fds:
            os.write(fd, str(os.getpid()).encode())
        libc.unshare(CLONE_NEWCGROUP)  # hides the host's cgroup paths (as bwrap's --unshare-cgroup-try)
        submission = os.fork()
        if submission == 0:
            _become_submission(libc, uid, limits, job_fd, result_fd, inputs_fd, out_fd)
        _close_fds_except(set())  # hold nothing open: the grader sees EOF when the child ends
        while True:
            pid, status = os.wait()
            if pid == submission:
                os._exit(_exit_status(status))
    except BaseException as e:  # noqa: BLE001
        with contextlib.suppress(BaseException):
            os.write(out_fd, f"sandbox setup failed: {type(e).__name__}: {e}\n".encode())
        os._exit(EXIT_SETUP_FAILED)


def _become_submission(libc, uid: int, limits: Limits, job_fd: int, result_fd: int, inputs_fd: int,
                       out_fd: int) -> None:
    """The submission's process (pid 2 of its namespace): its fds, limits and session; then ``uid`` with no
    capabilities, checked; then the child's work."""
    try:
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        _close_fds_except({0, 1, 2, job_fd, result_fd, inputs_fd})
        apply_rlimits(limits)
        os.setsid()
        os.chdir("/tmp")
        for cap in range(64):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:  # EINVAL: no such cap
                _check(-1, f"drop capability {cap} from the bounding set")
        _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # permitted and effective capabilities go with root
        _clear_inheritable(libc)
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        _check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")  # as a freshly exec'd process is
        _verify(uid)
        import random

        import numpy
        import torch

        random.seed()  # fresh seeds, as a freshly started process has
        numpy.random.seed()
        torch.seed()
    except BaseException as e:  # noqa: BLE001
        with contextlib.suppress(BaseException):
            os.write(2, f"sandbox setup failed: {type(e).__name__}: {e}\n".encode())
        os._exit(EXIT_SETUP_FAILED)
    from . import child

    sys.argv = [child.__file__, str(job_fd), str(result_fd), str(inputs_fd)]  # as `python -m ...child` has it
    try:
        child.main(job_fd, result_fd, inputs_fd)
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        child.finish(1)
    child.finish(0)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _clear_inheritable(libc) -> None:
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3, all zero
    _check(libc.capset(ctypes.byref(header), data), "capset")


def _verify(uid: int) -> None:
    """Refuse to go on unless the kernel says: this uid everywhere, no capability in any set, no_new_privs,
    a seccomp filter."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    problems = [k for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb") if int(status.get(k, "1"), 16) != 0]
    for k in ("Uid", "Gid"):
        if set(status.get(k, "").split()) != {str(uid)}:
            problems.append(k)
    if status.get("NoNewPrivs", "").strip() != "1":
        problems.append("NoNewPrivs")
    if status.get("Seccomp", "").strip() != "2":
        problems.append("Seccomp")
    if status.get("Groups", "").strip():
        problems.append("Groups")
    if problems:
        raise PermissionError(f"the submission's process kept privileges: {', '.join(problems)}")


# ----- the grader's side -------------------------------------------------------------------------------------
class TemplateLost(Exception):
    """The template stopped answering (a grader failure, never the learner's)."""


class ForkServer:
    """One worker's template: start it, ask it for children, end it."""

    def __init__(self, uid: int, package: Path | None, limits: Limits, hide: list[Path]) -> None:
        self.key = _server_key(package, limits, hide)
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.exits: dict[int, int] = {}
        self.replies: list[dict] = []
        self.seq = 0  # each spawn request's number, echoed by its reply (a late reply is never taken for another)
        self.lost = False
        self.cond = threading.Condition()
        self.log = tempfile.TemporaryFile()
        seccomp_fd = _sealed(seccomp_program())
        command = [sys.executable, "-m", "tinyinterp.grading.forkserver", str(theirs.fileno()), str(uid),
                   json.dumps(asdict(limits))]
        try:
            argv = sandbox_argv(uid, package, hide, limits, command, seccomp_fd=seccomp_fd, as_template=True)
            self.proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(), seccomp_fd), stdin=subprocess.DEVNULL,
                                         stdout=self.log, stderr=self.log, env=scrubbed_env(Path("/tmp")), cwd="/",
                                         close_fds=True, start_new_session=True)
        finally:
            os.close(seccomp_fd)
            theirs.close()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            ready = self._reply(READY_TIMEOUT_S)
        except TemplateLost:
            ready = None
        if ready is None or ready.get("event") != "ready":
            why = self.log_tail()
            self.close()
            raise SandboxUnavailable(f"the pre-warmed sandbox template did not start: {why}")

    def log_tail(self, n: int = 300) -> str:
        with contextlib.suppress(OSError, ValueError):
            self.log.seek(0)
            text = self.log.read().decode("utf-8", "replace").strip()
            return (text.splitlines() or ["no output"])[-1][:n]
        return "no output"

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                data = b""
            with self.cond:
                if not data:
                    self.lost = True
                    self.cond.notify_all()
                    return
                msg = json.loads(data)
                if msg.get("event") == "exit":
                    self.exits[msg["pid"]] = msg["code"]
                else:
                    self.replies.append(msg)
                self.cond.notify_all()

    def _reply(self, timeout: float, seq: int | None = None) -> dict:
        """The next reply (to request ``seq``; older replies are dropped). No reply in time: the template is
        given up (marked lost and killed), so the next child starts from a new one."""
        def ready() -> bool:
            while seq is not None and self.replies and self.replies[0].get("seq") != seq:
                self.replies.pop(0)
            return bool(self.replies) or self.lost

        with self.cond:
            if not self.cond.wait_for(ready, timeout) or not self.replies:
                self.give_up()
                raise TemplateLost(f"the sandbox template stopped answering ({self.log_tail()})")
            return self.replies.pop(0)

    def spawn(self, job_fd: int, result_fd: int, inputs_fd: int, out_fd: int, cgroup_fds: list[int]) -> "TemplateChild":
        self.seq += 1
        try:
            socket.send_fds(self.sock, [json.dumps({"op": "spawn", "seq": self.seq}).encode()],
                            [job_fd, result_fd, inputs_fd, out_fd, *cgroup_fds])
        except OSError as e:
            self.lost = True
            raise TemplateLost(f"the sandbox template cannot be reached ({e})") from None
        reply = self._reply(REPLY_TIMEOUT_S, self.seq)
        if reply.get("event") != "spawned":
            raise TemplateLost(f"the sandbox template could not start a child: {reply.get('message')}")
        return TemplateChild(self, reply["pid"])

    def give_up(self) -> None:
        """A template that stopped answering: end it (its children end with it); the next child asks for a
        new one."""
        self.lost = True
        with contextlib.suppress(OSError):
            self.proc.kill()

    def alive(self) -> bool:
        return not self.lost and self.proc.poll() is None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        self.log.close()


class TemplateChild:
    """A child of the template, as much of :class:`subprocess.Popen` as :mod:`.launch` uses. Its exit status
    is its keeper's: the child's own, or 128 + the signal that ended it (as bwrap reports it)."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server, self.pid, self.returncode = server, pid, None

    @property
    def template_lost(self) -> bool:
        return self.server.lost and self.pid not in self.server.exits

    def poll(self) -> int | None:
        with self.server.cond:
            if self.pid in self.server.exits:
                self.returncode = self.server.exits.pop(self.pid)
            elif self.server.lost and self.returncode is None:
                self.returncode = 128 + signal.SIGKILL
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.server.sock.send(json.dumps({"op": "kill", "pid": self.pid}).encode())

    def wait(self, timeout: float | None = REPLY_TIMEOUT_S) -> int:
        if self.poll() is not None:
            return self.returncode
        deadline = time.monotonic() + (timeout if timeout is not None else REPLY_TIMEOUT_S)
        with self.server.cond:
            self.server.cond.wait_for(lambda: self.pid in self.server.exits or self.server.lost,
                                      max(0.0, deadline - time.monotonic()))
        if self.poll() is None:
            self.server.give_up()
            self.poll()
        return self.returncode


def _sealed(data: bytes) -> int:
    from .launch import sealed_fd

    return sealed_fd(data, "seccomp")


# ----- one template per worker uid, for the grading run --------------------------------------------------
_servers: dict[int, ForkServer] = {}
_lock = threading.Lock()
problem: str | None = None  # why the template is not used in this process (None while it is, or untried)


_starter: "queue.Queue | None" = None


def _server_key(package: Path | None, limits: Limits, hide: list[Path]) -> tuple:
    """What a template was started with: one started otherwise is not reused."""
    return package, json.dumps(asdict(limits)), tuple(hide)


def _start(uid: int, package: Path | None, limits: Limits, hide: list[Path]) -> ForkServer:
    """Start a template from one thread that lives as long as this process: bwrap's --die-with-parent ends
    the sandbox when the *thread* that started it ends, and a grading worker's thread may end first."""
    global _starter
    if _starter is None:
        _starter = queue.Queue()

        def run(requests: queue.Queue) -> None:
            while True:
                args, box, done = requests.get()
                try:
                    box.append(ForkServer(*args))
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    box.append(e)
                done.set()

        threading.Thread(target=run, args=(_starter,), daemon=True, name="tinyinterp-template-starter").start()
    box: list = []
    done = threading.Event()
    _starter.put(((uid, package, limits, hide), box, done))
    done.wait()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def template_for(uid: int, package: Path | None, limits: Limits, hide: list[Path]) -> ForkServer | None:
    """The running template of ``uid`` (started on first use), or None when templates are off or cannot
    start here (:data:`problem` says why; the caller then starts a sandbox per child)."""
    global problem
    if not enabled() or problem is not None:
        return None
    with _lock:
        server = _servers.get(uid)
        if server is not None and (server.key != _server_key(package, limits, hide) or not server.alive()):
            server.close()
            del _servers[uid]
            server = None
        if server is None:
            try:
                server = _servers[uid] = _start(uid, package, limits, hide)
            except (SandboxUnavailable, OSError) as e:
                problem = str(e)[:400]
                return None
        return server


def retire(why: str) -> None:
    """Stop using templates in this process (a fork could not set up its sandbox: every child starts from
    scratch from now on, and the run says why)."""
    global problem
    problem = why[:400]  # the templates still running end with the batch (close_all)


def close_all() -> None:
    with _lock:
        for server in _servers.values():
            server.close()
        _servers.clear()


if __name__ == "__main__":  # run as the package's module, not as a second copy named __main__
    from tinyinterp.grading import forkserver as _module

    _module.serve(int(sys.argv[1]), int(sys.argv[2]), Limits(**json.loads(sys.argv[3])))
