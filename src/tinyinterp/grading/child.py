"""The sandboxed child: run the learner's cells, then call the learner's functions on the test inputs.

``python -m tinyinterp.grading.child JOB_FD RESULT_FD INPUTS_FD``: the job (JSON) and the test inputs
arrive on inherited file descriptors, never as paths (the grader writes nothing the child could replace,
and reads nothing back but the result pipe). It judges nothing: it only reports what happened, over the
result pipe, and the grading process decides.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main(job_fd: int, fd: int, inputs_fd: int) -> None:
    import torch  # noqa: F401  (before learner code, so the learner cannot shadow it first)

    from tinyinterp.grading import inputs as test_inputs
    from tinyinterp.grading.protocol import encode, to_wire
    from tinyinterp.harness.judge import comparable
    from tinyinterp.harness.runner import Outcome, run_case

    out = os.fdopen(fd, "wb", buffering=0)
    main_pid = os.getpid()

    def send(**msg) -> None:
        if os.getpid() != main_pid:  # a process the learner forked: it must not speak for us
            os._exit(0)
        data = memoryview(encode(msg))
        while data:  # a pipe may take a large message in several writes
            data = data[out.write(data):]
    try:  # the grader's side: no learner code has run yet, so a failure here is never the learner's
        with os.fdopen(job_fd, "rb") as f:
            job = json.loads(f.read())
        with os.fdopen(inputs_fd, "rb") as f:  # closed before any learner code runs
            inputs = test_inputs.load(f)
    except Exception as e:  # noqa: BLE001
        send(event="grader_error", message=f"the test inputs could not be loaded ({type(e).__name__}: {e})"[:600])
        out.flush()
        return
    namespace: dict = {"__name__": "__main__"}
    from tinyinterp.grading.neutral import neutralise_checker

    neutralise_checker(namespace)  # check cells run, but tinyinterp.check does nothing while grading
    skip_cells = set(job["skip_cells"])
    for index, source in job["cells"]:
        if index in skip_cells:
            continue
        send(event="cell_start", index=index)
        error = None
        try:
            code = compile(source, f"<cell {index}>", "exec")
            exec(code, namespace)
        except BaseException as e:  # noqa: BLE001 - SystemExit, KeyboardInterrupt too: keep going
            error = f"{type(e).__name__}: {e}"[:500]
            if isinstance(e, MemoryError) or "can't allocate memory" in str(e):
                error = "MemoryError: " + error
        if os.getpid() != main_pid:
            os._exit(0)
        send(event="cell_end", index=index, error=error)
    for ex_id, spec in job["exercises"].items():
        if ex_id in job["skip_exercises"]:
            continue
        send(event="exercise_start", id=ex_id)
        fn = namespace.get(spec["function"])
        if not callable(fn):
            send(event="missing", id=ex_id, function=spec["function"])
            continue
        timed_out = False  # after one case runs past its limit, the rest are not tried (each would cost as much)
        for k, kwargs in enumerate(inputs[ex_id]):
            o = Outcome(timed_out=True, inputs_after=kwargs) if timed_out else run_case(fn, kwargs, spec["time_limit_s"])
            timed_out = timed_out or o.timed_out
            send(event="case", id=ex_id, case=k, output=to_wire(o.output), timed_out=o.timed_out,
                 error_type=None if o.error is None else type(o.error).__name__,
                 traceback=o.traceback[-2000:], seconds=o.seconds,
                 inputs_after={n: to_wire(comparable(v)) for n, v in (o.inputs_after or {}).items()})
        send(event="exercise_end", id=ex_id)
    send(event="done")
    out.flush()


def finish(code: int) -> None:
    """End the child's process: what the notebook printed reaches the grader's output tail, and atexit
    handlers the learner may have registered do not run."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - a stream the learner replaced or closed
            pass
    os._exit(code)


if __name__ == "__main__":
    try:
        main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    except BaseException:
        traceback.print_exc()
        raise
    finish(0)
