"""Start one grading child and end all of it: in the bubblewrap sandbox (:mod:`.sandbox`) as a uid of
its own, or unsandboxed as this user with the resource limits only. The job and the inputs go in through
file descriptors, stdout and stderr come back through a pipe; the grader never opens a path the child
could write.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import forkserver
from .cgroups import ChildCgroups
from .sandbox import Limits, apply_rlimits, kill_uid, sandbox_argv, scrubbed_env, seccomp_program

OUTPUT_TAIL_BYTES = 64 * 2**10  # of the child's stdout+stderr, kept for error messages; the rest is dropped


def sealed_fd(data: bytes, name: str) -> int:
    """A read-only-in-practice fd holding ``data`` (a sealed memfd; an unlinked temporary file elsewhere),
    positioned at 0. The child reads it; the grader never reads anything back from it."""
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 2))
    except (AttributeError, OSError):  # not Linux
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    _write_all(fd, data)
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_SEAL)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@dataclass
class ChildProcess:
    """A started child: the process (bwrap outside, or python), how to end all of it, and its output."""

    proc: subprocess.Popen
    uid: int | None
    cgroup: ChildCgroups | None
    workdir: Path | None
    _tail: bytearray = field(default_factory=bytearray)
    _stop: threading.Event = field(default_factory=threading.Event)
    _reader: threading.Thread | None = None
    output_bytes: int = 0

    @property
    def returncode(self) -> int | None:
        """Like Popen's: negative for a signal (bwrap reports a command killed by signal N as 128 + N)."""
        rc = self.proc.returncode
        if rc is not None and self.uid is not None and 128 < rc <= 128 + 64:
            return -(rc - 128)
        return rc

    def output_tail(self, n: int = 2000) -> str:
        return bytes(self._tail[-n:]).decode("utf-8", "replace")

    def out_of_memory(self) -> bool:
        """Killed by its cgroup's OOM killer; without a cgroup, died of SIGKILL right after printing a
        MemoryError (a guess the learner's output can sway, so the cgroup decides whenever there is one)."""
        if self.cgroup is not None and "memory" in self.cgroup.dirs:
            return self.cgroup.oom_killed()
        return self.returncode == -signal.SIGKILL and "MemoryError" in self.output_tail(OUTPUT_TAIL_BYTES)

    def kill(self) -> None:
        """End the child and everything it started: the namespace's init (so the kernel kills the rest), the
        cgroup's processes, every process of the uid; outside the sandbox, the process group."""
        with contextlib.suppress(OSError):
            if self.uid is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
        if self.cgroup is not None:
            self.cgroup.kill()
        if self.uid is not None:
            kill_uid(self.uid)
        self.proc.wait()

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.cgroup is not None:
            self.cgroup.remove()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)  # fd-based: safe against symlinks planted in it

    def reading(self, fd: int) -> "ChildProcess":
        """Start collecting the child's stdout and stderr from ``fd`` (this child's to close)."""
        self._reader = threading.Thread(target=self._collect, args=(fd,), daemon=True)
        self._reader.start()
        return self

    def _collect(self, fd: int) -> None:
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready:
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return
                self.output_bytes += len(chunk)
                self._tail += chunk
                del self._tail[:-OUTPUT_TAIL_BYTES]
        finally:
            os.close(fd)


def start_child(module_args: list[str], *, uid: int | None, package: Path | None, limits: Limits,
                hide: list[Path], pass_fds: tuple[int, ...]) -> ChildProcess:
    """Start ``python -m tinyinterp.grading.child MODULE_ARGS`` with the graded ``package``: in the sandbox
    as ``uid``, or (``uid=None``) unsandboxed as this user with the resource limits only. The child's
    stdout and stderr go to a pipe read here (the last :data:`OUTPUT_TAIL_BYTES` kept); it gets ``pass_fds``
    and nothing else of this process."""
    if uid is not None:
        server = forkserver.template_for(uid, package, limits, hide)
        if server is not None:
            try:
                return _start_from_template(server, [int(a) for a in module_args], uid, limits)
            except forkserver.TemplateLost:
                pass  # this child starts a sandbox of its own; the next asks for a new template
    command = [sys.executable, "-m", "tinyinterp.grading.child", *module_args]
    out_r, out_w = os.pipe()
    cgroup = workdir = None
    own_fds: list[int] = []  # the seccomp program and the cgroup.procs files: closed here once it started
    try:
        if uid is not None:
            own_fds.append(sealed_fd(seccomp_program(), "seccomp"))
            argv = sandbox_argv(uid, package, hide, limits, command, seccomp_fd=own_fds[0])
            env, cwd = scrubbed_env(Path("/tmp")), "/"
            pass_fds = (*pass_fds, own_fds[0])
            cgroup = ChildCgroups.create(uid, limits.memory_bytes, limits.max_processes)
        else:
            workdir = Path(tempfile.mkdtemp(prefix="tinyinterp-child-"))
            argv, env, cwd = command, scrubbed_env(workdir), str(workdir)
            if package is not None:  # first on the path (a convenience, not a boundary: see the guide)
                env["PYTHONPATH"] = str(package.parent)
        procs_fds = cgroup.procs_fds() if cgroup is not None else []
        own_fds += procs_fds
        proc = subprocess.Popen(argv, pass_fds=pass_fds, stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w,
                                env=env, cwd=cwd, close_fds=True, start_new_session=True,
                                preexec_fn=_preexec(limits, procs_fds))
    except BaseException:
        os.close(out_r)
        os.close(out_w)
        for fd in own_fds:
            os.close(fd)
        if cgroup is not None:
            cgroup.remove()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    os.close(out_w)
    for fd in own_fds:
        os.close(fd)
    return ChildProcess(proc, uid, cgroup, workdir).reading(out_r)


def _start_from_template(server, job_fds: list[int], uid: int, limits: Limits) -> ChildProcess:
    """The child forked by the worker's pre-warmed template (:mod:`.forkserver`), with its own cgroups."""
    out_r, out_w = os.pipe()
    cgroup = ChildCgroups.create(uid, limits.memory_bytes, limits.max_processes)
    procs_fds: list[int] = []
    try:
        procs_fds = cgroup.procs_fds() if cgroup is not None else []
        proc = server.spawn(*job_fds, out_w, procs_fds)
    except BaseException:
        os.close(out_r)
        if cgroup is not None:
            cgroup.remove()
        raise
    finally:
        os.close(out_w)
        for fd in procs_fds:
            os.close(fd)
    return ChildProcess(proc, uid, cgroup, None).reading(out_r)


def _preexec(limits: Limits, cgroup_procs_fds: list[int]):
    """Run in the forked launcher before it execs (bwrap, or python): join the cgroups, set the limits.
    Only async-signal-safe work: no allocation-heavy code, no locks."""
    def run() -> None:
        for fd in cgroup_procs_fds:
            os.write(fd, str(os.getpid()).encode())
        apply_rlimits(limits)

    return run
