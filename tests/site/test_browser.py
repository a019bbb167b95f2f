"""The built site in a real browser: maths typeset by the vendored MathJax, figures loaded with
their captions, and not a single request to anywhere but the local server.

Needs `make site` first, and Chromium with chromedriver (`make browser-deps`); `make test-site`
does both. See conftest.py for the server and the browser.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from site_helpers import chapter_files, toc_files

# Wait until the page is really finished: MathJax typeset (when the page loads it), every image
# loaded or failed, every web font loaded. Returns MathJax's state.
SETTLE_JS = """
const done = arguments[arguments.length - 1];
(async () => {
  let mathjax = "not on this page";
  if (document.querySelector('script[src*="mathjax"]')) {
    for (let i = 0; i < 600 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++) {
      await new Promise(r => setTimeout(r, 50));
    }
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      await MathJax.startup.promise;
      mathjax = "typeset";
    } else {
      mathjax = "loaded no MathJax object (did _static/mathjax/tex-chtml.js load?)";
    }
  }
  await Promise.all(Array.from(document.images).map(img => img.complete ? null :
    new Promise(r => { img.addEventListener("load", r); img.addEventListener("error", r); })));
  await document.fonts.ready;
  return mathjax;
})().then(done, e => done("error while waiting: " + e));
"""

# What the page looks like once settled.
INSPECT_JS = """
const text = (el, n) => (el ? el.textContent.replace(/\\s+/g, " ").trim().slice(0, n || 100) : "");
const mathScript = document.querySelector('script[src*="mathjax"]');
return {
  mathjax_src: mathScript ? mathScript.src : null,
  n_mjx: document.querySelectorAll("mjx-container").length,
  math_untypeset: Array.from(document.querySelectorAll(".math"))
      .filter(e => !e.querySelector("mjx-container")).map(e => text(e)),
  // TeX errors: <mjx-merror>, or an undefined macro, which MathJax shows as its name in red.
  math_errors: Array.from(document.querySelectorAll("mjx-merror"))
      .map(e => e.getAttribute("data-mjx-error") || text(e))
      .concat(Array.from(document.querySelectorAll('mjx-assistive-mml mtext[mathcolor="red"]'))
      .filter(e => e.textContent.startsWith("\\\\")).map(e => "undefined macro " + e.textContent)),
  output_images: Array.from(document.querySelectorAll(".cell_output img"))
      .map(img => ({src: img.currentSrc || img.src, complete: img.complete, width: img.naturalWidth})),
  images: Array.from(document.images)
      .map(img => ({src: img.currentSrc || img.src, complete: img.complete, width: img.naturalWidth})),
  figures: Array.from(document.querySelectorAll("article figure, main figure"))
      .map(f => ({id: f.id, n_img: f.querySelectorAll("img").length, in_output: !!f.closest(".cell_output"),
                  caption: text(f.querySelector("figcaption .caption-text") || f.querySelector("figcaption"), 200)})),
  resources: performance.getEntriesByType("navigation").concat(performance.getEntriesByType("resource"))
      .map(e => e.name),
};
"""


@dataclass
class Page:
    url: str
    mathjax: str
    info: dict
    requested: list[str] = field(default_factory=list)  # every URL the page asked for (DevTools log)
    failed: list[str] = field(default_factory=list)  # "URL: why" for requests that failed or got >= 400
    console_errors: list[str] = field(default_factory=list)


LOCAL_SCHEMES = ("data", "blob", "about")
BROWSER_INTERNAL = ("chrome", "chrome-extension", "chrome-untrusted", "devtools")  # never the network


def _is_local(url: str, origin: str) -> bool:
    scheme = url.split(":", 1)[0]
    return url.startswith(origin + "/") or url == origin or scheme in LOCAL_SCHEMES + BROWSER_INTERNAL


@pytest.fixture(scope="session")
def pages(browser, site_server):
    """Load each page once per session and remember what happened."""
    cache: dict[str, Page] = {}

    def load(docname: str) -> Page:
        if docname in cache:
            return cache[docname]
        browser.get("about:blank")  # leave the previous page (or the new-tab page) behind
        browser.get_log("performance")  # and drain its logs
        browser.get_log("browser")
        url = f"{site_server}/{docname}.html"
        browser.get(url)
        mathjax = browser.execute_async_script(SETTLE_JS)
        info = browser.execute_script(INSPECT_JS)
        page = Page(url, mathjax, info)
        urls_by_id: dict[str, str] = {}
        for entry in browser.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            method, params = msg.get("method", ""), msg.get("params", {})
            if method == "Network.requestWillBeSent":
                urls_by_id[params["requestId"]] = params["request"]["url"]
                page.requested.append(params["request"]["url"])
            elif method == "Network.webSocketCreated":
                page.requested.append(params["url"])
            elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
                page.failed.append(f"{params['response']['url']}: HTTP {params['response']['status']}")
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                page.failed.append(f"{urls_by_id.get(params['requestId'], '?')}: {params.get('errorText')}")
        page.failed = [f for f in page.failed if not f.startswith(f"{site_server}/favicon.ico")]
        page.console_errors = [e["message"] for e in browser.get_log("browser")
                               if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]
        cache[docname] = page
        return page

    return load


@pytest.mark.parametrize("docname", toc_files())
def test_page_loads_nothing_from_the_network(pages, site_server, docname):
    page = pages(docname)
    outside = sorted({u for u in page.requested + page.info["resources"] if not _is_local(u, site_server)})
    assert not outside, f"{docname}: requests that left the machine (vendor these into _static/):\n" + "\n".join(outside)
    assert page.requested, f"{docname}: the DevTools network log is empty; the check above proved nothing"
    assert not page.failed, f"{docname}: requests that failed:\n" + "\n".join(page.failed)
    assert not page.console_errors, f"{docname}: errors in the browser console:\n" + "\n".join(page.console_errors)


@pytest.mark.parametrize("docname", toc_files())
def test_every_formula_is_typeset(pages, docname):
    page = pages(docname)
    if page.info["mathjax_src"] is None:
        assert not page.info["math_untypeset"], f"{docname} has maths but does not load MathJax"
        return
    assert page.mathjax == "typeset", f"{docname}: MathJax {page.mathjax}"
    assert not page.info["math_untypeset"], (f"{docname}: formulas MathJax did not typeset: "
                                              f"{page.info['math_untypeset'][:5]}")
    assert not page.info["math_errors"], f"{docname}: TeX errors in {page.info['math_errors'][:5]}"


@pytest.mark.parametrize("docname", chapter_files())
def test_chapter_maths_is_rendered_by_the_local_mathjax(pages, site_server, docname):
    page = pages(docname)
    assert page.info["mathjax_src"], f"{docname}: the page loads no MathJax (has the chapter no maths?)"
    assert page.info["mathjax_src"].split("?")[0] == f"{site_server}/_static/mathjax/tex-chtml.js", (
        f"{docname}: MathJax comes from {page.info['mathjax_src']}, not the vendored _static/mathjax/")
    assert page.mathjax == "typeset", f"{docname}: MathJax {page.mathjax}"
    assert page.info["n_mjx"] > 0, f"{docname}: no <mjx-container>: MathJax rendered no formula"
    fonts = [u for u in page.requested if "/_static/mathjax/output/chtml/fonts/" in u]
    assert fonts, f"{docname}: MathJax loaded none of its fonts from _static/mathjax/output/chtml/fonts/"


@pytest.mark.parametrize("docname", chapter_files())
def test_chapter_figures_are_loaded_and_captioned(pages, docname):
    info = pages(docname).info
    outputs = info["output_images"]
    assert outputs, f"{docname}: no notebook output images (was the notebook executed?)"
    broken = [i["src"] for i in info["images"] if not i["complete"] or i["width"] == 0]
    assert not broken, f"{docname}: images that did not load: {broken}"
    figures = info["figures"]
    assert any(f["in_output"] and f["n_img"] for f in figures), (
        f"{docname}: no output figure with a caption; give a plotting cell the metadata "
        '{"mystnb": {"figure": {"caption": "...", "name": "fig-..."}}}')
    uncaptioned = [f["id"] or "(no id)" for f in figures if not f["caption"]]
    assert not uncaptioned, f"{docname}: figures without a caption: {uncaptioned}"
