# The simulator (operator/connbalance_sim, its own distribution in sim/, which `make venv`
# installs): `make demo` and `make bench` are in the Makefile; these run its tests alone and
# regenerate the figures kept in docs/.
.PHONY: test-sim
test-sim: venv ## only the simulator tests (about 2 minutes, the quick bench included)
	$(PY) -m pytest tests/sim $(PYTEST_ARGS)

.PHONY: bench-quick
bench-quick: venv ## the bench's small run, one strategy at a time (about 2.5 minutes), JSON on stdout
	$(VENV_BIN)/connbalance bench --quick --json

.PHONY: docs-figures
docs-figures: venv ## regenerate docs/demo.png, docs/bench.md and docs/bench.png (about 8 minutes)
	$(VENV_BIN)/connbalance demo --no-tty --docs
	$(VENV_BIN)/connbalance bench --docs

.PHONY: bench-matrix
bench-matrix: venv ## the scenario matrix, one run at a time (about 90 minutes): JSON on stdout, out/matrix.json and out/matrix.md
	$(VENV_BIN)/connbalance bench --matrix --json

.PHONY: bench-matrix-quick
bench-matrix-quick: venv ## a smaller matrix (4 cells, 1 seed; under 10 minutes): JSON on stdout, out/matrix.*
	$(VENV_BIN)/connbalance bench --matrix --quick --json
