"""Grade one submission: run it in the sandbox (restarting past a cell or exercise that kills or
hangs the child), then judge every output here, with hidden tests and partial credit."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..harness.judge import judge
from ..harness.runner import Outcome
from .assignment import Assignment, cells_to_run
from .graded_copy import KIND as COPIED
from .graded_copy import copied_reference_message, graded_package
from .ids import display_name
from .inputs import InputEncodingError, encode_cases, save
from .forkserver import EXIT_SETUP_FAILED, TemplateChild
from .forkserver import retire as retire_templates
from .launch import sealed_fd, start_child
from .notebook import NotebookError, read_notebook
from .protocol import Channel, ExerciseWire, OutputLimit, case_budget, one_line, reader
from .sandbox import Limits


STAGES = ("prepare", "start_up", "cells", "tests", "judging")  # where a submission's time goes:
# test inputs and expected outputs (shared by a batch); from starting a child to its first message (sandbox,
# interpreter, imports, loading the inputs); re-executing the notebook's cells; calling its functions on the
# test cases; judging the outputs here. Children killed mid-phase count until they were killed.

RETRY = object()  # a child to start again, blaming nothing (the template could not set up its sandbox)

UNSAFE_NOTE = ("UNSAFE: no sandbox. This submission was graded without the sandbox (--unsafe-no-sandbox, or none "
               "available where it was graded): its code ran unsandboxed, as the grader's user, with resource limits "
               "only.")


@dataclass
class GradeOptions:
    cell_timeout_s: float = 60.0
    submission_timeout_s: float = 300.0
    limits: Limits = field(default_factory=Limits)
    hidden: bool = True  # False: public cases only (the learner's self-check)
    hide: list[Path] = field(default_factory=list)  # folders the sandbox must not show (checked on its mounts)
    unsafe_no_sandbox: bool = False  # grade without the sandbox even when a uid is given (--unsafe-no-sandbox)
    prepared: dict = field(default_factory=dict, repr=False, compare=False)  # prepared_tests, per batch


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
    status: str  # graded | timeout | crashed | memory | output_limit | unreadable | error (the grader's fault)
    total: float
    max_total: float
    exercises: list[ExerciseResult]
    seconds: float
    notes: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)  # seconds per stage (:data:`STAGES`)

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


def unreadable_results_message(detail: str) -> str:
    """Status ``error`` after the notebook's code started: learner code shares the process that reports the
    results, so a garbled, forged or out-of-order message may be its doing (or a grader bug): say both."""
    return (f"Your notebook's results could not be read: {detail}. Only the grader may write to its result "
            f"pipe; if code in your notebook did not, tell your instructor (the gradebook marks this submission "
            f"`error`).")


def grade_notebook(path: Path, student: str, assignment: Assignment, options: GradeOptions,
                   uid: int | None) -> SubmissionResult:
    """Grade one notebook. Never raises (except KeyboardInterrupt): anything unexpected while grading it
    becomes this submission's status ``error`` with a one-line reason, so a batch always completes."""
    start = time.perf_counter()
    try:
        shown = display_name(Path(path).name)
        return _grade_notebook(Path(path), student, shown, assignment, options, uid, start)
    except Exception as e:  # noqa: BLE001 - contained per submission
        detail = f"grading stopped on an unexpected {type(e).__name__} ({one_line(str(e), 200)})"
        return unreadable(student, display_name(str(getattr(path, "name", path))), grader_error_message(detail),
                          assignment, "error", round(time.perf_counter() - start, 2))


def _grade_notebook(path: Path, student: str, shown: str, assignment: Assignment, options: GradeOptions,
                    uid: int | None, start: float) -> SubmissionResult:
    def failed(detail: str) -> SubmissionResult:
        return unreadable(student, shown, grader_error_message(detail), assignment, "error",
                          round(time.perf_counter() - start, 2))

    try:
        cells = cells_to_run(assignment, read_notebook(path))
    except NotebookError as e:
        return unreadable(student, shown, f"unreadable notebook: {e}", assignment)
    try:
        cases, encoded, expected = prepared_tests(assignment, options)
    except _PrepareError as e:
        return failed(str(e))
    run = _Run(assignment, cells, cases, encoded, options, uid)
    run.expected = expected
    run.timing["prepare"] = time.perf_counter() - start
    run.channel = Channel({ex.id: ExerciseWire(assignment.function_names[ex.id], [list(c.kwargs) for c in cases[ex.id]],
                                               [case_budget(e, c.kwargs) for c, e in zip(cases[ex.id], expected[ex.id])])
                           for ex in assignment.exercises}, n_cells=len(cells))
    run.execute(deadline=start + options.submission_timeout_s)
    t = time.perf_counter()
    results = [run.judge_exercise(ex) for ex in assignment.exercises]
    run.timing["judging"] = time.perf_counter() - t
    total = round(sum(r.points for r in results), 2)
    status = run.status()
    return SubmissionResult(student, shown, status, total, assignment.max_points, results,
                            round(time.perf_counter() - start, 2), run.notes,
                            {k: round(run.timing.get(k, 0.0), 3) for k in STAGES})


class _PrepareError(Exception):
    pass


_prepared_lock = threading.Lock()


def prepared_tests(assignment: Assignment, options: GradeOptions) -> tuple[dict, bytes, dict]:
    """``(cases, encoded inputs, expected outputs)`` of an assignment: computed once per batch (kept in its
    ``options``) and shared by every submission in it (the same for all; nothing a submission does can reach
    them: the child gets a serialised copy, and the judge copies what it compares). Raises
    :class:`_PrepareError` (a grader error) when the inputs cannot be encoded or the reference fails."""
    hidden, _prepared = options.hidden, options.prepared
    key = (tuple(id(ex) for ex in assignment.exercises), hidden)  # these very exercises (kept alive below)
    with _prepared_lock:
        if key not in _prepared:
            cases = {ex.id: (ex.public_cases() + (ex.hidden_cases() if hidden else [])) for ex in assignment.exercises}
            try:
                encoded = encode_cases(cases)
            except InputEncodingError as e:
                raise _PrepareError(f"a test input cannot be sent to the notebook's process ({e})") from None
            try:
                expected = {ex.id: [ex.expected(c.kwargs) for c in cases[ex.id]] for ex in assignment.exercises}
            except Exception as e:  # noqa: BLE001 - the reference itself failed: never the learner's fault
                raise _PrepareError(f"the expected outputs could not be computed ({type(e).__name__}: "
                                    f"{one_line(str(e), 200)})") from None
            buf = io.BytesIO()
            save(encoded, buf)
            _prepared[key] = (cases, buf.getvalue(), expected, list(assignment.exercises))
        return _prepared[key][:3]


class _Run:
    """One submission's child runs: restarts skip whatever killed or hung the previous child."""

    def __init__(self, assignment, cells, cases, encoded_inputs, options: GradeOptions, uid):
        self.assignment, self.cells, self.cases, self.options, self.uid = assignment, cells, cases, options, uid
        self.encoded_inputs = encoded_inputs
        self.grader_errors: list[str] = []  # failures on the grader's side: status `error`
        self.after_learner: set[str] = set()  # those of them read after the notebook's code started
        self.skip_cells: set[int] = set()
        self.skip_exercises: dict[str, str] = {}  # id -> kind (timeout/crashed/memory)
        self.case_msgs: dict[str, dict[int, dict]] = {ex.id: {} for ex in assignment.exercises}
        self.missing: set[str] = set()
        self.cell_errors: dict[int, str] = {}
        self.notes: list[str] = []
        self.submission_timed_out = False
        self._status_flags: set[str] = set()  # timeout / memory / crashed / output_limit, seen anywhere
        self.expected: dict[str, list] = {}  # exercise id -> the right answer of each case (set by grade_notebook)
        self.channel: Channel | None = None  # the submission's reading budget (set by grade_notebook)
        self.limit_details: dict[str, str] = {}  # exercise id -> why its output went over the limit
        self.output_stopped: str | None = None  # output over the limit between cells/exercises: grading stopped
        self.judging_errors: list[str] = []  # the judge raised here: status `error`
        self.timing: dict[str, float] = {}  # seconds per stage (STAGES)

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
            if culprit is RETRY:
                continue
            if culprit is None:
                return

    def _one_child(self, deadline: float):
        """One child: the job and the inputs reach it through fds (never a path it could replace); its
        stdout/stderr come back through a pipe; it sees the graded copy of the package."""
        job = {"cells": self.cells, "skip_cells": sorted(self.skip_cells),
               "skip_exercises": sorted(set(self.skip_exercises) | self._finished()),
               "exercises": {ex.id: {"function": self.assignment.function_names[ex.id],
                                     "time_limit_s": ex.time_limit_s} for ex in self.assignment.exercises}}
        job_fd, inputs_fd = sealed_fd(json.dumps(job).encode(), "job"), sealed_fd(self.encoded_inputs, "inputs")
        spawned = time.perf_counter()
        r, w = os.pipe()
        sandboxed = self.uid is not None and not self.options.unsafe_no_sandbox
        if self.options.unsafe_no_sandbox and UNSAFE_NOTE not in self.notes:
            self.notes.append(UNSAFE_NOTE)
        try:
            child = start_child([str(job_fd), str(w), str(inputs_fd)], uid=self.uid if sandboxed else None,
                                package=graded_package(self.assignment), limits=self.options.limits,
                                hide=self.options.hide, pass_fds=(job_fd, w, inputs_fd))
        except BaseException:
            os.close(r)
            raise
        finally:
            for fd in (job_fd, w, inputs_fd):
                os.close(fd)
        try:
            return self._supervise(child, r, deadline, spawned)
        finally:
            child.close()

    def _finished(self) -> set[str]:
        return {i for i, m in self.case_msgs.items() if len(m) == len(self.cases[i])} | self.missing

    def _spent(self, stage: str, seconds: float) -> None:
        self.timing[stage] = self.timing.get(stage, 0.0) + seconds

    def _supervise(self, child, r: int, deadline: float, spawned: float):
        proc = child.proc
        state = {"phase": None, "since": time.perf_counter(), "done": False, "learner_ran": False,
                 "spawned": spawned}
        n_errors = len(self.grader_errors)
        t = threading.Thread(target=self._read, args=(r, state), daemon=True)
        t.start()
        culprit, reason = None, None
        while proc.poll() is None and len(self.grader_errors) == n_errors and "over_limit" not in state:
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
        child.kill()
        t.join(timeout=5)
        if state.get("phase") is not None:  # killed mid-phase: its time so far counts
            self._spent("cells" if state["phase"][0] == "cell" else "tests", time.perf_counter() - state["since"])
        elif "first_message" not in state:
            self._spent("start_up", time.perf_counter() - spawned)
        if t.is_alive():  # the reader keeps (and then closes) its fd, and changes nothing more of this run
            state["abandoned"] = True
            self._grader_error("the notebook's results were still being read 5 s after its process ended")
        if culprit is None and "over_limit" in state:
            return self._output_limit(*state["over_limit"])
        if len(self.grader_errors) > n_errors or (state["done"] and culprit is None):
            return None
        if culprit is None and isinstance(proc, TemplateChild) and proc.template_lost:  # the grader's, not the child's
            self._grader_error("the sandbox template ended while the notebook ran")
            return None
        if culprit is None:  # the child died
            culprit = state["phase"]
            reason = "memory" if child.out_of_memory() else "crashed"
            if culprit is None and not state["learner_ran"]:
                last = (child.output_tail(2000).strip().splitlines() or ["no output"])[-1]
                if isinstance(proc, TemplateChild) and child.returncode == EXIT_SETUP_FAILED:
                    retire_templates(f"a fork could not set up its sandbox ({last[:300]})")
                    return RETRY  # again, in a sandbox of its own: nothing of the notebook ran
                self._grader_error(f"the grading process ended before running any of the notebook (exit "
                                   f"{child.returncode}; its last output: {last[:300]})")
                return None
            if culprit is None:  # between cells: e.g. a thread the notebook started ended the process
                self.notes.append(f"the notebook's process ended between cells (exit {child.returncode})")
                self._status_flags.add("crashed")
                return None
        self._skip(culprit, reason)
        return culprit if not self.submission_timed_out else None

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
                                     "memory": "ran out of memory", "crashed": "ended the process",
                                     "output_limit": "sent more output than the grader reads"}[reason]
            self.notes.append(f"cell {key} {self.cell_errors[key]} ({reason}); it was skipped")
            self._status_flags.add(reason)
        else:
            self.skip_exercises[key] = reason
            self._status_flags.add(reason)

    def _grader_error(self, detail: str, after_learner: bool = False) -> None:
        self.grader_errors.append(detail)
        if after_learner:
            self.after_learner.add(detail)
        self.notes.append(self._error_message(detail))

    def _error_message(self, detail: str) -> str:
        return (unreadable_results_message if detail in self.after_learner else grader_error_message)(detail)

    def _read(self, fd: int, state: dict) -> None:
        """Read the child's messages (validated and budgeted by :mod:`.protocol`) into this run's state. A
        message the protocol cannot express is a grader error; output over the budget sets
        ``state["over_limit"]`` to ``(phase, why)`` and stops reading (the supervisor then ends the child).
        The phase blamed is the last one started (a forged end message cannot shift the blame off it)."""
        talk = self.channel.conversation([i for i, _ in self.cells if i not in self.skip_cells],
                                         [e for e in self.cases if e not in self.skip_exercises
                                          and e not in self._finished()])
        read = reader(fd)
        try:
            while (msg := talk.next(read)) is not None and not state.get("abandoned"):
                ev, now = msg["event"], time.perf_counter()
                if "first_message" not in state:
                    state["first_message"] = now
                    self._spent("start_up", now - state["spawned"])
                if ev == "grader_error":
                    self._grader_error(msg["message"][:600])
                    return
                if ev in ("cell_start", "exercise_start"):
                    state["learner_ran"] = True
                    state["started"] = ("cell", msg["index"]) if ev == "cell_start" else ("exercise", msg["id"])
                if ev == "cell_start":
                    state["phase"], state["since"] = ("cell", msg["index"]), now
                elif ev == "cell_end":
                    if msg["error"]:
                        self.cell_errors[msg["index"]] = msg["error"]
                    state["phase"] = None
                    self._spent("cells", now - state["since"])
                elif ev == "exercise_start":
                    state["phase"], state["since"] = ("exercise", msg["id"]), now
                elif ev == "case":
                    self.case_msgs[msg["id"]][msg["case"]] = msg
                elif ev == "missing":
                    self.missing.add(msg["id"])
                elif ev == "exercise_end":
                    state["phase"] = None
                    self._spent("tests", now - state["since"])
                elif ev == "done":
                    state["done"] = True
        except OutputLimit as e:
            state["over_limit"] = (state.get("started"), one_line(str(e), 500))
        except Exception as e:  # noqa: BLE001 - ProtocolError, or any garbage on the pipe
            if not state.get("abandoned"):
                self._grader_error(f"a message from the notebook's process was unreadable ({type(e).__name__}: "
                                   f"{one_line(str(e), 200)})", after_learner=talk.learner_ran)
        finally:
            os.close(fd)  # this thread's own: never closed under it, never reused while it reads

    def _output_limit(self, phase, why: str):
        """The child sent more than its budget: skip what it was doing (an exercise loses its remaining
        cases, a cell is skipped) and run the rest in a new child; between phases, stop grading."""
        self._status_flags.add("output_limit")
        self.notes.append(f"output over the grader's limit: {why}")
        if phase is None:
            self.output_stopped = why
            return None
        if phase[0] == "exercise":
            self.limit_details[phase[1]] = why
        self._skip(phase, "output_limit")
        return phase if not self.submission_timed_out else None

    # ----- judging (in this process) ------------------------------------------------------
    def judge_exercise(self, ex) -> ExerciseResult:
        fn_name = self.assignment.function_names[ex.id]
        cases = self.cases[ex.id]
        if ex.id in self.missing:
            return ExerciseResult(ex.id, 0.0, float(ex.points), 0, len(cases),
                                  f"No function named `{fn_name}` was defined when your notebook ran"
                                  + self._cell_error_note(), "missing")
        msgs = self.case_msgs[ex.id]
        copied = copied_reference_message(msgs.values(), self.assignment.exercises)
        if copied:  # copying is not solving: reaching the book's reference on any case earns 0 (graded_copy)
            return ExerciseResult(ex.id, 0.0, float(ex.points), 0, len(cases), copied, COPIED)
        runs = {k: (case, _outcome(msgs[k])) for k, case in enumerate(cases) if k in msgs}
        verdicts = []
        for k, case in enumerate(cases):
            m = msgs.get(k)
            if m is None and self.grader_errors and ex.id not in self.skip_exercises:
                verdicts.append((False, self._error_message(self.grader_errors[0]), "error"))
                continue
            if m is None:
                reason = self.skip_exercises.get(ex.id) or (
                    "timeout" if self.submission_timed_out else "output_limit" if self.output_stopped else "crashed")
                limit = self.limit_details.get(ex.id) or self.output_stopped or "too much output"
                text = {"timeout": f"Time limit exceeded while testing `{fn_name}` on '{case.name}'.",
                        "memory": f"Out of memory while testing `{fn_name}` on '{case.name}'.",
                        "crashed": f"Testing `{fn_name}` ended the process on '{case.name}' "
                                   f"(e.g. sys.exit/os._exit or a crash).",
                        "output_limit": f"Output over the grader's limit, so '{case.name}' was not graded: "
                                        f"{limit}."}[reason]
                verdicts.append((False, text, reason))
                continue
            outcome = runs[k][1]
            if m["error_type"] == "MemoryError" or "can't allocate memory" in m["traceback"]:
                self._status_flags.add("memory")
            others = [run for j, run in runs.items() if j != k]  # evidence to tell catalogued mistakes apart
            verdicts.append(self._judge_case(ex, k, outcome, others))
        n_ok = sum(ok for ok, _, _ in verdicts)
        points = round(ex.points * n_ok / len(cases), 2) if cases else 0.0
        bad = [(msg, kind) for ok, msg, kind in verdicts if not ok]
        msg = f"All {len(cases)} tests pass (public and hidden)." if not bad else bad[0][0]
        return ExerciseResult(ex.id, points, float(ex.points), n_ok, len(cases), msg, "ok" if not bad else bad[0][1])

    def _judge_case(self, ex, k: int, outcome: Outcome, others) -> tuple[bool, str, str]:
        """One verdict; an exception in the judge (whatever the output) is a grader error, contained here."""
        case = self.cases[ex.id][k]
        try:
            v = judge(ex, case, outcome, self.expected[ex.id][k], others)
            return v.ok, v.message, v.kind
        except Exception as e:  # noqa: BLE001
            detail = f"judging '{case.name}' of {ex.id} raised {type(e).__name__} ({one_line(str(e), 200)})"
            self.judging_errors.append(detail)
            self.notes.append(grader_error_message(detail))
            return False, grader_error_message(detail), "error"

    def _cell_error_note(self) -> str:
        if not self.cell_errors:
            return "."
        i, err = next(iter(sorted(self.cell_errors.items())))
        return f"; a cell failed first (cell {i}: {err})."

    def status(self) -> str:
        if self.grader_errors or self.judging_errors:
            return "error"
        if self.submission_timed_out or "timeout" in self._status_flags:
            return "timeout"
        if "memory" in self._status_flags or any("MemoryError" in e for e in self.cell_errors.values()):
            return "memory"
        if "output_limit" in self._status_flags:
            return "output_limit"
        if "crashed" in self._status_flags:
            return "crashed"
        return "graded"


class _LearnerError(Exception):
    pass


def _outcome(m: dict) -> Outcome:
    """What the learner's function did on one case, from a message :mod:`.protocol` has validated."""
    err = None
    if m["error_type"]:
        name = m["error_type"]
        cls = NotImplementedError if name == "NotImplementedError" else type(name, (_LearnerError,), {})
        err = cls()
    return Outcome(output=m["output"], error=err, traceback=m["traceback"], timed_out=m["timed_out"],
                   seconds=m["seconds"], inputs_after=m["inputs_after"])
