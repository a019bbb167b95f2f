"""The built site (`make site`): one page per _toc.yml entry, and nothing that loads from the network.

Static checks of _build/html; test_browser.py checks the same site in a browser.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from site_helpers import toc_files

# Pages Sphinx writes besides the documents: the index redirect, the general index and search.
SPHINX_PAGES = {"index", "genindex", "search"}
# <link rel=...> values that only name another page; everything else (stylesheet, preload, icon,
# manifest, preconnect, ...) makes the browser fetch or contact the URL.
NAVIGATION_RELS = {"alternate", "author", "canonical", "help", "index", "license", "next", "prev", "search"}
EXTERNAL = re.compile(r"^\s*(https?:)?//", re.I)
CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])\s*((?:https?:)?//[^'")\s]+)""", re.I)
# Inline scripts that name a remote script, stylesheet or font (e.g. a CDN loader).
SCRIPT_URL = re.compile(r"""(?:https?:)?//[^\s'"<>]+\.(?:m?js|css|woff2?|ttf|otf)\b""", re.I)
DATA_SCRIPT_TYPES = ("json", "text/x-thebe-config")


def built_pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if not p.relative_to(site).parts[0].startswith("_"))


class ResourceScanner(HTMLParser):
    """Collects every URL in one page that the browser would fetch on its own."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.fetched: list[tuple[str, str]] = []  # (what, url)
        self.mathjax_scripts: list[str] = []
        self._script_type: str | None = None
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "script":
            self._script_type = a.get("type", "")
            if "src" in a:
                self.fetched.append(("<script src>", a["src"]))
                if "/mathjax/" in a["src"]:
                    self.mathjax_scripts.append(a["src"])
        elif tag == "link":
            rels = set(a.get("rel", "").lower().split())
            if not rels <= NAVIGATION_RELS:
                self.fetched.append((f"<link rel={a.get('rel')}>", a.get("href", "")))
        elif tag in ("img", "source", "iframe", "embed", "video", "audio", "track", "input"):
            for key in ("src", "poster"):
                if key in a:
                    self.fetched.append((f"<{tag} {key}>", a[key]))
            for key in ("srcset", "imagesrcset"):
                for candidate in a.get(key, "").split(","):
                    if candidate.strip():
                        self.fetched.append((f"<{tag} {key}>", candidate.split()[0]))
        elif tag == "object" and "data" in a:
            self.fetched.append(("<object data>", a["data"]))
        elif tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            self.fetched.append(("<meta refresh>", a.get("content", "").partition("url=")[2]))
        elif tag == "style":
            self._in_style = True
        if "style" in a:
            self.fetched += [(f"<{tag} style>", u) for u in CSS_URL.findall(a["style"])]

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script_type = None
        elif tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.fetched += [("<style>", u) for u in CSS_URL.findall(data)]
        elif self._script_type is not None and not any(t in self._script_type for t in DATA_SCRIPT_TYPES):
            self.fetched += [("inline <script>", u) for u in SCRIPT_URL.findall(data)]


def scan(page: Path) -> ResourceScanner:
    scanner = ResourceScanner()
    scanner.feed(page.read_text(encoding="utf-8"))
    return scanner


def test_one_html_page_per_toc_entry(site_dir):
    expected = set(toc_files())
    built = {str(p.relative_to(site_dir).with_suffix("").as_posix()) for p in built_pages(site_dir)} - SPHINX_PAGES
    missing, extra = sorted(expected - built), sorted(built - expected)
    assert not (missing or extra), (
        f"_toc.yml entries with no page in {site_dir} (did `make site` fail?): {missing}\n"
        f"pages that _toc.yml does not list (a stale build? `make clean`): {extra}")


def test_index_redirects_to_the_root_page(site_dir):
    root = toc_files()[0]
    assert f"{root}.html" in (site_dir / "index.html").read_text(), "index.html does not lead to the root page"


def test_no_page_loads_anything_from_the_network(site_dir):
    problems = []
    for page in built_pages(site_dir):
        for what, url in scan(page).fetched:
            if EXTERNAL.match(url):
                problems.append(f"{page.relative_to(site_dir)}: {what} {url}")
    assert not problems, "built pages that load from another server (vendor it into _static/):\n" + "\n".join(problems)


def test_no_stylesheet_imports_from_the_network(site_dir):
    """Web fonts and @imports in the site's CSS files (themes like to pull fonts from a CDN)."""
    problems = []
    for css in sorted((site_dir / "_static").rglob("*.css")):
        for url in CSS_URL.findall(css.read_text(encoding="utf-8", errors="replace")):
            problems.append(f"{css.relative_to(site_dir)}: {url}")
    assert not problems, "stylesheets that fetch from another server:\n" + "\n".join(problems)


def test_mathjax_is_vendored_and_loaded_once(site_dir):
    mathjax = site_dir / "_static" / "mathjax"
    assert (mathjax / "tex-chtml.js").is_file(), "no _static/mathjax/tex-chtml.js in the site: run `make setup`"
    assert any((mathjax / "output" / "chtml" / "fonts").rglob("*.woff*")), "MathJax's fonts were not copied"
    pages_with_maths = 0
    for page in built_pages(site_dir):
        scripts = scan(page).mathjax_scripts
        assert len(scripts) <= 1, (f"{page.relative_to(site_dir)} loads {len(scripts)} MathJax scripts "
                                   f"(is _ext/offline_site.py enabled in _config.yml?): {scripts[:5]}")
        for src in scripts:
            assert src.split("?")[0].endswith("_static/mathjax/tex-chtml.js"), f"{page}: MathJax from {src}"
            pages_with_maths += 1
    assert pages_with_maths, "no page loads MathJax, yet the book has maths"


@pytest.mark.parametrize("docname", [f for f in toc_files() if f.startswith("chapters/")])
def test_chapter_was_executed(site_dir, docname):
    """A chapter page shows its outputs: myst-nb executed the notebook (stored without outputs)."""
    text = (site_dir / f"{docname}.html").read_text(encoding="utf-8")
    assert 'class="cell_output' in text, f"{docname}: no cell outputs in the page; did its execution fail?"
