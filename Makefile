# vitalcast: `make demo` runs the product, `make test` checks everything.
# Needs only Python 3.11, make and git; everything else is installed from the lock file.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
UV := .tools/bin/uv
UV_VERSION := 0.13.8
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never

.PHONY: install demo test lint typecheck pytest bench audit clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/vitalcast demo

lint: install
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/ruff check src tests bench

typecheck: install
	$(VENV)/bin/mypy

pytest: install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done

# Known vulnerabilities in the locked runtime dependencies (needs the PyPI JSON API or
# OSV). --strict: a package that cannot be checked fails the run instead of passing
# silently. Accepted findings, with reasons, live in pip-audit-allowlist.txt.
audit: install
	$(UV) export --frozen --no-dev --no-emit-project --quiet -o $(VENV)/requirements-audit.txt
	$(VENV)/bin/pip-audit --strict --disable-pip --progress-spinner off \
		-r $(VENV)/requirements-audit.txt \
		$$(grep -v '^#' pip-audit-allowlist.txt | awk 'NF {print "--ignore-vuln", $$1}')

clean:
	rm -rf $(VENV) .tools .mypy_cache .pytest_cache .ruff_cache
