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
