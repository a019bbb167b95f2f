"""Paths and the table of contents, shared by the site tests (imported by name: tests/site is on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(os.environ.get("TINYINTERP_SITE_DIR", ROOT / "_build" / "html"))
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
BROWSER_FIX = "run `make browser-deps` (it installs Debian's chromium and chromium-driver)"


def toc_files() -> list[str]:
    """Every document of _toc.yml (root first), as paths without suffix, e.g. 'chapters/02_attention'."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(node) -> None:
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)

    walk(toc)
    return [str(Path(f).with_suffix("")) if Path(f).suffix in (".md", ".ipynb") else f for f in files]


def chapter_files() -> list[str]:
    """The notebook chapters of _toc.yml (the pages with executed code, maths and figures)."""
    return [f for f in toc_files() if f.startswith("chapters/")]
