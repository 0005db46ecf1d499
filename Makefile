# vitalcast: `make demo` runs the product, `make test` checks everything.
# Needs only Python 3.11, make and git; everything else is installed from the lock file.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
UV := .tools/bin/uv
UV_VERSION := 0.13.8
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
# One OpenMP/BLAS thread per process: the tests run serially, and HistGradientBoosting with
# a thread per core on a busy 2-core machine oversubscribes it (20x slower, measured).
export OMP_NUM_THREADS ?= 1

.PHONY: install demo test lint typecheck pytest bench audit clean wheelhouse image test-container

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The demo needs only the runtime dependencies (a faster first install); tests need the
# dev group too (test servers, browser driver, Spark). --inexact keeps whichever set is
# already there, so the two targets never uninstall each other's packages.
$(VENV)/.runtime: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --inexact --no-dev --python $(PYTHON)
	@touch $@

$(VENV)/.installed: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --inexact --python $(PYTHON)
	@touch $@ $(VENV)/.runtime

install: $(VENV)/.installed

demo: $(VENV)/.runtime
	$(VENV)/bin/vitalcast demo

lint: install
	$(VENV)/bin/ruff format --check src tests bench deploy
	$(VENV)/bin/ruff check src tests bench deploy

typecheck: install
	$(VENV)/bin/mypy

pytest: install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done

# Container image. `make wheelhouse` downloads every locked runtime dependency as a wheel
# (hash-checked against uv.lock) plus the project's own wheel into ./wheelhouse, so that
# `podman build --network=none` / `docker build --network=none` works in an air-gapped
# hospital: copy the repository with its wheelhouse across, then build. The wheels are
# for CPython 3.11 on glibc Linux (Debian bookworm's glibc 2.36) on WHEEL_ARCH.
WHEELHOUSE := wheelhouse
WHEEL_ARCH ?= $(shell uname -m)
# pip needs every accepted glibc tag spelled out (it does not expand manylinux_2_36).
WHEEL_PLATFORMS := $(foreach v,$(shell seq 36 -1 5),--platform manylinux_2_$(v)_$(WHEEL_ARCH)) \
	$(foreach t,manylinux2014 manylinux2010 manylinux1,--platform $(t)_$(WHEEL_ARCH))
IMAGE ?= localhost/vitalcast:latest
BASE_IMAGE ?= python:3.11-slim
CONTAINER_ENGINE ?= podman

wheelhouse: $(WHEELHOUSE)/.complete

$(WHEELHOUSE)/.complete: uv.lock pyproject.toml deploy/wheelhouse_requirements.py \
		$(shell git ls-files src 2>/dev/null) | $(VENV)/.installed
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(UV) export --frozen --no-dev --no-emit-project --format requirements-txt \
		--output-file $(WHEELHOUSE)/requirements.txt --quiet
	$(VENV)/bin/python deploy/wheelhouse_requirements.py \
		$(WHEELHOUSE)/requirements.txt $(WHEELHOUSE)/download.txt $(WHEEL_ARCH)
	.tools/bin/python -m pip download --quiet --disable-pip-version-check \
		--only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none \
		$(WHEEL_PLATFORMS) \
		--requirement $(WHEELHOUSE)/download.txt --dest $(WHEELHOUSE)
	$(UV) build --wheel --out-dir $(WHEELHOUSE) --quiet
	@touch $@
	@echo "wheelhouse: $$(ls $(WHEELHOUSE)/*.whl | wc -l) wheels, $$(du -sh $(WHEELHOUSE) | cut -f1)"

image: wheelhouse
	$(CONTAINER_ENGINE) build --network=none --format docker --file deploy/Dockerfile \
		--build-arg BASE_IMAGE=$(BASE_IMAGE) --tag $(IMAGE) .

# Build the image on the local base image, run it against PostgreSQL and score a patient
# through the API (deploy/test-container.sh; needs root for podman, as in CI).
test-container: install wheelhouse
	PYTHON=$(VENV)/bin/python deploy/test-container.sh

# Known vulnerabilities in the locked runtime dependencies (needs the PyPI JSON API or
# OSV). --strict: a package that cannot be checked fails the run instead of passing
# silently. Accepted findings, with reasons, live in pip-audit-allowlist.txt.
audit: install
	$(UV) export --frozen --no-dev --no-emit-project --quiet -o $(VENV)/requirements-audit.txt
	$(VENV)/bin/pip-audit --strict --disable-pip --progress-spinner off \
		-r $(VENV)/requirements-audit.txt \
		$$(grep -v '^#' pip-audit-allowlist.txt | awk 'NF {print "--ignore-vuln", $$1}')

clean:
	rm -rf $(VENV) .tools .mypy_cache .pytest_cache .ruff_cache $(WHEELHOUSE)
