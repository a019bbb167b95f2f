"""Ready-to-upload autograders for one chapter (``tinyinterp autograder PLATFORM SLUG -o DIR``).

Each platform module has ``export(slug, out, options)`` (run on the instructor's machine) and a
``main()`` run entry point (``python -m tinyinterp.grading.platforms.<module>``, run on the platform),
which grades with the same core as ``tinyinterp grade``. An export never contains a solution or a
reference notebook: the installed package carries the grading data (``assignments.json``).
"""

from __future__ import annotations

from pathlib import Path

from .common import ExportError, ExportOptions, RunSettings, check_wheel, prepare_out

PLATFORMS = {"gradescope": "gradescope", "prairielearn": "prairielearn", "github-classroom": "github_classroom"}


def export(platform: str, slug: str, out: Path, options: ExportOptions) -> list[Path]:
    """Write ``platform``'s autograder for ``slug`` into ``out`` (new or empty); returns the files."""
    import importlib

    from ..assignment import load_assignment

    if platform not in PLATFORMS:
        raise ExportError(f"unknown platform {platform!r}; one of: {', '.join(PLATFORMS)}")
    try:
        load_assignment(slug)
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(str(e)) from None
    check_wheel(options.wheel)
    module = importlib.import_module(f"{__name__}.{PLATFORMS[platform]}")
    prepare_out(out)
    return module.export(slug, out, options)


__all__ = ["PLATFORMS", "ExportError", "ExportOptions", "RunSettings", "export"]
