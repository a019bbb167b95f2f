"""Copying is not solving: the package the grading child sees has no reference implementations.

For each graded assignment the grader builds, once per run, a copy of the installed ``tinyinterp``
package in a folder it owns, in which the body of every reference implementation of the chapter
(``Exercise.reference`` of each exercise, found by module and qualified name with :mod:`ast`) is replaced by
``raise ReferenceUnavailable("<module>.<qualname>")``. No original body stays anywhere in the copy (the
source is rewritten before anything is compiled, and ``__pycache__`` is never copied). The sandbox mounts
this copy over every place the real package lives (so no import route, finder or path trick brings the
original back) while the grading process keeps computing the expected outputs with the real package.

A learner function that reaches a reference by any route (a direct call, ``importlib`` with split strings,
``get_exercise(...).reference``, a library class that calls it, exec-ing the package's source) raises
:class:`ReferenceUnavailable`, and :func:`copied_reference_message` turns that into 0 points and a message.
A reference that cannot be rewritten this way (a lambda, a nested function, a name bound by assignment)
raises :class:`UnpoisonableReference`: the test suite checks every registered exercise, so it fails at
test time, never silently at grading time.
"""

from __future__ import annotations

import ast
import atexit
import compileall
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

PACKAGE = "tinyinterp"
KIND = "copied"  # the ExerciseResult kind for an exercise that reached a reference


class ReferenceUnavailable(Exception):
    """Raised by a reference implementation inside the grading sandbox (its message: the reference's
    dotted name)."""


class UnpoisonableReference(Exception):
    """A reference implementation that :func:`poison_source` cannot find or rewrite."""


def reference_name(fn) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def reference_targets(exercises) -> dict[str, set[str]]:
    """``{module: {qualname, ...}}`` of the references of ``exercises`` and the functions each withholds
    with it (``Exercise.withheld``); all must live in this package."""
    targets: dict[str, set[str]] = {}
    for ex, fn in ((ex, fn) for ex in exercises for fn in (ex.reference, *getattr(ex, "withheld", ()))):
        module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
        if not module or not (module == PACKAGE or module.startswith(PACKAGE + ".")):
            raise UnpoisonableReference(f"exercise {ex.id!r}: its reference {fn!r} is not defined in the "
                                        f"{PACKAGE} package, so grading cannot withhold it")
        if "<" in qualname:  # <lambda>, <locals>
            raise UnpoisonableReference(f"exercise {ex.id!r}: its reference {module}.{qualname} is not a "
                                        f"module-level function or method; define it with `def` at module level")
        targets.setdefault(module, set()).add(qualname)
    return targets


def _find_def(tree: ast.Module, qualname: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    body, node = tree.body, None
    for part in qualname.split("."):
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            return None
        body = node.body
    return node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None


def _find_class_body(tree: ast.Module, qualname: str) -> list[ast.stmt]:
    body = tree.body
    for part in qualname.split("."):
        body = next(n for n in body if isinstance(n, ast.ClassDef) and n.name == part).body
    return body


def _bound_names(stmt: ast.stmt) -> set[str]:
    """The names a statement of a module or class body binds (defs, assignments, imports)."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
    return {n.id for t in targets if t is not None for n in ast.walk(t) if isinstance(n, ast.Name)}


def _raise_statement(dotted: str) -> str:
    return (f"raise __import__({__name__!r}, fromlist=['ReferenceUnavailable'])"
            f".ReferenceUnavailable({dotted!r})")


def poison_source(source: str, module: str, qualnames: set[str]) -> str:
    """``source`` with the body of each function ``qualnames`` replaced by a ``raise``; everything else
    (decorators, signature, the rest of the module and its line numbers) unchanged."""
    tree = ast.parse(source)
    spans = []
    for q in sorted(qualnames):
        node = _find_def(tree, q)
        if node is None:
            raise UnpoisonableReference(f"{module}.{q}: no `def` of that name at that place in the module's source")
        scope = tree.body if "." not in q else _find_class_body(tree, q.rsplit(".", 1)[0])
        if sum(node.name in _bound_names(stmt) for stmt in scope) != 1:
            raise UnpoisonableReference(f"{module}.{q}: its name is bound more than once in its scope (another "
                                        f"def, an assignment or an import), so the function called may not be "
                                        f"the one rewritten")
        first, last = node.body[0], node.body[-1]
        spans.append((first.lineno, first.col_offset, last.end_lineno, last.end_col_offset, f"{module}.{q}"))
    out = _replace_spans(source, [(*span[:4], _raise_statement(span[4])) for span in spans])
    _verify(out, module, qualnames)
    return out


def _replace_spans(source: str, spans: list[tuple[int, int, int, int, str]]) -> str:
    """``source`` with each (line, col, end line, end col) span (ast positions) replaced by its text."""
    lines = source.encode("utf-8").splitlines(keepends=True)  # ast's column offsets count UTF-8 bytes
    for l0, c0, l1, c1, text in sorted(spans, reverse=True):  # bottom-up: earlier positions stay valid
        head, tail = lines[l0 - 1][:c0], lines[l1 - 1][c1:]
        lines[l0 - 1:l1] = [head + text.encode("utf-8") + tail]
    return b"".join(lines).decode("utf-8")


def withhold_everything(source: str, module: str) -> str:
    """``source`` with the body of every function, method and lambda replaced by a ``raise`` (lambdas: a
    call that raises). For the exercise definitions (``tinyinterp.exercises.*``): the mistake catalogue, its
    helpers and the case generators are grading data, used only by the grading process, so in the sandbox
    none of them computes anything (a catalogued mistake, adapted, can be the right answer)."""
    tree = ast.parse(source)
    factories = _called_at_import(tree)  # e.g. a function that builds a mistake's function: keep, withhold what it builds
    spans, covered = [], []
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    for node in sorted(nodes, key=lambda n: (n.lineno, n.col_offset)):
        if any(a <= (node.lineno, node.col_offset) and (node.end_lineno, node.end_col_offset) <= b for a, b in covered):
            continue  # inside a body already withheld
        if node in factories:
            continue
        covered.append(((node.lineno, node.col_offset), (node.end_lineno, node.end_col_offset)))
        name = f"{module}.{getattr(node, 'name', '<lambda>')}"
        if isinstance(node, ast.Lambda):
            b = node.body
            spans.append((b.lineno, b.col_offset, b.end_lineno, b.end_col_offset, f"({_raising_call(name)})"))
        else:
            first, last = node.body[0], node.body[-1]
            spans.append((first.lineno, first.col_offset, last.end_lineno, last.end_col_offset, _raise_statement(name)))
    out = _replace_spans(source, spans)
    kept = {n.name for n in factories}
    for node in ast.walk(ast.parse(out)):  # verify: nothing of any other body is left
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in kept and not (
                len(node.body) == 1 and isinstance(node.body[0], ast.Raise)):
            raise UnpoisonableReference(f"{module}.{node.name}: withholding its body failed")
    return out


def _called_at_import(tree: ast.Module) -> set:
    """The module-level ``def``s that the module calls while it is imported (outside any function body)."""
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    called, stack = set(), list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(getattr(node, "decorator_list", []))  # decorators run at import; bodies do not
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in defs:
            called.add(defs[node.func.id])
        stack.extend(ast.iter_child_nodes(node))
    return called


def withheld(dotted: str):
    """What a withheld lambda's body calls."""
    raise ReferenceUnavailable(dotted)


def _raising_call(dotted: str) -> str:
    return f"__import__({__name__!r}, fromlist=['withheld']).withheld({dotted!r})"


def _verify(source: str, module: str, qualnames: set[str]) -> None:
    tree = ast.parse(source)
    for q in qualnames:
        node = _find_def(tree, q)
        if node is None or len(node.body) != 1 or not isinstance(node.body[0], ast.Raise):
            raise UnpoisonableReference(f"{module}.{q}: rewriting its body failed")


def _module_file(package_dir: Path, module: str) -> Path:
    parts = module.split(".")[1:]
    path = package_dir.joinpath(*parts)
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    raise UnpoisonableReference(f"{module}: no source file under {package_dir} (grading needs the package's "
                                f".py sources, not only compiled files)")


def installed_package_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"cannot find the installed {PACKAGE} package")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def build(exercises, dest: Path, source: Path | None = None) -> Path:
    """Write the graded copy of the package into ``dest/tinyinterp`` and return that folder."""
    source = source or installed_package_dir()
    targets = reference_targets(exercises)
    out = dest / PACKAGE
    shutil.copytree(source, out, ignore=_not_package_source, symlinks=False)
    for module, qualnames in targets.items():
        f = _module_file(out, module)
        f.write_text(poison_source(f.read_text(encoding="utf-8"), module, qualnames), encoding="utf-8")
    for f in sorted((out / "exercises").glob("*.py")):  # the mistake catalogue and case generators
        module = f"{PACKAGE}.exercises" + ("" if f.stem == "__init__" else f".{f.stem}")
        f.write_text(withhold_everything(f.read_text(encoding="utf-8"), module), encoding="utf-8")
    _record_source_hashes(source, out)
    for p in [out, *out.rglob("*")]:  # readable by the sandbox's uid, writable by no one else
        p.chmod(0o755 if p.is_dir() else 0o644)
    compileall.compile_dir(str(out), quiet=2, workers=1)  # the poisoned sources only (nothing else exists)
    for p in out.rglob("__pycache__"):
        for q in [p, *p.iterdir()]:
            q.chmod(0o755 if q.is_dir() else 0o644)
    return out


PACKAGE_DATA = {("grading", "assignments.json")}  # the package's non-Python files (pyproject's package-data)


def _not_package_source(folder: str, names: list[str]) -> set[str]:
    """copytree's ignore: only the package's ``.py`` files, its declared data files, and subpackages (folders
    with an ``__init__.py``) are copied; nothing else that lies in the package folder (bytecode, a folder of
    submissions or feedback someone put there, a symlink) reaches the sandbox."""
    here, skipped = Path(folder), set()
    for name in names:
        path = here / name
        if path.is_symlink():
            skipped.add(name)
        elif path.is_dir():
            if name == "__pycache__" or not (path / "__init__.py").is_file():
                skipped.add(name)
        elif not (name.endswith(".py") or (here.name, name) in PACKAGE_DATA):
            skipped.add(name)
    return skipped


def _record_source_hashes(source: Path, out: Path) -> None:
    """Cache keys hash some source files (:data:`tinyinterp.checkpoint.SOURCE_SETS`); the copy records their
    hashes as shipped, so the sandbox finds the same cached models (a hash reveals nothing of the code)."""
    from ..checkpoint import SOURCE_HASHES_FILE, SOURCE_SETS

    table = {}
    for kind, names in SOURCE_SETS.items():
        h = hashlib.sha256()
        for name in names:
            h.update((source / name).read_bytes())
        table[kind] = h.hexdigest()
    (out / SOURCE_HASHES_FILE).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


# ----- one graded copy per assignment per grading process, removed at exit --------------------------
_lock = threading.Lock()
_built: dict[str, Path] = {}
_run: list = []  # [(this process's folder, the fd of its liveness lock)]
STALE_AFTER_S = 60.0


def _run_dir() -> Path:
    """This process's folder under the grader's private state folder; a dead run's folder (its lock free,
    older than :data:`STALE_AFTER_S`) is removed first."""
    from .sandbox import _lock, _private_dir, state_root

    if not _run:
        runs = _private_dir(state_root() / "runs")
        for old in runs.iterdir():
            lock = old / ".alive"
            try:
                if time.time() - os.lstat(old).st_mtime < STALE_AFTER_S or not old.is_dir() or old.is_symlink():
                    continue
                fd = _lock(lock) if lock.exists() else None
            except OSError:
                continue
            if fd is not None:
                shutil.rmtree(old, ignore_errors=True)
                os.close(fd)
        d = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=runs))
        fd = _lock(d / ".alive")
        _run.append((d, fd))
        atexit.register(shutil.rmtree, d, True)
    return _run[0][0]


def graded_package(assignment) -> Path:
    """The graded copy of the package for ``assignment`` (built on first use in this process)."""
    with _lock:
        if assignment.slug not in _built:
            dest = _run_dir() / assignment.slug
            dest.mkdir(mode=0o755)
            dest.chmod(0o755)
            _built[assignment.slug] = build(assignment.exercises, dest)
        return _built[assignment.slug]


# ----- the judge's side: an exercise whose function reached a reference earns 0 ---------------------
def copied_reference_message(case_messages, exercises) -> str | None:
    """The feedback for an exercise when any of its cases raised :class:`ReferenceUnavailable` (by type
    name, as the child reports it), else None. ``exercises``: the assignment's, to name the reference."""
    known = {reference_name(fn) for ex in exercises for fn in (ex.reference, *getattr(ex, "withheld", ()))}
    for m in case_messages:
        if not isinstance(m, dict) or m.get("error_type") != ReferenceUnavailable.__name__:
            continue
        last = str(m.get("traceback", "")).strip().splitlines()[-1:] or [""]
        name = last[0].split(":", 1)[1].strip() if ":" in last[0] else ""
        if name.startswith(f"{PACKAGE}.exercises"):
            what = f"the book's grading code (`{name}`, e.g. its catalogue of mistakes)"
        else:
            what = "the book's reference implementation " + (f"`{name}`" if name in known else "of this chapter")
        return (f"Your function reaches {what}; copying is not solving. "
                f"Write the computation yourself (calling torch built-ins is fine). 0 points for this exercise.")
    return None
