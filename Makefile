# Two entry points for a fresh machine: `make quickstart` and `make test`.
# Each creates .venv if missing, installs torch==2.13.0 first (the local CPU wheel,
# so pip never pulls CUDA packages), then the project, then runs its job.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: quickstart test lint typecheck clean browser

$(VENV)/.torch:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	touch $@

$(VENV)/.base: $(VENV)/.torch pyproject.toml
	$(PIP) install -e .
	touch $@

$(VENV)/.dev: $(VENV)/.torch pyproject.toml
	$(PIP) install -e '.[dev]'
	touch $@ $(VENV)/.base

# The whole lifecycle on generated data (+ ../shared/datasets when present): data, tokenizer,
# pretrain, LoRA SFT, DPO, eval, gate, serve. Re-running it is instant (step cache).
quickstart: $(VENV)/.base
	$(VENV)/bin/lmops quickstart --workdir lmops-quickstart

LINT_DIRS := $(wildcard src tests benchmarks)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check $(LINT_DIRS)
	$(VENV)/bin/ruff format --check $(LINT_DIRS)

typecheck: $(VENV)/.dev
	$(VENV)/bin/mypy

# Debian's chromium for the console's browser tests (tests/web), never a Playwright
# download; best effort: without it (or without root) those tests skip with the reason.
browser:
	@test -x /usr/bin/chromium || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  >/dev/null 2>&1 || echo "chromium could not be installed; console browser tests will skip"

# --durations: the slowest tests in every CI log (the suite's budget is ~15 minutes).
# Two pytest-xdist workers, a test file each at a time (its module fixtures stay on one
# worker): one per core of the CI machine. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: $(VENV)/.dev lint typecheck browser
	$(VENV)/bin/pytest -q --durations=25 -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
