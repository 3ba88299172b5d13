# One-step install: `make test` and `make demo` create and fill .venv on first use,
# and again only when a requirements file changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint demo install bench clean-venv

install: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel  # the build backend; 3.12+ venvs lack it
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests

# Lint only: `ruff format --check` is left out because the code keeps its own layout
# (hanging indents, several short items a line) and ruff format would rewrite 88 files.
LINT_PATHS := src tests bench *.py

lint: $(STAMP)
	$(PY) -m ruff check $(LINT_PATHS)

demo: $(STAMP)
	$(PY) demo.py

bench: $(STAMP)
	$(PY) bench/train_speed.py --shape mc_maze --device cpu

clean-venv:
	rm -rf $(VENV)
