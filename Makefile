# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the pinned stack on first use (tools/setup_env.sh; a no-op after).
PY := .venv/bin/python
export PYTHONHASHSEED := 0

.PHONY: setup demo test test-quick clean

setup:
	@bash tools/setup_env.sh

demo: setup
	$(PY) -m tools.demo --work-dir work_dirs/demo

test: setup
	$(PY) -m pytest -q tests

# the development loop: everything but the tests marked slow (pytest.ini), a few minutes
test-quick: setup
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf work_dirs .pytest_cache

# The oldest tested stack (torch 2.1.2, numpy 1.24, mmcv 2.1.0, mmdeploy 1.3.1) in .venv-torch2.1:
# its demo and the whole test suite, tests/test_mmdeploy.py included (docs/install.md).
PY21 := .venv-torch2.1/bin/python

.PHONY: setup-torch2.1 test-torch2.1

setup-torch2.1:
	@DFBF_STACK=torch2.1 bash tools/setup_env.sh

test-torch2.1: setup-torch2.1
	$(PY21) -m tools.demo --work-dir work_dirs/demo_t21
	$(PY21) -m pytest -q tests
