# Two commands for a fresh machine with Python 3.11+ and make:
#   make demo   runs the main job (PPO on CartPole-v1, 8 seeds in one compiled call)
#   make test   runs the test suite
# Each creates .venv and installs pgjax into it when needed (idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pgjax-installed
# Test processes (pytest-xdist, one test file per process so module fixtures compile once): 2 fits a
# 2-core machine; more cores can take more (`make test TEST_WORKERS=4`), each worker holds its own JAX.
TEST_WORKERS ?= 2

.PHONY: demo test install theorem offline bench bench-smoke clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "pgjax needs Python 3.11+, found " + sys.version.split()[0]'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python experiments/train.py --algo ppo --env CartPole-v1 --num-seeds 8 --total-timesteps 500000 --out runs/demo-ppo-cartpole --overwrite

theorem: $(STAMP)
	$(BIN)/python experiments/policy_gradient_theorem.py

offline: $(STAMP)
	$(BIN)/python experiments/offline_dualdice.py

# Two phases: the tests compiled with XLA:CPU's faster-compiling older emitters, then those that assert bit-for-bit
# equality of separately compiled programs, with the default emitters users compile with (tests/conftest.py).
test: $(STAMP)
	PGJAX_TEST_FAST_COMPILE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not exact_compiler"
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m exact_compiler

bench: $(STAMP)
	$(BIN)/python benchmarks/tabular_bench.py

# Every benchmark script once at a tiny size (about 2.5 min on 2 cores): CI runs it after the tests.
bench-smoke: $(STAMP)
	$(BIN)/python benchmarks/smoke.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
