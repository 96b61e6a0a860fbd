# tfpipe: the two commands of the README are `make demo` and `make test`.
# Both create .venv from requirements.txt + setup.cfg on first use.
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= tfpipe-demo
BIN := $(VENV)/bin

.PHONY: install demo test lint bench clean

$(VENV)/.installed: requirements.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

install: $(VENV)/.installed  ## create .venv with the pinned CPU stack and tfpipe itself

demo: install  ## run the main job on built-in synthetic data
	$(BIN)/tfpipe demo --workdir $(WORKDIR)

test: install  ## the whole test suite (what CI runs); -v names each test as it starts
	$(BIN)/python -m pytest -v

bench: install  ## every benchmark (each < 5 min here); last line of each is JSON
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b | tail -n 1; done

lint: install
	$(BIN)/ruff check tfpipe data_prep tests bench

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache
