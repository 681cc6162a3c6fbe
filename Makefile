# The environment lives in .venv; every target creates or refreshes it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
WORK ?= work
# Recipes read WORK from the environment, quoted ("$$WORK"): a folder name with spaces, quotes or
# a leading dash stays one argument, so `make clean` cannot delete, nor `make run` write, another folder.
export WORK

.PHONY: run test test-fast lint format bench clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,gcp,dask,ray]'
	touch $(STAMP)

# The main job on the embedded default: generate -> train -> evaluate -> export -> predict.
run: $(STAMP)
	@PYTHON=$(BIN)/python bash scripts/run_default.sh "$$WORK"

# The whole suite, linter included, on every core.
test: $(STAMP) lint
	$(BIN)/python -m pytest -n auto --dist loadgroup

# The fast loop: every test not marked slow, on every core, then the line coverage of pipeline/ and trainer/
# (the data stays in .coverage: `coverage report -m` lists the lines no test ran).
test-fast: $(STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/python -m coverage run -m pytest -n auto --dist loadgroup -m "not slow" -q --durations=5
	@$(BIN)/python -m coverage combine -q
	@echo "line coverage: pipeline/ $$($(BIN)/python -m coverage report --include='pipeline/*' --format=total)%," \
		"trainer/ $$($(BIN)/python -m coverage report --include='trainer/*' --format=total)%," \
		"both $$($(BIN)/python -m coverage report --format=total)% (make test-fast; details: coverage report -m)"

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
	rm -rf -- "$$WORK" build dist *.egg-info .pytest_cache .coverage .coverage.*
