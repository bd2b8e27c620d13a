# Two entry points a new user types: `make run` and `make test` (README.md).
# Both create (or reuse) the virtualenv in $(VENV) first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The team's machines and CI have no internet but keep the official MedMNIST files in
# ../shared/data/medmnist: use them when that folder exists (else ~/.medmnist, downloaded).
export TSYND_DATA_DIR ?= $(abspath $(wildcard ../shared/data/medmnist))
# Extra absl flags for `make run`, e.g. make run ARGS="--method=baseline".
ARGS ?=

.PHONY: install install-ray run test clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Optional: Ray, for sweeps on a cluster (experiment --launcher=ray; BUILD.md): the `ray`
# extra of pyproject.toml. Without it the Ray launcher's tests are skipped.
install-ray: $(STAMP)
	$(PY) -m pip install --quiet --no-build-isolation -e '.[ray]'

run: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m tsynd_tf.train --flagfile=flags/pneumoniamnist_10pct.cfg $(ARGS)

# Two test processes, a group of test files each at a time (tests/conftest.py: a file, or
# the files sharing a costly session fixture), so module and those session fixtures are
# built once (BUILD.md, "Tests"). make test TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

clean:
	rm -rf $(VENV)
