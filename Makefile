# Two entry points for contributors, both idempotent: `make demo` and `make test`.
# Set-up uses pip (not uv/poetry) because pip resolves the pinned torch from
# the local wheel cache on the build machines instead of fetching a CUDA build.
# pyproject.toml states the supported ranges; constraints.txt pins the versions every target
# here installs (and CI tests), so no extra (timm, robustbench, ray) moves torch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := dev,docs,ray,models
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
# Benchmark peers that cannot share the venv's requirements (see `peers` below).
PEERS := $(VENV)/peers
# Fashion-MNIST (60k train / 10k test) from Debian: the loader tests and `zoattack train`
# read it here. The package holds only data, so installing it is safe on any Debian.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint docs venv data bench peers clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

data: $(FASHION_MNIST)

$(FASHION_MNIST):
	@if command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "no apt-get: Fashion-MNIST loader tests skip here (and fail when CI is set)"; \
	fi

# --overwrite: the demo is meant to be rerun; a user's own --out is never replaced silently.
demo: $(STAMP)
	$(VENV)/bin/zoattack run --images 100 --budget 1000 --out runs/demo --save-images --overwrite

# pip check: every installed package's declared requirements hold (no extra broke another).
test: $(STAMP) data lint
	$(PY) -m pip check
	$(PY) -m pytest -q

# The gate every change passes: lint and format (ruff), types (mypy on zoattack/), the
# layer contract (import-linter: nothing imports upward; see docs/architecture.md) and the
# documentation site (a broken link or a stale reference fails the strict build).
lint: $(STAMP)
	$(VENV)/bin/ruff check zoattack tests benchmarks docs/_hooks
	$(VENV)/bin/ruff format --check zoattack tests benchmarks docs/_hooks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(MAKE) --no-print-directory docs

# The site goes to site/ (ignored by git); `.venv/bin/mkdocs serve` previews it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# The peers' extra, and torchattacks on its own: it declares requests~=2.25.1 (a 2021 pin) but
# never imports requests, and installed with the venv it would downgrade requests and break
# other packages' requirements. So it goes, without dependencies, into $(PEERS), a folder
# benchmarks/_common.py appends to sys.path; the venv itself stays whole (`pip check`).
peers: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS),bench]'
	$(PY) -m pip install --quiet -c constraints.txt --no-deps --upgrade --target $(PEERS) torchattacks

bench: peers
	$(PY) benchmarks/synthetic.py

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache
