# tfpipe: the two commands of the README are `make demo` and `make test`.
# Both create .venv from requirements.txt + setup.cfg on first use.
PYTHON ?= python3
VENV ?= .venv
REQUIREMENTS ?= requirements.txt
WORKDIR ?= tfpipe-demo
ZOO_WORKDIR ?= zoo-demo
DIST ?= dist
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# two workers (pytest-xdist): `make test` took 1255-1483 s on 2026-12-08 from a fresh clone, installs included
PYTEST_WORKERS ?= 2

.PHONY: install demo zoo-demo test test-tfio wheel lint bench clean

# uv installs the same pinned wheels as pip, in parallel: ~30 s instead of 160-450 s per environment.
# --compile-bytecode: pip writes .pyc files at install, uv only when asked; without them, and with
# PYTHONDONTWRITEBYTECODE=1 (as on CI), every process compiles TensorFlow and Keras again (import
# tensorflow: 12.9 s instead of 5.6 s here, in each of the suite's hundreds of TF processes).
UV_VERSION ?= 0.13.10
UV := $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python

$(VENV)/.installed: $(REQUIREMENTS) setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) -r $(REQUIREMENTS)
	$(UV) --no-deps -e .
	touch $@

install: $(VENV)/.installed  ## create .venv with the pinned CPU stack and tfpipe itself

demo: install  ## run the main job on built-in synthetic data
	$(BIN)/tfpipe demo --workdir $(WORKDIR)

zoo-demo: install  ## the experiment loop in miniature: sweep, zoo, runs ls, export, predict, blend, score
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/zoo-demo.sh $(ZOO_WORKDIR)

test: install  ## the whole test suite (what CI runs), on PYTEST_WORKERS processes; -v names each test
	$(BIN)/python -m pytest -v --durations=20 -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# TF 2.17 with the tensorflow-io plugin: the plugin's gs:// tests and every test of the library's own steps.
# The README's end-to-end runs (marker e2e), the benchmark runs (bench), the multi-process scenarios
# (scenario: kills, signals, sweeps, launches, notebooks) and the command line's own behaviour (cli: one-line
# errors, exit codes, kill points) run once, in `make test`: each library step they go through is tested
# here too, and their engines (Keras, Optuna, Ray, MLflow) are the same versions in both sets.
test-tfio:  ## the library's own tests on TF 2.17 + tensorflow-io (requirements-tfio.txt, .venv-tfio)
	$(MAKE) test VENV=.venv-tfio REQUIREMENTS=requirements-tfio.txt PYTEST_ARGS='-m "not e2e and not bench and not scenario and not cli"'

wheel:  ## dist/tfpipe-<version>-py3-none-any.whl: what the notebooks install (e.g. as a Kaggle dataset)
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-deps -w $(DIST) .

bench: install  ## every benchmark (each < 5 min here); last line of each is JSON
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b | tail -n 1; done

lint: install
	$(BIN)/ruff check tfpipe data_prep tests bench

clean:
	rm -rf $(VENV) .venv-tfio $(WORKDIR) $(ZOO_WORKDIR) $(DIST) .pytest_cache
