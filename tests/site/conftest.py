"""Shared set-up for the tests of the built site (`make test-site` runs `make site` first).

``site_dir`` is the built HTML; ``site_server`` serves it with ``python -m http.server`` on
127.0.0.1; ``browser`` is Debian's headless Chromium driven by selenium through the system
chromedriver (selenium never downloads a driver). Nothing here is skipped: a missing build,
browser or driver is a failure that says what to run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from site_helpers import BROWSER_FIX, CHROMEDRIVER, CHROMIUM, SITE


@pytest.fixture(scope="session")
def site_dir() -> Path:
    if not (SITE / "index.html").is_file():
        pytest.fail(f"no built site in {SITE}: run `make site` first (`make test-site` does both)")
    return SITE


@pytest.fixture(scope="session")
def site_server(site_dir: Path):
    """The origin (``http://127.0.0.1:PORT``) of ``python -m http.server`` serving the built site."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(site_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        m = re.search(r"port (\d+)", line)
        if not m:
            pytest.fail(f"python -m http.server did not start: {line!r}")
        origin = f"http://127.0.0.1:{m.group(1)}"
        _wait_until_serving(origin)
        yield origin
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_until_serving(origin: str, timeout: float = 10.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(origin + "/index.html", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    if missing:
        pytest.fail(f"the browser test needs {' and '.join(missing)}, which is missing: {BROWSER_FIX}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: run `make setup` (it installs the dev extra of pyproject.toml)")

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", "--window-size=1280,1024",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
                 # Belt and braces: no host name but 127.0.0.1 resolves, so a stray request fails
                 # instead of leaving the machine. The DevTools log below still records the attempt.
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # An explicit chromedriver path: selenium's driver manager never runs, so nothing is downloaded.
    service = Service(executable_path=CHROMEDRIVER, log_output=subprocess.DEVNULL)
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except Exception as e:  # noqa: BLE001 - report any start-up failure with the fix
        pytest.fail(f"could not start {CHROMIUM} through {CHROMEDRIVER}: {type(e).__name__}: {e}\n"
                    f"If chromium or chromedriver is missing or their versions differ, {BROWSER_FIX}.")
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
