# Two entry points, both idempotent: `make demo` and `make test`.
# Set-up uses pip (not uv/poetry) because pip resolves the pinned torch from
# the local wheel cache on the build machines instead of fetching a CUDA build;
# constraints.txt keeps every extra (timm, robustbench, ray) from moving torch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := dev,ray,models
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
# Fashion-MNIST (60k train / 10k test) from Debian: the loader tests and `zoattack train`
# read it here. The package holds only data, so installing it is safe on any Debian.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint venv data bench clean

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

test: $(STAMP) data lint
	$(PY) -m pytest -q

# The gate every change passes: lint and format (ruff), types (mypy on zoattack/), and the
# layer contract (import-linter: nothing imports upward; see README "Architecture").
lint: $(STAMP)
	$(VENV)/bin/ruff check zoattack tests benchmarks
	$(VENV)/bin/ruff format --check zoattack tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/synthetic.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
