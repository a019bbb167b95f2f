"""A Sphinx extension that keeps the built site offline: every script and stylesheet is served
by the site itself, and MathJax is loaded once, from ``_static/``.

It fixes two things Jupyter Book 1.x does by default:

- Jupyter Book adds *every* ``.js`` and ``.css`` file under ``_static/`` to every page. The
  vendored MathJax (``_static/mathjax/``, some 80 files) would then be loaded as scripts on every
  page, several MathJax bundles at once. Only ``mathjax_path``, added by ``sphinx.ext.mathjax``
  to the pages that have maths, is kept.
- sphinx-thebe (always enabled by Jupyter Book) puts a loader for thebe from unpkg.com on every
  page. The book has no live-code button (``launch_buttons.thebe: false``), so it is removed.

Any other script or stylesheet from another server is a build warning, hence an error under
``--warningiserror``; so is a missing MathJax (run ``make setup``).
"""

from __future__ import annotations

from pathlib import Path

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

EXTERNAL = ("http://", "https://", "//")
VENDORED_DIRS = ("mathjax/",)  # git-ignored, filled by the Makefile; only mathjax_path is loaded


def _is_external(filename: str) -> bool:
    return filename.lower().startswith(EXTERNAL)


def _asset_name(entry) -> str:
    return str(entry[0] if isinstance(entry, (tuple, list)) else entry)


def _check_config(app: Sphinx, config) -> None:
    if _is_external(config.mathjax_path or ""):
        logger.warning(f"offline_site: mathjax_path is a URL ({config.mathjax_path}); "
                       "point it at the vendored copy, mathjax/tex-chtml.js")
    # Undo Jupyter Book's scan of _static/: the vendored files are loaded by their own loaders.
    config.html_js_files = [e for e in config.html_js_files if not _asset_name(e).startswith(VENDORED_DIRS)]
    config.html_css_files = [e for e in config.html_css_files if not _asset_name(e).startswith(VENDORED_DIRS)]


def _prune_assets(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    for key, kind in (("script_files", "script"), ("css_files", "stylesheet")):
        assets = context.get(key)
        if not isinstance(assets, list):
            continue
        keep = []
        for asset in assets:
            name = str(getattr(asset, "filename", asset) or "")
            body = getattr(asset, "attributes", {}).get("body", "") or ""
            if name.endswith("sphinx-thebe.js") or "THEBE_JS_URL" in body:
                continue  # thebe is off; its loader would fetch thebe from unpkg.com
            if _is_external(name):
                logger.warning(f"offline_site: page {pagename!r} would load the {kind} {name} from the "
                               "network; vendor it into _static/ instead", location=pagename)
            keep.append(asset)
        assets[:] = keep


def _check_mathjax_copied(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html" or _is_external(app.config.mathjax_path or ""):
        return
    path = Path(app.outdir) / "_static" / app.config.mathjax_path
    if not path.is_file():
        logger.warning(f"offline_site: {path} is missing, so no page can typeset its maths; "
                       "run `make setup` (it fetches MathJax into _static/mathjax/)")


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _check_config)  # before Sphinx's own handler (priority 800)
    # Late (priority > 500): after sphinx.ext.mathjax and myst-nb have added their per-page assets.
    app.connect("html-page-context", _prune_assets, priority=900)
    app.connect("build-finished", _check_mathjax_copied)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
