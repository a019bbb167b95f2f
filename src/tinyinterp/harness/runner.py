"""Run a learner's function on one case: copy inputs, enforce a time limit, catch everything.

Kept apart from the judging (:mod:`.judge`) so a grader can run this in a sandboxed child
process and judge the returned outputs in its own process.
"""

from __future__ import annotations

import copy
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

_HARNESS_DIR = str(Path(__file__).resolve().parent)


class TimeLimitExceeded(BaseException):
    """Raised inside the learner's code when it runs past the limit (a BaseException, so a bare
    ``except Exception`` in learner code does not swallow it)."""


@dataclass
class Outcome:
    output: Any = None
    error: BaseException | None = None
    traceback: str = ""  # the learner's frames only
    timed_out: bool = False
    seconds: float = 0.0
    inputs_after: dict[str, Any] | None = None  # the inputs as the learner left them


def run_case(fn: Callable[..., Any], kwargs: dict[str, Any], time_limit_s: float) -> Outcome:
    """Call ``fn(**copy_of_kwargs)``; never raises (except KeyboardInterrupt)."""
    inputs = copy.deepcopy(kwargs)
    start = time.perf_counter()
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        outcome = _run_with_alarm(fn, inputs, time_limit_s)
    else:
        outcome = _run_in_thread(fn, inputs, time_limit_s)
    outcome.seconds = time.perf_counter() - start
    outcome.inputs_after = inputs
    return outcome


def _call(fn, inputs) -> Outcome:
    try:
        return Outcome(output=fn(**inputs))
    except TimeLimitExceeded:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # SystemExit too: learner code must not end the check
        return Outcome(error=e, traceback=learner_traceback(e))


def _run_with_alarm(fn, inputs, limit) -> Outcome:
    def on_alarm(signum, frame):
        raise TimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    # Re-fire every 0.2 s, in case learner code catches the first one.
    signal.setitimer(signal.ITIMER_REAL, limit, 0.2)
    try:
        return _call(fn, inputs)
    except TimeLimitExceeded:
        return Outcome(timed_out=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _run_in_thread(fn, inputs, limit) -> Outcome:
    box: list[Outcome] = []
    t = threading.Thread(target=lambda: box.append(_call(fn, inputs)), daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive() or not box:
        return Outcome(timed_out=True)
    return box[0]


def learner_traceback(e: BaseException, max_lines: int = 12) -> str:
    """The traceback without the harness's own frames, trimmed to its last ``max_lines`` lines."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(_HARNESS_DIR)]
    lines = traceback.format_list(frames) + traceback.format_exception_only(type(e), e)
    text = "".join(lines).rstrip().splitlines()
    if len(text) > max_lines:
        text = ["  ..."] + text[-max_lines:]
    return "\n".join(text)
