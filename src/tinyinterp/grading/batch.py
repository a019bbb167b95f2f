"""Grade a folder of submissions: workers, resume, progress bar, atomic per-submission results."""

from __future__ import annotations

import hashlib
import queue
import re
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .assignment import Assignment
from .grader import GradeOptions, SubmissionResult, grade_notebook
from .report import atomic_write, canvas_csv, feedback_html, feedback_markdown, gradebook_csv, summary
from .sandbox import private_uids

DEFAULT_ID_PATTERN = r"^(?P<student>[^_.]+)"  # Canvas bulk downloads name files "<student>_<ids>_<name>"
GRADER_VERSION = "2"  # bump when saved results must not be resumed


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
    m = re.search(pattern, path.stem)
    return (m.group("student") if m and m.groupdict().get("student") else path.stem) or path.stem


def state_dir(cfg: BatchConfig) -> Path:
    return cfg.out.with_name(cfg.out.name + ".state")


def run_batch(cfg: BatchConfig, assignment: Assignment) -> tuple[list[SubmissionResult], list[str]]:
    start = time.perf_counter()
    files = sorted(p for p in cfg.submissions.iterdir() if p.suffix == ".ipynb" and p.is_file())
    problems: list[str] = []
    chosen: dict[str, Path] = {}
    for p in sorted(files, key=lambda p: (p.stat().st_mtime, p.name)):  # newest wins
        sid = student_id(p, cfg.id_pattern)
        if sid in chosen:
            problems.append(f"duplicate submission for {sid}: {chosen[sid].name} and {p.name}; graded the newer, {p.name}")
        chosen[sid] = p
    others = sorted(p.name for p in cfg.submissions.iterdir() if p.is_file() and p.suffix != ".ipynb")
    if others:
        problems.append(f"ignored {len(others)} files that are not .ipynb: {', '.join(others[:5])}")
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
        finally:
            slots.put(uid)
        atomic_write(f, r.to_json())  # the result is safe before anything else happens
        _write_feedback(cfg, r, assignment.slug)
        return r

    bar = tqdm(total=len(chosen), initial=len(results), desc="grading", disable=not cfg.progress, unit="nb")
    pool = ThreadPoolExecutor(max_workers=max(1, cfg.workers))
    try:
        futures = [pool.submit(work, *t) for t in todo]
        for fut in as_completed(futures):
            results.append(fut.result())
            bar.update(1)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        _write_gradebooks(cfg, assignment, results)
        raise
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
        uid_claim.__exit__(None, None, None)
    for r in results:  # resumed results get their feedback rewritten too (cheap, keeps folders complete)
        _write_feedback(cfg, r, assignment.slug)
    _write_gradebooks(cfg, assignment, results)
    problems += [f"{r.student}: {next((n for n in r.notes if n.startswith('Grader error')), r.notes[0])}"
                 for r in results if r.status in ("unreadable", "error") and r.notes]
    return results, problems + [summary(results, [], time.perf_counter() - start)]


def _key(p: Path, sid: str, slug: str, hidden: bool) -> str:
    h = hashlib.sha256(p.read_bytes())
    h.update(f"{sid}|{slug}|{hidden}|{GRADER_VERSION}".encode())
    return h.hexdigest()[:24]


def _write_feedback(cfg: BatchConfig, r: SubmissionResult, slug: str) -> None:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", r.student)
    if cfg.feedback_format == "html":
        atomic_write(cfg.feedback / f"{safe}.html", feedback_html(r, slug))
    else:
        atomic_write(cfg.feedback / f"{safe}.md", feedback_markdown(r, slug))


def _write_gradebooks(cfg: BatchConfig, assignment: Assignment, results: list[SubmissionResult]) -> None:
    ids = [ex.id for ex in assignment.exercises]
    atomic_write(cfg.out, gradebook_csv(results, ids))
    if cfg.canvas:
        atomic_write(cfg.canvas, canvas_csv(results, assignment.slug))
