"""Process isolation for learner code.

As root (how CI and most grading servers run) each child gets: a new network namespace (no
network), a new mount namespace in which the grader's output folders are hidden under empty tmpfs
and root's home is hidden (only the Python installation and the trained-model cache are bound
back), an unprivileged uid of its own per worker (so it can write none of the grader's files, and
its process limit is its own), resource limits (address space, processes, file size, CPU time), a scrubbed environment and a
temporary working directory. As another user, namespaces and the uid switch are unavailable; the
child still gets the limits, the environment and the directory, and :func:`isolation_summary` says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import resource
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_BIND, MS_REC, MS_PRIVATE, MS_MOVE = 4096, 0x4000, 1 << 18, 8192
BASE_UID = 61000


@dataclass
class Limits:
    memory_bytes: int = 4 * 2**30
    max_processes: int = 64
    max_file_bytes: int = 256 * 2**20
    cpu_seconds: int = 900


@dataclass
class SandboxSpec:
    workdir: Path
    uid: int | None  # None: keep the current user
    hide: list[Path] = field(default_factory=list)  # folders the child must not see
    limits: Limits = field(default_factory=Limits)


def can_isolate() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and sys.platform.startswith("linux")


def isolation_summary(limits: Limits) -> str:
    base = (f"limits: {limits.memory_bytes / 2**30:g} GiB address space, {limits.max_processes} processes, "
            f"{limits.max_file_bytes / 2**20:g} MiB per file; scrubbed environment; temporary working folder")
    if can_isolate():
        return ("isolation: own network namespace (no network), own mount namespace (grader output hidden), "
                "unprivileged uid per worker; " + base)
    return ("isolation: NOT root, so no network/mount namespaces and no uid switch (learner code runs as you; "
            "run as root, e.g. in a container, for full isolation); " + base)


@contextlib.contextmanager
def private_uids(n: int):
    """``n`` sandbox uids that no other grading process on this machine holds (``None`` each when not
    root). A uid is held by an exclusive lock until the block ends: :func:`kill_everything` kills every
    process of its uid, so two concurrent grading runs must never share one."""
    if not can_isolate():
        yield [None] * n
        return
    locks = Path(tempfile.gettempdir()) / "tinyinterp-sandbox-uids"
    locks.mkdir(mode=0o700, exist_ok=True)
    held: list[tuple[int, object]] = []
    try:
        for uid in range(BASE_UID, BASE_UID + 4096):
            if len(held) == n:
                break
            f = open(locks / f"{uid}.lock", "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            held.append((uid, f))
        if len(held) < n:
            raise RuntimeError(f"no free sandbox uid in {BASE_UID}..{BASE_UID + 4095}")
        yield [uid for uid, _ in held]
    finally:
        for _, f in held:
            f.close()


def make_workdir(uid: int | None) -> Path:
    d = Path(tempfile.mkdtemp(prefix="tinyinterp-grade-"))
    if uid is not None:
        os.chown(d, uid, uid)
    d.chmod(0o700)
    return d


def remove_workdir(d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)


def scrubbed_env(workdir: Path) -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(workdir),
    }
    cache = model_cache()
    if cache is not None:  # read-only access to trained models (the child does not train them again)
        env["TINYINTERP_CACHE"] = str(cache)
    if "TINYINTERP_SEED_OFFSET" in os.environ:  # part of the cache key
        env["TINYINTERP_SEED_OFFSET"] = os.environ["TINYINTERP_SEED_OFFSET"]
    return env


def model_cache() -> Path | None:
    """The model cache the child should read: ``$TINYINTERP_CACHE``, else the default one if it exists."""
    if "TINYINTERP_CACHE" in os.environ:  # absolute: the child runs in another folder
        return Path(os.path.abspath(os.environ["TINYINTERP_CACHE"]))
    from ..checkpoint import cache_dir

    d = cache_dir()
    return Path(os.path.realpath(d)) if d.is_dir() else None


def preexec(spec: SandboxSpec):
    """The function run in the forked child before exec (must not allocate much or use threads)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    cache = model_cache()
    keep = _interpreter_roots() + ([Path(os.path.realpath(cache))] if cache is not None and cache.is_dir() else [])

    def check(rc: int, what: str) -> None:
        if rc != 0:
            raise OSError(ctypes.get_errno(), f"sandbox: {what} failed")

    def run() -> None:
        os.setsid()
        if spec.uid is not None:
            check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET), "unshare")
            check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
            for d in spec.hide:
                if d.is_dir():
                    check(libc.mount(b"tmpfs", str(d).encode(), b"tmpfs", 0, b"size=1m,mode=555"), f"hiding {d}")
            _hide_home_but_keep(libc, check, keep, spec.workdir)
        lim = spec.limits
        resource.setrlimit(resource.RLIMIT_AS, (lim.memory_bytes, lim.memory_bytes))
        resource.setrlimit(resource.RLIMIT_NPROC, (lim.max_processes, lim.max_processes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim.max_file_bytes, lim.max_file_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_seconds, lim.cpu_seconds))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if spec.uid is not None:
            os.setgroups([])
            os.setgid(spec.uid)
            os.setuid(spec.uid)
        os.chdir(spec.workdir)

    return run


def _interpreter_roots() -> list[Path]:
    """Folders the child's Python needs that may sit under an unreadable home (e.g. pyenv in /root)."""
    paths = {Path(os.path.realpath(sys.executable)).parent.parent, Path(os.path.realpath(sys.base_prefix)),
             Path(os.path.realpath(sys.prefix))}
    return sorted(paths)


def _hide_home_but_keep(libc, check, keep: list[Path], workdir: Path) -> None:
    home = Path("/root")
    inside = [p for p in keep if home in p.parents]
    inside = [p for p in inside if not any(q in p.parents for q in inside)]  # a folder inside another: once
    if not home.is_dir():
        return
    stage = workdir / ".stage"
    staged = []
    for i, p in enumerate(inside):
        s = stage / str(i)
        s.mkdir(parents=True, exist_ok=True)
        check(libc.mount(str(p).encode(), str(s).encode(), None, MS_BIND | MS_REC, None), f"binding {p}")
        staged.append((s, p))
    check(libc.mount(b"tmpfs", str(home).encode(), b"tmpfs", 0, b"size=1m,mode=755"), "hiding /root")
    for s, p in staged:
        p.mkdir(parents=True, exist_ok=True)
        check(libc.mount(str(s).encode(), str(p).encode(), None, MS_MOVE, None), f"restoring {p}")


def kill_everything(pgid: int, uid: int | None) -> None:
    """Kill the child's process group and, with a private uid, every process of that uid."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is None:
        return
    pid = os.fork()
    if pid == 0:  # become the uid and kill(-1): reaches exactly that uid's processes
        try:
            os.setuid(uid)
            for _ in range(3):
                os.kill(-1, signal.SIGKILL)
        except Exception:
            pass
        os._exit(0)
    os.waitpid(pid, 0)
