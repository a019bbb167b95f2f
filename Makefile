# Interpretability from Scratch: `make book` builds the site, `make test` runs every test.
# Both set everything up from a clean clone (nothing needed but python3, and npm/apt for the
# vendored MathJax and the browser test).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
TORCH_INDEX_URL ?=# e.g. https://download.pytorch.org/whl/cpu on hosts where PyPI's torch is the CUDA build
MATHJAX_VERSION := 3.2.2
MATHJAX := _static/mathjax/tex-chtml.js
JOBS ?= 2
export TINYINTERP_CACHE ?= $(HOME)/.cache/tinyinterp
export OMP_NUM_THREADS ?= 1

.PHONY: help setup book site test test-unit test-notebooks test-site browser-deps sandbox-deps bench claims clean

help:
	@echo "make book   - set up .venv, execute every chapter, build the site into _build/html"
	@echo "make test   - set up .venv, run unit tests, execute every notebook, build and browser-test the site"
	@echo "make bench  - run benchmarks/ (JSON on stdout)"
	@echo "make claims - retrain every model for 3 seed offsets x 1, 2 threads; check every claim (~25 min)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=70.1"
	$(PY) -m pip install --quiet "$(TORCH_PIN)" $(if $(TORCH_INDEX_URL),--index-url "$(TORCH_INDEX_URL)")
	$(PY) -m pip install --quiet -e ".[book,dev,grade]" "$(TORCH_PIN)"
	touch $@

setup: $(STAMP) $(MATHJAX)

# MathJax from the npm registry, served by the site itself: no CDN at view time.
$(MATHJAX):
	rm -rf _static/mathjax .mathjax-tmp && mkdir -p _static .mathjax-tmp
	cd .mathjax-tmp && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null && tar xzf mathjax-$(MATHJAX_VERSION).tgz
	mv .mathjax-tmp/package/es5 _static/mathjax && rm -rf .mathjax-tmp
	test -f $@

site: setup
	TINYINTERP_STRICT=1 $(VENV)/bin/jupyter-book build . --warningiserror --nitpick --keep-going
	@echo "Site built. Open _build/html/index.html, or serve it: $(PY) -m http.server -d _build/html 8000"

book: site

browser-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

# bubblewrap: the sandbox of `tinyinterp grade` (the grading tests run it when root; without it, or
# without root, they grade with --unsafe-no-sandbox and the sandbox's own tests are skipped); libseccomp
# compiles its seccomp filter (through pyseccomp, the `grade` extra that setup installs).
sandbox-deps:
	@command -v bwrap >/dev/null && command -v setpriv >/dev/null && ldconfig -p | grep -q libseccomp.so.2 || \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap util-linux \
	      libseccomp2 >/dev/null; \
	  else echo "note: bubblewrap is missing and this is not root: the sandbox tests will be skipped"; fi

test-unit: setup sandbox-deps
	$(VENV)/bin/pytest -n $(JOBS) --dist loadgroup tests --ignore=tests/site -q

test-notebooks: setup
	TINYINTERP_STRICT=1 $(VENV)/bin/pytest -n $(JOBS) --dist loadfile --nbval-lax --nbval-current-env \
	  --nbval-cell-timeout=300 --nbval-kernel-startup-timeout=300 chapters solutions -q

test-site: site browser-deps
	$(VENV)/bin/pytest tests/site -q

test: test-unit test-notebooks test-site

bench: setup
	$(PY) benchmarks/model.py
	$(PY) benchmarks/harness.py
	$(PY) benchmarks/notebooks.py
	$(PY) benchmarks/grading.py
	$(PY) benchmarks/sae.py
	$(PY) benchmarks/induction.py
	$(PY) benchmarks/patching.py
	$(PY) benchmarks/scaling.py

claims: setup
	$(PY) benchmarks/claims.py

clean:
	rm -rf _build .venv _static/mathjax
