"""Grade a folder of submissions: workers, resume, progress bar, atomic per-submission results."""

from __future__ import annotations

import hashlib
import os
import queue
import re
import stat
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from . import forkserver
from .assignment import Assignment
from .grader import GradeOptions, SubmissionResult, grade_notebook, grader_error_message, unreadable
from .ids import display_name, normalise_id
from .notebook import MAX_NOTEBOOK_BYTES
from .report import atomic_write, canvas_csv, feedback_html, feedback_markdown, gradebook_csv
from .sandbox import private_uids
from .summary import batch_summary, histogram_path, score_histogram

DEFAULT_ID_PATTERN = r"^(?P<student>[^_.]+)"  # Canvas bulk downloads name files "<student>_<ids>_<name>"
GRADER_VERSION = "4"  # bump when saved results must not be resumed


@dataclass
class BatchConfig:
    submissions: Path
    out: Path
    feedback: Path
    workers: int = 1
    resume: bool = False
    canvas: Path | None = None
    feedback_format: str = "md"
    id_pattern: str = DEFAULT_ID_PATTERN
    options: GradeOptions = field(default_factory=GradeOptions)
    progress: bool = True


def student_id(path: Path, pattern: str) -> str:
    """The normalised student id (:func:`~.ids.normalise_id`) that ``pattern`` finds in the file name."""
    m = re.search(pattern, path.stem)
    return normalise_id((m.group("student") if m and m.groupdict().get("student") else path.stem) or path.stem)


def submission_files(folder: Path) -> tuple[list[tuple[Path, float]], list[str]]:
    """``([(notebook, mtime), ...], [ignored entry, ...])``: only regular files (never a symlink, a fifo or
    a folder) named ``*.ipynb`` are submissions; the names of the rest are returned for a note."""
    found, ignored = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                ignored.append(entry.name)
                continue
            if stat.S_ISREG(st.st_mode) and entry.name.lower().endswith(".ipynb"):
                found.append((Path(entry.path), st.st_mtime))
            elif not stat.S_ISDIR(st.st_mode) or entry.name.lower().endswith(".ipynb"):
                ignored.append(entry.name)
    return found, sorted(ignored)


def state_dir(cfg: BatchConfig) -> Path:
    return cfg.out.with_name(cfg.out.name + ".state")


def run_batch(cfg: BatchConfig, assignment: Assignment) -> tuple[list[SubmissionResult], list[str]]:
    start = time.perf_counter()
    files, others = submission_files(cfg.submissions)
    problems: list[str] = []
    chosen: dict[str, Path] = {}
    for p, _ in sorted(files, key=lambda f: (f[1], os.fsencode(f[0].name))):  # newest wins
        sid = student_id(p, cfg.id_pattern)
        if sid in chosen:
            problems.append(f"duplicate submission for {sid} (ids are compared case-insensitively, punctuation and "
                            f"spaces as '_'): {display_name(chosen[sid].name)} and {display_name(p.name)}; graded "
                            f"the newer, {display_name(p.name)}")
        chosen[sid] = p
    if others:
        problems.append(f"ignored {len(others)} entries that are not .ipynb files (or not regular files): "
                        f"{', '.join(display_name(o, 60) for o in others[:5])}")
    sdir = state_dir(cfg)
    sdir.mkdir(parents=True, exist_ok=True)
    sdir.chmod(0o700)
    if not cfg.resume:
        for f in sdir.glob("*.json"):
            f.unlink()
    cfg.feedback.mkdir(parents=True, exist_ok=True)
    cfg.options.hide = sorted({d.resolve() for d in (cfg.feedback, sdir, *cfg.options.hide)})
    results: list[SubmissionResult] = []
    todo = []
    for sid, p in sorted(chosen.items()):
        key = _key(p, sid, assignment.slug, cfg.options.hidden)
        f = sdir / f"{key}.json"
        if cfg.resume and f.exists():
            try:
                saved = SubmissionResult.from_json(f.read_text())
            except Exception:  # a damaged state file: regrade
                saved = None
            if saved is not None and saved.status != "error":  # a grader failure is graded again
                results.append(saved)
                continue
            f.unlink()
        todo.append((sid, p, f))
    slots: queue.Queue = queue.Queue()
    uid_claim = private_uids(max(1, cfg.workers))  # uids no other grading run on this machine uses
    for uid in uid_claim.__enter__():
        slots.put(uid)

    def work(sid: str, p: Path, f: Path) -> SubmissionResult:
        uid = slots.get()
        try:
            r = grade_notebook(p, sid, assignment, cfg.options, uid)
        except Exception as e:  # noqa: BLE001 - grade_notebook contains its own; this is the last line
            r = unreadable(sid, display_name(p.name), grader_error_message(
                f"grading stopped on an unexpected {type(e).__name__}"), assignment, "error")
        finally:
            slots.put(uid)
        atomic_write(f, r.to_json())  # the result is safe before anything else happens
        _write_feedback(cfg, r, assignment.slug, problems)
        return r

    bar = tqdm(total=len(chosen), initial=len(results), desc="grading", disable=not cfg.progress, unit="nb",
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining} left, {rate_fmt}]{postfix}")
    counts: dict[str, int] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, cfg.workers))
    try:
        futures = [pool.submit(work, *t) for t in todo]
        for fut in as_completed(futures):
            results.append(fut.result())
            counts[results[-1].status] = counts.get(results[-1].status, 0) + 1
            bar.set_postfix_str(", ".join(f"{k} {n}" for k, n in sorted(counts.items())), refresh=False)
            bar.update(1)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        _write_gradebooks(cfg, assignment, results)
        raise
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
        forkserver.close_all()  # before the uids are given back
        uid_claim.__exit__(None, None, None)
    if forkserver.problem and todo:
        problems.append(f"the pre-warmed sandbox template was not used ({forkserver.problem}): each submission "
                        f"started a sandbox and an interpreter of its own")
    for r in results:  # resumed results get their feedback rewritten too (cheap, keeps folders complete)
        _write_feedback(cfg, r, assignment.slug, problems)
    _write_gradebooks(cfg, assignment, results)
    for r in results:
        if r.status in ("unreadable", "error") and r.notes:
            note = next((n for n in r.notes if n.startswith(("Grader error", "Your notebook's results"))), r.notes[0])
            problems.append(f"{r.student}: {display_name(note, 400)}")
    try:
        figure = score_histogram(results, assignment, histogram_path(cfg.out))
        problems.append(f"score histogram: {figure}")
    except Exception as e:  # noqa: BLE001 - a figure must never cost the gradebook
        problems.append(f"score histogram not written ({type(e).__name__}: {display_name(str(e))})")
    return results, problems + [batch_summary(results, assignment, time.perf_counter() - start, len(todo))]


def _key(p: Path, sid: str, slug: str, hidden: bool) -> str:
    """The state file's name: the submission's content (read in chunks; a file over the size limit, which
    grading reports as unreadable, by its size and time), its student and what it is graded against."""
    h = hashlib.sha256()
    try:
        st = os.stat(p, follow_symlinks=False)
        if st.st_size > MAX_NOTEBOOK_BYTES or not stat.S_ISREG(st.st_mode):
            h.update(f"{st.st_size}|{st.st_mtime_ns}|{st.st_mode}".encode())
        else:
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
    except OSError as e:
        h.update(f"unreadable|{e.errno}".encode())
    h.update(f"{sid}|{slug}|{hidden}|{GRADER_VERSION}".encode())
    return h.hexdigest()[:24]


def feedback_path(folder: Path, sid: str, fmt: str) -> Path:
    """``folder/<id>.<fmt>`` for a normalised id, refusing anything that would land elsewhere."""
    if sid != normalise_id(sid):
        raise ValueError(f"student id {display_name(sid)!r} is not normalised")
    path = folder / f"{sid}.{'html' if fmt == 'html' else 'md'}"
    if path.parent != folder or os.path.basename(path) != path.name:
        raise ValueError(f"feedback for {sid!r} would leave {folder}")
    return path


def _write_feedback(cfg: BatchConfig, r: SubmissionResult, slug: str, problems: list[str]) -> None:
    try:
        text = feedback_html(r, slug) if cfg.feedback_format == "html" else feedback_markdown(r, slug)
        atomic_write(feedback_path(cfg.feedback, r.student, cfg.feedback_format), text)
    except (OSError, ValueError) as e:  # one student's feedback must not end the batch
        problems.append(f"{display_name(r.student)}: feedback not written ({type(e).__name__}: {display_name(str(e))})")


def _write_gradebooks(cfg: BatchConfig, assignment: Assignment, results: list[SubmissionResult]) -> None:
    ids = [ex.id for ex in assignment.exercises]
    atomic_write(cfg.out, gradebook_csv(results, ids))
    if cfg.canvas:
        atomic_write(cfg.canvas, canvas_csv(results, assignment.slug))
