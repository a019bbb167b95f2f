"""What an instructor wants to see after a batch: a summary table (status counts, mean score per exercise,
the most frequent diagnosed mistakes, where the time went) and a histogram of the scores."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .assignment import Assignment
from .grader import STAGES, SubmissionResult

TOP_MISTAKES = 5


def diagnosed_mistakes(results: list[SubmissionResult], assignment: Assignment) -> Counter:
    """``{(exercise id, catalogued message): number of submissions}`` over the exercises whose feedback
    names a catalogued mistake (kind ``mistake``)."""
    catalogue = {ex.id: [m.message for m in ex.mistakes] for ex in assignment.exercises}
    found: Counter = Counter()
    for r in results:
        for e in r.exercises:
            if e.kind == "mistake":
                message = next((m for m in catalogue.get(e.id, []) if e.message.startswith(m)), e.message)
                found[(e.id, message)] += 1
    return found


def batch_summary(results: list[SubmissionResult], assignment: Assignment, seconds: float,
                  graded_now: int | None = None) -> str:
    """A plain-text table for the terminal. ``graded_now``: how many of ``results`` this run graded (the
    rest were resumed), for the rate."""
    n = len(results)
    now = n if graded_now is None else graded_now
    rate = f", {now / seconds * 60:.1f} per minute" if seconds > 0 and now else ""
    lines = [f"graded {now} submissions in {seconds:.1f} s{rate}" + (f" ({n - now} resumed)" if n > now else "")]
    if not results:
        return lines[0]
    status = Counter(r.status for r in results)
    lines.append("status:   " + ", ".join(f"{s} {k}" for s, k in sorted(status.items())))
    scored = [r for r in results if r.status != "error"]  # a grader failure has no score
    if scored:
        mean = sum(r.total for r in scored) / len(scored)
        full = sum(r.total == r.max_total for r in scored)
        lines.append(f"score:    mean {mean:.2f} / {assignment.max_points:g}; full marks {full} of {len(scored)}")
    width = max(len(ex.id) for ex in assignment.exercises)
    lines.append(f"{'exercise':<{width}}  mean points  full marks  most common result")
    for ex in assignment.exercises:
        rows = [e for r in scored for e in r.exercises if e.id == ex.id]
        if not rows:
            continue
        mean = sum(e.points for e in rows) / len(rows)
        full = sum(e.points == e.max_points for e in rows)
        kind, count = Counter(e.kind for e in rows).most_common(1)[0]
        lines.append(f"{ex.id:<{width}}  {mean:5.2f} / {ex.points:<4g} {full:4d} / {len(rows):<4d} "
                     f"{kind.replace('_', ' ')} ({count})")
    mistakes = diagnosed_mistakes(scored, assignment).most_common(TOP_MISTAKES)
    if mistakes:
        lines.append("most frequent diagnosed mistakes:")
        lines += [f"  {k:4d} x {ex_id}: {message[:110]}" for (ex_id, message), k in mistakes]
    timed = [r.timing for r in results if r.timing]
    if timed:
        lines.append("mean seconds per submission: " + ", ".join(
            f"{s.replace('_', ' ')} {sum(t.get(s, 0.0) for t in timed) / len(timed):.2f}" for s in STAGES))
    return "\n".join(lines)


def histogram_path(gradebook: Path) -> Path:
    """The figure beside the gradebook: ``gradebook.csv`` -> ``gradebook.scores.png``."""
    return gradebook.with_name(gradebook.stem + ".scores.png")


def score_histogram(results: list[SubmissionResult], assignment: Assignment, path: Path) -> Path:
    """A histogram of the total scores (submissions with status ``error`` have none and are counted in the
    caption), written as a PNG at ``path``. Uses matplotlib's object API: no pyplot state, no display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scored = [r.total for r in results if r.status != "error"]
    errors = len(results) - len(scored)
    top = assignment.max_points
    fig = Figure(figsize=(6.4, 3.6), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bins = min(20, max(1, int(top) + 1)) if top else 1
    ax.hist(scored, bins=bins, range=(0, top if top else 1), color="#3b6ea8", edgecolor="white")
    ax.set_xlabel(f"total score (out of {top:g})")
    ax.set_ylabel("submissions")
    ax.yaxis.get_major_locator().set_params(integer=True)
    mean = sum(scored) / len(scored) if scored else 0.0
    ax.set_title(f"{assignment.slug}: {len(scored)} scored, mean {mean:.2f}"
                 + (f", {errors} grader errors not shown" if errors else ""), fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return path
