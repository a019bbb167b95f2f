"""The cgroups of one sandboxed child, where the host lets the grader create them (cgroup v1's per-controller
hierarchies ``/sys/fs/cgroup/<controller>``, or a unified v2 ``/sys/fs/cgroup``):

- **memory**: the child's processes and its tmpfs pages count against ``--memory-gb``, and the cgroup's OOM
  kill tells a memory bomb from a crash;
- **cpu**: the same weight for every child (a plain process's: ``cpu.shares`` 1024 in v1, ``cpu.weight``
  100 in v2), so a submission that forks busy loops, each in a session of its own (which escapes the
  scheduler's per-session autogroup), weighs no more than one process against the child graded beside it;
- **pids**: at most ``max_processes`` tasks (threads count) plus bwrap's own two, the bound ``RLIMIT_NPROC``
  sets per uid, here per child.

Each lives at ``<root of the controller>/tinyinterp-uid-<UID>`` (the uid is this run's alone, so the name is
too), directly under the root: under a common parent, all children together would weigh as one process.
A controller the host does not offer is left out, and :meth:`ChildCgroups.summary` says so; without a memory
cgroup, :mod:`.sandbox` relies on the address-space limit alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Callable

CONTROLLERS = ("memory", "cpu", "pids")
CPU_WEIGHT = {"v1": ("cpu.shares", "1024"), "v2": ("cpu.weight", "100")}  # a nice-0 process's, in each
BWRAP_TASKS = 2  # bwrap and the pid namespace's init, in the child's pids cgroup besides the learner's
PREFIX = "tinyinterp-uid-"


class ChildCgroups:
    """The cgroups of one child: ``dirs`` maps each controller used to its folder (in v1 one folder per
    hierarchy, in v2 the same folder for all)."""

    ROOT = Path("/sys/fs/cgroup")
    _detected: dict = {}  # controller -> (root of its hierarchy or None, why not or None); detected once

    # ----- what the host offers -----------------------------------------------------------------------
    @classmethod
    def version(cls) -> str:
        return "v2" if (cls.ROOT / "cgroup.controllers").exists() else "v1"

    @classmethod
    def _roots(cls) -> dict[str, tuple[Path | None, str | None]]:
        if not cls._detected:
            cls._detected.update(cls._detect())
        return cls._detected

    @classmethod
    def _detect(cls) -> dict[str, tuple[Path | None, str | None]]:
        if os.geteuid() != 0:
            return {c: (None, "not root") for c in CONTROLLERS}
        found = {}
        for c in CONTROLLERS:
            root, problem = cls._hierarchy(c)
            if root is not None:  # prove it: make a cgroup with this controller's setting, and remove it
                probe = root / f"{PREFIX}probe-{os.getpid()}"
                try:
                    probe.mkdir()
                    cls._configure(c, probe, memory_bytes=2**30, max_processes=64)
                except OSError as e:
                    root, problem = None, f"cannot create one here ({e.strerror or e})"
                finally:
                    with contextlib.suppress(OSError):
                        probe.rmdir()
            found[c] = (root, problem)
        return found

    @classmethod
    def _hierarchy(cls, controller: str) -> tuple[Path | None, str | None]:
        try:
            if cls.version() == "v1":
                root = cls.ROOT / controller
                if (root / "cgroup.procs").exists():
                    return root, None
                return None, f"no {controller} cgroup controller mounted"
            if controller not in (cls.ROOT / "cgroup.controllers").read_text().split():
                return None, f"no {controller} controller in cgroup v2"
            if controller not in (cls.ROOT / "cgroup.subtree_control").read_text().split():
                (cls.ROOT / "cgroup.subtree_control").write_text(f"+{controller}")
            return cls.ROOT, None
        except OSError as e:
            return None, f"cannot enable the {controller} controller ({e.strerror or e})"

    @classmethod
    def available(cls, controller: str) -> bool:
        return cls._roots()[controller][0] is not None

    @classmethod
    def problem(cls, controller: str) -> str | None:
        return cls._roots()[controller][1]

    @classmethod
    def summary(cls, max_processes: int) -> str:
        """What the children's cgroups limit, for the run's summary line (the memory limit is said with the
        address-space limit, by the caller)."""
        v = cls.version()
        cpu = (f"cgroup {v} CPU weight per child ({'='.join(CPU_WEIGHT[v])}, equal for all)" if cls.available("cpu")
               else f"no CPU cgroup ({cls.problem('cpu')}): a child's processes in new sessions outweigh others")
        pids = (f"cgroup {v} pids.max {max_processes + BWRAP_TASKS}" if cls.available("pids")
                else f"no pids cgroup ({cls.problem('pids')})")
        return f"{cpu}; {pids}"

    # ----- one child's ----------------------------------------------------------------------------------
    @classmethod
    def paths_for(cls, uid: int | str) -> dict[str, Path]:
        return {c: root / f"{PREFIX}{uid}" for c, (root, _) in cls._roots().items() if root is not None}

    @classmethod
    def create(cls, uid: int, memory_bytes: int, max_processes: int) -> "ChildCgroups | None":
        """The cgroups of the child about to run as ``uid`` (a dead run's left over are removed first), or
        None when the host offers none or one cannot be set up (then the child runs without any)."""
        dirs = cls.paths_for(uid)
        if not dirs:
            return None
        cls.remove_stale(uid)
        made = cls(dirs)
        try:
            for d in made.folders:
                d.mkdir()
            for c, d in dirs.items():
                cls._configure(c, d, memory_bytes, max_processes)
            return made
        except OSError:
            made.remove(timeout_s=1.0)
            return None

    @classmethod
    def _configure(cls, controller: str, d: Path, memory_bytes: int, max_processes: int) -> None:
        v1 = cls.version() == "v1"
        if controller == "memory":
            (d / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(str(memory_bytes))
            with contextlib.suppress(OSError):  # swap accounting may be off
                if v1:
                    (d / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
                else:
                    (d / "memory.swap.max").write_text("0")
        elif controller == "cpu":
            name, value = CPU_WEIGHT["v1" if v1 else "v2"]
            (d / name).write_text(value)
        elif controller == "pids":
            (d / "pids.max").write_text(str(max_processes + BWRAP_TASKS))

    @classmethod
    def remove_stale(cls, uid: int) -> None:
        left = {c: d for c, d in cls.paths_for(uid).items() if d.is_dir()}
        if left:
            cls(left).remove()

    @classmethod
    def remove_dead_runs(cls, lock: Callable[[int], int | None]) -> None:
        """Remove the cgroups a killed run left behind: those whose uid ``lock(uid)`` can take (the fd)."""
        uids = {p.name[len(PREFIX):] for d in cls.paths_for("*").values() for p in d.parent.glob(d.name)}
        for uid in sorted(u for u in uids if u.isdigit()):
            fd = lock(int(uid))
            if fd is not None:
                cls.remove_stale(int(uid))
                os.close(fd)

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs

    @property
    def folders(self) -> list[Path]:
        return list(dict.fromkeys(self.dirs.values()))

    def procs_fds(self) -> list[int]:
        """An fd of each folder's ``cgroup.procs``, for the launcher to write its own pid into before it
        execs (the caller closes them)."""
        fds: list[int] = []
        try:
            for d in self.folders:
                fds.append(os.open(d / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self.folders:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        return sorted(found)

    def kill(self) -> None:
        for d in self.folders:
            with contextlib.suppress(OSError):
                if (d / "cgroup.kill").exists():
                    (d / "cgroup.kill").write_text("1")
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def oom_killed(self) -> bool:
        d = self.dirs.get("memory")
        if d is None:
            return False
        try:
            text = (d / ("memory.events" if (d / "memory.events").exists() else "memory.oom_control")).read_text()
            counts = dict(line.split()[:2] for line in text.splitlines() if len(line.split()) >= 2)
            if "oom_kill" in counts:
                return int(counts["oom_kill"]) > 0
            return int((d / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    def remove(self, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        left = self.folders
        while left:
            self.kill()
            for d in list(left):
                try:
                    d.rmdir()
                    left.remove(d)
                except FileNotFoundError:
                    left.remove(d)
                except OSError:
                    pass
            if left and time.monotonic() > deadline:
                return  # left for remove_stale when this uid is next allocated
            if left:
                time.sleep(0.05)
