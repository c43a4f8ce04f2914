# The simulator (operator/connbalance_sim, its own distribution in sim/, which `make venv`
# installs): `make demo` and `make bench` are in the Makefile; these run its tests alone and
# regenerate the figures kept in docs/.
.PHONY: test-sim
test-sim: venv ## only the simulator tests (about 2 minutes, the quick bench included)
	$(PY) -m pytest tests/sim $(PYTEST_ARGS)

.PHONY: bench-quick
bench-quick: venv ## the bench's small run (under 90 s), JSON on stdout
	$(VENV_BIN)/connbalance bench --quick --json

.PHONY: docs-figures
docs-figures: venv ## regenerate docs/demo.png, docs/bench.md and docs/bench.png (about 8 minutes)
	$(VENV_BIN)/connbalance demo --no-tty --docs
	$(VENV_BIN)/connbalance bench --docs
