"""Process isolation for learner code, on bubblewrap (``bwrap``, an audited, widely used sandbox).

As root with ``bwrap`` installed, each child process of ``tinyinterp grade`` runs as::

    bwrap --unshare-pid --unshare-net --unshare-ipc --unshare-uts --unshare-cgroup-try
          --die-with-parent --new-session --cap-drop ALL (+ SETUID/SETGID/SETPCAP, for setpriv only)
          --seccomp FD (see below)
          --proc /proc --dev /dev <fresh tmpfs: /tmp, /var/tmp, /dev/shm> <read-only binds: /usr, the
          Python installation, the venv's site-packages, the graded copy of the package over every place
          the package lives (:mod:`.graded_copy`), the model cache> --
    setpriv --reuid=UID --regid=UID --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs --
    python -m tinyinterp.grading.child ...

- No user namespace: bwrap's ``--unshare-all`` with ``--uid`` run as root maps the sandbox's uid to the
  host's root (files owned by root stay readable). Here the process really is an unprivileged ``UID`` on
  the host, one no other grading run and no account holds (:func:`private_uids`), with no capabilities.
- A new pid namespace: when the child ends or is killed, the namespace's init (bwrap) dies and the kernel
  kills everything the learner started (double-forked daemons included); the child's cgroups, where the
  host allows them (:mod:`.cgroups`: memory, an equal CPU weight, a pids limit), and a kill of every
  process of ``UID`` are the fallbacks.
- A seccomp filter (built with libseccomp, through the ``pyseccomp`` binding: the ``grade`` extra) makes
  the system calls of :data:`DENIED_SYSCALLS` fail with EPERM, the kernel keyring first: keys belong to a
  uid and outlive the process, so one submission could leave data there for the next one graded as the
  same uid.
- A new network namespace (no interfaces: no TCP, no abstract unix sockets of the host), and only the
  bound paths exist: no submissions, no gradebook/feedback/state folders, no book root or ``.git``, no
  ``/root``, no ``/run`` or ``/var/run`` sockets. :func:`check_hidden` refuses a bind that would expose a
  folder the grading run names as hidden.

Without root, or without bwrap, :func:`sandbox_problem` says why; ``tinyinterp grade`` then refuses unless
``--unsafe-no-sandbox`` is given, and ``tinyinterp check`` (the learner's own code, on their machine) runs
unsandboxed with the resource limits only (:func:`.launch.start_child` with ``uid=None``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .cgroups import ChildCgroups

BASE_UID, N_UIDS = 61000, 4096
PROBE_UID = BASE_UID + N_UIDS  # never allocated: only the availability probe (no learner code) runs as it
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Limits:
    memory_bytes: int = 4 * 2**30
    max_processes: int = 64
    max_file_bytes: int = 256 * 2**20
    cpu_seconds: int = 900
    scratch_bytes: int = 256 * 2**20  # each of the sandbox's tmpfs: /tmp, /var/tmp, /dev/shm


def apply_rlimits(lim: Limits) -> None:
    """The child's resource limits, set on the calling process (before it execs, or before it drops to the
    child's uid). Only async-signal-safe work: it also runs between fork and exec."""
    resource.setrlimit(resource.RLIMIT_AS, (lim.memory_bytes, lim.memory_bytes))
    resource.setrlimit(resource.RLIMIT_NPROC, (lim.max_processes, lim.max_processes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim.max_file_bytes, lim.max_file_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_seconds, lim.cpu_seconds))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class SandboxUnavailable(Exception):
    """The sandbox cannot be set up here (the message says why, in one line)."""


# ----- where this machine's grading runs keep their locks and graded copies ---------------------------
def state_root() -> Path:
    """A folder only this user can write (created 0700; refused if someone else made it first)."""
    root = Path(tempfile.gettempdir()) / f"tinyinterp-grader-{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o700)
    st = os.lstat(root)
    if not os.path.isdir(root) or os.path.islink(root) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise SandboxUnavailable(f"{root} is not a private folder of this user (owner {st.st_uid}, mode "
                                 f"{oct(st.st_mode & 0o777)}); remove it")
    return root


def _private_dir(path: Path) -> Path:
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    if os.path.islink(path) or not path.is_dir():
        raise SandboxUnavailable(f"{path} is not a folder")
    return path


# ----- the seccomp filter ---------------------------------------------------------------------------------
# System calls the sandboxed child may not make: each fails with EPERM, as under Docker's default profile.
# Python, numpy and torch on the CPU need none of them. Threads, processes and namespaces are left alone.
DENIED_SYSCALLS = {
    # the kernel keyring: a key is kept per uid (and the session keyring is the grader's, inherited), so one
    # submission could leave data there for the next one graded as the same uid
    "add_key": "keyring", "request_key": "keyring", "keyctl": "keyring",
    "bpf": "eBPF programs and maps: a large kernel attack surface",
    "perf_event_open": "performance counters: kernel attack surface, and timing side channels",
    "userfaultfd": "pauses the kernel mid-copy at a page fault, the usual lever of kernel exploits",
    # io_uring: a large kernel attack surface (Docker denies it too), and its requests bypass seccomp
    "io_uring_setup": "io_uring", "io_uring_enter": "io_uring", "io_uring_register": "io_uring",
    # load a new kernel: needs CAP_SYS_BOOT, which the child lacks anyway (defence in depth)
    "kexec_load": "kexec", "kexec_file_load": "kexec",
}


CLONE_NEWUSER = 0x10000000
# A new user namespace gives its creator every capability inside it, the usual first step of a kernel exploit
# (nf_tables, ...): `unshare` and `clone` with CLONE_NEWUSER fail with EPERM (the flags are the first argument
# of both on x86-64 and arm64); `clone3`, whose flags a filter cannot see, fails with ENOSYS, so that the C
# library falls back to `clone` (as under Docker's default profile). Other namespaces stay allowed: the
# sandbox's template needs them, and without privileges no one else can make them.


@functools.lru_cache(maxsize=None)
def seccomp_program() -> bytes:
    """The compiled BPF program bwrap installs before it starts the child (``bwrap --seccomp FD``): allow
    everything but :data:`DENIED_SYSCALLS`; a system call of another ABI (32-bit ``int 0x80``, x32) ends
    the process, so the filter cannot be bypassed through one."""
    try:
        import pyseccomp
    except ImportError:
        raise SandboxUnavailable("the Python package pyseccomp is not installed (it builds the sandbox's seccomp "
                                 "filter: pip install 'tinyinterp[grade]', or `make setup`)") from None
    except (RuntimeError, OSError) as e:  # the binding loads libseccomp when imported
        raise SandboxUnavailable(f"libseccomp is missing (Debian/Ubuntu: apt-get install libseccomp2): {e}") from None
    try:
        f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        f.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
        for name in DENIED_SYSCALLS:
            f.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
        new_user = pyseccomp.Arg(0, pyseccomp.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)
        f.add_rule(pyseccomp.ERRNO(errno.EPERM), "unshare", new_user)
        f.add_rule(pyseccomp.ERRNO(errno.EPERM), "clone", new_user)
        f.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
        with tempfile.TemporaryFile() as out:
            f.export_bpf(out)
            out.seek(0)
            return out.read()
    except (OSError, RuntimeError, ValueError) as e:
        raise SandboxUnavailable(f"libseccomp cannot build the seccomp filter ({type(e).__name__}: {e})") from None


# ----- availability ---------------------------------------------------------------------------------------
def _tool(name: str) -> str | None:
    return shutil.which(name, path=SAFE_PATH)


@functools.lru_cache(maxsize=None)
def sandbox_problem() -> str | None:
    """Why grading cannot run in the sandbox here (one line), or None when it can. Cached per process."""
    if not sys.platform.startswith("linux"):
        return "the sandbox (bubblewrap) needs Linux"
    if os.geteuid() != 0:
        return "not running as root (the sandbox runs each submission as a uid of its own, which needs root)"
    if _tool("bwrap") is None:
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap, or `make sandbox-deps`)"
    if _tool("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    try:
        seccomp_program()
    except SandboxUnavailable as e:
        return str(e)
    # the probe (no learner code) prints its uid, and what a denied system call (keyctl) returns
    probe = ("import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
             f"r = libc.syscall({_syscall_number('keyctl')}, 0, ctypes.c_long(-4), 0); "
             "print(os.getuid(), r, ctypes.get_errno())")
    try:
        p = run_sandboxed(PROBE_UID, [sys.executable, "-S", "-c", probe], timeout=60)
    except (SandboxUnavailable, OSError, subprocess.SubprocessError) as e:
        return f"the sandbox cannot be set up ({type(e).__name__}: {str(e)[:300]})"
    if p.returncode != 0 or not p.stdout.strip().startswith(f"{PROBE_UID} "):
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return f"bubblewrap cannot start a sandbox here (exit {p.returncode}: {last[:300]})"
    if p.stdout.split()[1:] != ["-1", str(errno.EPERM)]:
        return f"bubblewrap did not apply the seccomp filter (keyctl in the sandbox gave {p.stdout.strip()!r})"
    return None


def _syscall_number(name: str) -> int:
    import pyseccomp

    return pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)


def run_sandboxed(uid: int, command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``command`` (no learner code: the availability probe, and tests) in the sandbox as ``uid``, with
    the seccomp filter but without the grading child's cgroups and resource limits."""
    from .launch import sealed_fd

    fd = sealed_fd(seccomp_program(), "seccomp")
    try:
        argv = sandbox_argv(uid, None, [], Limits(), command, seccomp_fd=fd)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=scrubbed_env(Path("/tmp")),
                              stdin=subprocess.DEVNULL, pass_fds=(fd,))
    finally:
        os.close(fd)


def can_isolate() -> bool:
    return sandbox_problem() is None


def _templates_enabled() -> bool:
    from .forkserver import enabled  # imported here: forkserver builds on this module

    return enabled()


def isolation_summary(limits: Limits, sandboxed: bool, learner_own_code: bool = False) -> str:
    """One line: the isolation, and the memory, CPU and process limits this run uses."""
    cg = ChildCgroups.version() if sandboxed and ChildCgroups.available("memory") else None
    memory = (f"memory: {limits.memory_bytes / 2**30:g} GiB address space (RLIMIT_AS)"
              + (f" + cgroup {cg} memory limit {limits.memory_bytes / 2**30:g} GiB" if cg else
                 f" only (no cgroup: {ChildCgroups.problem('memory') if sandboxed else 'not used without the sandbox'})"))
    base = (f"{memory}; {limits.max_processes} processes (RLIMIT_NPROC), {limits.max_file_bytes / 2**20:g} MiB per "
            f"file, {limits.cpu_seconds} s CPU; scrubbed environment")
    if sandboxed:
        return ("isolation: bubblewrap sandbox (own pid/mount/network/ipc/uts namespaces, a uid of its own per "
                "worker and run, no capabilities, seccomp filter (no keyring, bpf, perf_event_open, userfaultfd, "
                "io_uring, kexec, user namespaces), read-only Python and package, fresh /tmp, /var/tmp, /dev/shm"
                + ("; each submission forked from a pre-warmed template into namespaces of its own"
                   if _templates_enabled() else "") + "); "
                + base + "; " + ChildCgroups.summary(limits.max_processes))
    if learner_own_code:
        return "isolation: none (your own notebook runs as you, unsandboxed); " + base
    return f"UNSAFE: no sandbox ({sandbox_problem() or '--unsafe-no-sandbox'}): learner code runs as you; " + base


# ----- uids ------------------------------------------------------------------------------------------------
def _live_uids() -> set[int]:
    """Every uid (real, effective, saved or filesystem) of a running process on this machine."""
    uids: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        uids.update(int(x) for x in line.split()[1:])
                        break
        except (OSError, ValueError):
            continue
    return uids


def _is_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _lock(path: Path) -> int | None:
    """An exclusive lock on ``path`` (the fd), or None if another process (or fd) holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


@contextlib.contextmanager
def private_uids(n: int):
    """``n`` sandbox uids for this grading run (``None`` each when the sandbox is unavailable). A uid is
    held by a lock until the block ends (a killed run's locks go with it), and is never handed out while
    any process has it or an account owns it; a dead run's leftover cgroup of that uid is removed first."""
    if not can_isolate():
        yield [None] * n
        return
    locks = _private_dir(state_root() / "uids")
    held: list[tuple[int, int]] = []
    try:
        live = _live_uids()
        for uid in range(BASE_UID, BASE_UID + N_UIDS):
            if len(held) == n:
                break
            if uid in live or _is_account(uid):
                continue
            fd = _lock(locks / f"{uid}.lock")
            if fd is None:
                continue
            if uid in _live_uids():  # something of a dead run still lives: never reuse its uid
                os.close(fd)
                continue
            ChildCgroups.remove_stale(uid)
            held.append((uid, fd))
        if len(held) < n:
            raise SandboxUnavailable(f"no free sandbox uid in {BASE_UID}..{BASE_UID + N_UIDS - 1}")
        ChildCgroups.remove_dead_runs(lambda uid: _lock(locks / f"{uid}.lock"))
        yield [uid for uid, _ in held]
    finally:
        for _, fd in held:
            os.close(fd)


def kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (a forked helper becomes that uid and calls kill(-1))."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(uid)
            os.setuid(uid)
            for _ in range(3):
                os.kill(-1, signal.SIGKILL)
        except BaseException:  # noqa: BLE001 - ESRCH when none is left
            pass
        os._exit(0)
    os.waitpid(pid, 0)


# ----- what the child may see ------------------------------------------------------------------------------
def model_cache() -> Path | None:
    """The model cache the child should read: ``$TINYINTERP_CACHE``, else the default one if it exists."""
    if "TINYINTERP_CACHE" in os.environ:  # absolute: the child runs in another folder
        return Path(os.path.abspath(os.environ["TINYINTERP_CACHE"]))
    from ..checkpoint import cache_dir

    d = cache_dir()
    return Path(os.path.realpath(d)) if d.is_dir() else None


def scrubbed_env(home: Path) -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home), "LANG": "C.UTF-8", "USER": "learner",
        "LOGNAME": "learner", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(home),
    }
    cache = model_cache()
    if cache is not None:  # read-only access to trained models (the child does not train them again)
        env["TINYINTERP_CACHE"] = str(cache)
    if "TINYINTERP_SEED_OFFSET" in os.environ:  # part of the cache key
        env["TINYINTERP_SEED_OFFSET"] = os.environ["TINYINTERP_SEED_OFFSET"]
    return env


@functools.lru_cache(maxsize=None)
def _python_path_entries() -> tuple[str, ...]:
    """``sys.path`` of a fresh interpreter as the child starts it (site-packages and .pth entries)."""
    p = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path))"], cwd="/",
                       env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1"},
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise SandboxUnavailable(f"cannot list the Python path: {p.stderr.strip()[-300:]}")
    return tuple(e for e in json.loads(p.stdout) if e and e != "/" and os.path.exists(e))


def package_locations() -> list[Path]:
    """Every place an import of ``tinyinterp`` could find the real package (where the sandbox mounts the
    graded copy instead)."""
    from .graded_copy import PACKAGE, installed_package_dir

    found = {installed_package_dir(), Path(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))}
    for entry in _python_path_entries():
        if (Path(entry) / PACKAGE).is_dir():
            found.add(Path(entry) / PACKAGE)
    return sorted(found)


def _outermost(paths) -> list[Path]:
    kept: list[Path] = []
    for p in sorted(set(paths), key=lambda p: (len(p.parts), str(p))):
        if not any(p == q or q in p.parents for q in kept):
            kept.append(p)
    return kept


def read_only_roots() -> list[Path]:
    """The host paths the child sees read-only (besides the graded package and the model cache)."""
    roots = {Path("/usr"), Path(sys.base_prefix), Path(sys.base_exec_prefix),
             Path(os.path.realpath(sys.base_prefix)), Path(os.path.realpath(sys.base_exec_prefix))}
    if sys.prefix != sys.base_prefix:  # a venv: its interpreter links and config, not the rest of it
        roots |= {Path(sys.prefix) / "bin", Path(sys.prefix) / "pyvenv.cfg"}
    packages = package_locations()
    for entry in map(Path, _python_path_entries()):
        if entry in {p.parent for p in packages} and entry.name not in ("site-packages", "dist-packages"):
            continue  # a source folder (editable install): only the package itself is mounted, as the copy
        roots.add(entry)
    return _outermost(p for p in roots if p.exists())


# Installed only as the tests' independent oracles (the dev extra) or their dependencies; each would do a
# Part V exercise's work (captum: integrated gradients; shap: Shapley values; scipy: Spearman; scikit-learn:
# weighted least squares), and an instructor who installs ``tinyinterp[grade]`` does not have them, so the
# child never sees them: each folder is covered by an empty, read-only tmpfs.
ORACLE_PACKAGES = ("captum", "shap", "scipy", "sklearn")


def oracle_package_dirs() -> list[Path]:
    """The folders of :data:`ORACLE_PACKAGES` on the child's Python path (none where they are not installed)."""
    found = set()
    for entry in _python_path_entries():
        for name in ORACLE_PACKAGES:
            if (Path(entry) / name / "__init__.py").is_file():
                found.add(Path(entry) / name)
    return sorted(found)


def check_hidden(binds: list[Path], hide: list[Path]) -> None:
    """Refuse to show the child a path that is, or contains, a folder the run must keep from it (compared
    as given and with symlinks resolved)."""
    for b in binds:
        for h in hide:
            for bb, hh in ((b, h), (Path(os.path.realpath(b)), Path(os.path.realpath(h)))):
                if bb == hh or bb in hh.parents:
                    raise SandboxUnavailable(f"the sandbox would need {b} (for Python or the model cache), which "
                                             f"contains {h}, a folder learner code must not see; keep them apart")


def preflight(hide: list[Path]) -> None:
    """Raise :class:`SandboxUnavailable` now if a child could not be sandboxed with these hidden folders."""
    cache = model_cache()
    check_hidden(read_only_roots() + ([cache] if cache is not None and cache.is_dir() else []), hide)


CAP_NET_ADMIN = 12


def can_bring_up_loopback() -> bool:
    """Whether this process may hand CAP_NET_ADMIN to the template (to bring up ``lo`` in each fork's network
    namespace, as bwrap does in its own); without it, forks keep ``lo`` down (stricter)."""
    try:
        bounding = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapBnd:"))
    except (OSError, StopIteration):
        return False
    return bool(int(bounding.split()[1], 16) >> CAP_NET_ADMIN & 1)


def sandbox_argv(uid: int, package: Path | None, hide: list[Path], limits: Limits, command: list[str], *,
                 seccomp_fd: int, as_template: bool = False) -> list[str]:
    """The full command line: bwrap, its mounts, setpriv to ``uid``, then ``command``. ``seccomp_fd`` holds
    :func:`seccomp_program` (bwrap reads it, at offset 0, and closes it; the caller passes it to bwrap).
    ``as_template``: for :mod:`.forkserver`'s template (trusted code only), which stays root with
    CAP_SYS_ADMIN too (to give each fork its own namespaces and mounts) and drops to ``uid`` in each fork."""
    args = [_tool("bwrap") or "bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            *([] if as_template else ["--unshare-cgroup-try"]),  # a fork joins its cgroups, then unshares
            "--die-with-parent", "--new-session", "--hostname", "sandbox",
            "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP",
            *(["--cap-add", "CAP_SYS_ADMIN"] if as_template else []),
            *(["--cap-add", "CAP_NET_ADMIN"] if as_template and can_bring_up_loopback() else []),
            "--seccomp", str(seccomp_fd)]
    made: set[Path] = set()
    bound: list[Path] = []

    def parents(target: Path) -> None:
        for d in reversed(target.parents[:-1]):  # outermost first, '/' excluded
            if d in made or any(d == b or b in d.parents for b in bound):
                continue
            args.extend(["--perms", "0755", "--dir", str(d)])
            made.add(d)

    # first the scratch folders, so that a bind below one of them (a venv under /tmp) lands on top of it
    args.extend(["--proc", "/proc", "--dev", "/dev"])
    bound += [Path("/proc"), Path("/dev")]
    for scratch in ("/tmp", "/var/tmp", "/dev/shm"):
        parents(Path(scratch))
        args.extend(["--perms", "1777", "--size", str(limits.scratch_bytes), "--tmpfs", scratch])
        made.add(Path(scratch))  # empty: folders for binds below it are made, with their parents
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = Path("/") / name
        if p.is_symlink():
            args.extend(["--symlink", os.readlink(p), str(p)])
        elif p.is_dir():
            args.extend(["--ro-bind", str(p), str(p)])
            bound.append(p)
    if Path("/etc/ld.so.cache").is_file():
        parents(Path("/etc/ld.so.cache"))
        args.extend(["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"])
    roots = read_only_roots()
    cache = model_cache()
    check_hidden(roots + ([cache] if cache is not None and cache.is_dir() else []), hide)
    for r in roots:
        parents(r)
        args.extend(["--ro-bind", str(r), str(r)])
        bound.append(r)
    for oracle in oracle_package_dirs():
        args.extend(["--perms", "0555", "--tmpfs", str(oracle), "--remount-ro", str(oracle)])
    if package is not None:
        for loc in package_locations():
            parents(loc)
            args.extend(["--ro-bind", str(package), str(loc)])
    if cache is not None and cache.is_dir():
        parents(cache)
        args.extend(["--ro-bind", str(cache), str(cache)])
    if as_template:
        args.extend(["--chdir", "/tmp", "--", *command])
        return args
    args.extend(["--chdir", "/tmp", "--", _tool("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={uid}",
                 "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *command])
    return args
