# Two entry points, both idempotent: `make demo` and `make test`.
# Set-up uses pip (not uv/poetry) because pip resolves the pinned torch from
# the local wheel cache on the build machines instead of fetching a CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test venv bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/zoattack run --images 100 --budget 1000 --out runs/demo --save-images

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/synthetic.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
