# The environment lives in .venv; every target creates or refreshes it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
WORK ?= work
# Recipes read WORK from the environment, quoted ("$$WORK"): a folder name with spaces, quotes or
# a leading dash stays one argument, so `make clean` cannot delete, nor `make run` write, another folder.
export WORK

.PHONY: run test lint format bench clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,gcp,dask]'
	touch $(STAMP)

# The main job on the embedded default: generate -> train -> evaluate -> export -> predict.
run: $(STAMP)
	@PYTHON=$(BIN)/python bash scripts/run_default.sh "$$WORK"

# The whole suite, linter included.
test: $(STAMP) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m bench all

# Deletes WORK only if `make run` made it (it leaves a .moving-line-work file there): a mistyped WORK
# is refused, not deleted.
clean:
	@if [ -e "$$WORK" ] && [ ! -e "$$WORK/.moving-line-work" ]; then \
		echo "make clean: error: $$WORK was not made by make run (it holds no .moving-line-work); delete it yourself if you mean to" >&2; \
		exit 2; \
	fi
	rm -rf -- "$$WORK" build dist *.egg-info .pytest_cache
