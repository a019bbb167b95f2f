"""Grade one submission: run it in the sandbox (restarting past a cell or exercise that kills or
hangs the child), then judge every output here, with hidden tests and partial credit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..harness.judge import judge
from ..harness.runner import Outcome
from .assignment import Assignment, cells_to_run
from .inputs import InputEncodingError, encode_cases, save
from .protocol import ProtocolError, decode_stream, from_wire, reader
from .sandbox import Limits, SandboxSpec, kill_everything, make_workdir, preexec, remove_workdir, scrubbed_env


@dataclass
class GradeOptions:
    cell_timeout_s: float = 60.0
    submission_timeout_s: float = 300.0
    limits: Limits = field(default_factory=Limits)
    hidden: bool = True  # False: public cases only (the learner's self-check)
    hide: list[Path] = field(default_factory=list)


@dataclass
class ExerciseResult:
    id: str
    points: float
    max_points: float
    cases_passed: int
    cases_total: int
    message: str
    kind: str


@dataclass
class SubmissionResult:
    student: str
    file: str
    status: str  # graded | timeout | crashed | memory | unreadable | error (the grader's fault)
    total: float
    max_total: float
    exercises: list[ExerciseResult]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "SubmissionResult":
        d = json.loads(text)
        d["exercises"] = [ExerciseResult(**e) for e in d["exercises"]]
        return cls(**d)


def unreadable(student: str, file: str, why: str, assignment: Assignment, status: str = "unreadable",
               seconds: float = 0.0) -> SubmissionResult:
    exs = [ExerciseResult(e.id, 0.0, float(e.points), 0, 0, why, status) for e in assignment.exercises]
    return SubmissionResult(student, file, status, 0.0, assignment.max_points, exs, seconds, [why])


def grader_error_message(detail: str) -> str:
    """Status ``error``: the grader failed, so the message blames no one and asks for a human."""
    return (f"Grader error, not your work: {detail}. This exercise could not be graded; tell your instructor "
            f"(the gradebook marks this submission `error`).")


def grade_notebook(path: Path, student: str, assignment: Assignment, options: GradeOptions,
                   uid: int | None) -> SubmissionResult:
    start = time.perf_counter()
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
            raise ValueError("not a Jupyter notebook (no cells)")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return unreadable(student, path.name, f"unreadable notebook: {str(e)[:200]}", assignment)
    cells = cells_to_run(assignment, nb)
    cases = {ex.id: (ex.public_cases() + (ex.hidden_cases() if options.hidden else [])) for ex in assignment.exercises}
    try:
        encoded = encode_cases(cases)
    except InputEncodingError as e:
        return unreadable(student, path.name, grader_error_message(f"a test input cannot be sent to the notebook's "
                                                                   f"process ({e})"), assignment, "error",
                          round(time.perf_counter() - start, 2))
    run = _Run(assignment, cells, cases, encoded, options, uid)
    run.execute(deadline=start + options.submission_timeout_s)
    results = [run.judge_exercise(ex) for ex in assignment.exercises]
    total = round(sum(r.points for r in results), 2)
    status = run.status()
    return SubmissionResult(student, path.name, status, total, assignment.max_points, results,
                            round(time.perf_counter() - start, 2), run.notes)


class _Run:
    """One submission's child runs: restarts skip whatever killed or hung the previous child."""

    def __init__(self, assignment, cells, cases, encoded_inputs, options: GradeOptions, uid):
        self.assignment, self.cells, self.cases, self.options, self.uid = assignment, cells, cases, options, uid
        self.encoded_inputs = encoded_inputs
        self.grader_errors: list[str] = []  # failures on the grader's side: status `error`
        self.skip_cells: set[int] = set()
        self.skip_exercises: dict[str, str] = {}  # id -> kind (timeout/crashed/memory)
        self.case_msgs: dict[str, dict[int, dict]] = {ex.id: {} for ex in assignment.exercises}
        self.missing: set[str] = set()
        self.cell_errors: dict[int, str] = {}
        self.notes: list[str] = []
        self.submission_timed_out = False
        self._status_flags: set[str] = set()  # timeout / memory / crashed, seen anywhere

    # ----- running ------------------------------------------------------------------------
    def execute(self, deadline: float) -> None:
        for _attempt in range(len(self.cells) + len(self.cases) + 1):
            if set(self.cases) <= self._finished() | set(self.skip_exercises) or self.grader_errors:
                return
            if time.perf_counter() >= deadline:
                self.submission_timed_out = True
                self.notes.append("the whole submission ran past its time limit")
                return
            culprit = self._one_child(deadline)
            if culprit is None:
                return

    def _one_child(self, deadline: float):
        workdir = make_workdir(self.uid)
        try:
            job = {"cells": self.cells, "skip_cells": sorted(self.skip_cells),
                   "skip_exercises": sorted(set(self.skip_exercises) | self._finished()),
                   "exercises": {ex.id: {"function": self.assignment.function_names[ex.id],
                                         "time_limit_s": ex.time_limit_s} for ex in self.assignment.exercises}}
            (workdir / "job.json").write_text(json.dumps(job))
            save(self.encoded_inputs, workdir / "inputs.pt")
            if self.uid is not None:
                for f in workdir.iterdir():
                    os.chown(f, self.uid, self.uid)
            return self._supervise(workdir, deadline)
        finally:
            remove_workdir(workdir)

    def _finished(self) -> set[str]:
        return {i for i, m in self.case_msgs.items() if len(m) == len(self.cases[i])} | self.missing

    def _supervise(self, workdir: Path, deadline: float):
        r, w = os.pipe()
        spec = SandboxSpec(workdir, self.uid, self.options.hide, self.options.limits)
        log = open(workdir / "output.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "tinyinterp.grading.child", str(workdir), str(w)],
                                pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env=scrubbed_env(workdir), preexec_fn=preexec(spec), close_fds=True)
        os.close(w)
        log.close()
        state = {"phase": None, "since": time.perf_counter(), "done": False, "learner_ran": False}
        n_errors = len(self.grader_errors)
        t = threading.Thread(target=self._read, args=(r, state), daemon=True)
        t.start()
        culprit, reason = None, None
        while proc.poll() is None and len(self.grader_errors) == n_errors:
            time.sleep(0.05)
            now = time.perf_counter()
            phase = state["phase"]
            limit = self._phase_limit(phase)
            if now >= deadline:
                culprit, reason = phase, "timeout"
                self.submission_timed_out = True
                self.notes.append("the whole submission ran past its time limit")
                break
            if phase is not None and now - state["since"] > limit:
                culprit, reason = phase, "timeout"
                break
        kill_everything(proc.pid, self.uid)
        proc.wait()
        t.join(timeout=5)
        os.close(r)
        if len(self.grader_errors) > n_errors or (state["done"] and culprit is None):
            return None
        if culprit is None:  # the child died
            culprit = state["phase"]
            reason = "memory" if proc.returncode in (-9,) and self._near_memory(workdir) else "crashed"
            if culprit is None and not state["learner_ran"]:
                last = (_tail(workdir / "output.log", 2000).strip().splitlines() or ["no output"])[-1]
                self._grader_error(f"the grading process ended before running any of the notebook (exit "
                                   f"{proc.returncode}; its last output: {last[:300]})")
                return None
            if culprit is None:  # between cells: e.g. a thread the notebook started ended the process
                self.notes.append(f"the notebook's process ended between cells (exit {proc.returncode})")
                self._status_flags.add("crashed")
                return None
        self._skip(culprit, reason)
        return culprit if not self.submission_timed_out else None

    def _near_memory(self, workdir: Path) -> bool:
        return "MemoryError" in _tail(workdir / "output.log")

    def _phase_limit(self, phase) -> float:
        if phase and phase[0] == "exercise":
            n = len(self.cases[phase[1]])
            ex = next(e for e in self.assignment.exercises if e.id == phase[1])
            return n * ex.time_limit_s + 10
        return self.options.cell_timeout_s

    def _skip(self, culprit, reason: str) -> None:
        kind, key = culprit
        if kind == "cell":
            self.skip_cells.add(key)
            self.cell_errors[key] = {"timeout": "ran past the time limit per cell",
                                     "memory": "ran out of memory", "crashed": "ended the process"}[reason]
            self.notes.append(f"cell {key} {self.cell_errors[key]} ({reason}); it was skipped")
            self._status_flags.add(reason)
        else:
            self.skip_exercises[key] = reason
            self._status_flags.add(reason)

    def _grader_error(self, detail: str) -> None:
        self.grader_errors.append(detail)
        self.notes.append(grader_error_message(detail))

    def _read(self, fd: int, state: dict) -> None:
        read = reader(fd)
        try:
            while (msg := decode_stream(read)) is not None:
                ev = msg["event"]
                if ev == "grader_error":
                    self._grader_error(str(msg.get("message", "the notebook's process reported a failure"))[:600])
                    return
                if ev in ("cell_start", "exercise_start"):
                    state["learner_ran"] = True
                if ev == "cell_start":
                    state["phase"], state["since"] = ("cell", int(msg["index"])), time.perf_counter()
                elif ev == "cell_end":
                    if msg.get("error"):
                        self.cell_errors[int(msg["index"])] = str(msg["error"])
                    state["phase"] = None
                elif ev == "exercise_start":
                    state["phase"], state["since"] = ("exercise", self._known_id(msg)), time.perf_counter()
                elif ev == "case":
                    k = int(msg["case"])
                    if not 0 <= k < len(self.cases[self._known_id(msg)]):
                        raise ProtocolError(f"case {k} of {msg['id']!r} does not exist")
                    self.case_msgs[msg["id"]][k] = msg
                elif ev == "missing":
                    self.missing.add(self._known_id(msg))
                elif ev == "exercise_end":
                    state["phase"] = None
                elif ev == "done":
                    state["done"] = True
                else:
                    raise ProtocolError(f"unknown event {ev!r}")
        except Exception as e:  # noqa: BLE001 - ProtocolError, or any garbage on the pipe
            self._grader_error(f"a message from the notebook's process was unreadable ({type(e).__name__}: "
                               f"{str(e)[:200]})")

    def _known_id(self, msg: dict) -> str:
        if msg.get("id") not in self.case_msgs:
            raise ProtocolError(f"unknown exercise id {msg.get('id')!r}")
        return msg["id"]

    # ----- judging (in this process) ------------------------------------------------------
    def judge_exercise(self, ex) -> ExerciseResult:
        fn_name = self.assignment.function_names[ex.id]
        cases = self.cases[ex.id]
        if ex.id in self.missing:
            return ExerciseResult(ex.id, 0.0, float(ex.points), 0, len(cases),
                                  f"No function named `{fn_name}` was defined when your notebook ran"
                                  + self._cell_error_note(), "missing")
        msgs = self.case_msgs[ex.id]
        runs = {k: (case, _outcome(msgs[k])) for k, case in enumerate(cases) if k in msgs}
        verdicts = []
        for k, case in enumerate(cases):
            m = msgs.get(k)
            if m is None and self.grader_errors and ex.id not in self.skip_exercises:
                verdicts.append((False, grader_error_message(self.grader_errors[0]), "error"))
                continue
            if m is None:
                reason = self.skip_exercises.get(ex.id, "crashed")
                text = {"timeout": f"Time limit exceeded while testing `{fn_name}` on '{case.name}'.",
                        "memory": f"Out of memory while testing `{fn_name}` on '{case.name}'.",
                        "crashed": f"Testing `{fn_name}` ended the process on '{case.name}' "
                                   f"(e.g. sys.exit/os._exit or a crash)."}[reason]
                verdicts.append((False, text, reason))
                continue
            outcome = runs[k][1]
            if m.get("error_type") == "MemoryError" or "can't allocate memory" in str(m.get("traceback", "")):
                self._status_flags.add("memory")
            others = [run for j, run in runs.items() if j != k]  # evidence to tell catalogued mistakes apart
            v = judge(ex, case, outcome, ex.expected(case.kwargs), others)
            verdicts.append((v.ok, v.message, v.kind))
        n_ok = sum(ok for ok, _, _ in verdicts)
        points = round(ex.points * n_ok / len(cases), 2) if cases else 0.0
        bad = [(msg, kind) for ok, msg, kind in verdicts if not ok]
        msg = f"All {len(cases)} tests pass (public and hidden)." if not bad else bad[0][0]
        return ExerciseResult(ex.id, points, float(ex.points), n_ok, len(cases), msg, "ok" if not bad else bad[0][1])

    def _cell_error_note(self) -> str:
        if not self.cell_errors:
            return "."
        i, err = next(iter(sorted(self.cell_errors.items())))
        return f"; a cell failed first (cell {i}: {err})."

    def status(self) -> str:
        if self.grader_errors:
            return "error"
        if self.submission_timed_out or "timeout" in self._status_flags:
            return "timeout"
        if "memory" in self._status_flags or any("MemoryError" in e for e in self.cell_errors.values()):
            return "memory"
        if "crashed" in self._status_flags:
            return "crashed"
        return "graded"


class _LearnerError(Exception):
    pass


def _outcome(m: dict) -> Outcome:
    err = None
    if m.get("error_type"):
        name = str(m["error_type"])
        cls = NotImplementedError if name == "NotImplementedError" else type(name, (_LearnerError,), {})
        err = cls()
    return Outcome(output=from_wire(m.get("output")), error=err, traceback=str(m.get("traceback", "")),
                   timed_out=bool(m.get("timed_out")), seconds=float(m.get("seconds", 0.0)),
                   inputs_after={k: from_wire(v) for k, v in (m.get("inputs_after") or {}).items()})


def _tail(path: Path, n: int = 400) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""
