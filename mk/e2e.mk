# The operator's end-to-end figures: the rollout scenario on the test cluster writes what it
# measured as JSON, and docs/e2e.md is rendered from it with the machine and its load average.
E2E_FIGURES ?= out/e2e.json

.PHONY: e2e-figures
e2e-figures: system-deps venv helm cluster-build ## the rollout scenario on the test cluster; its figures into docs/e2e.md
	@mkdir -p $(dir $(E2E_FIGURES))
	CONNBALANCE_E2E_FIGURES=$(abspath $(E2E_FIGURES)) $(PY) -m pytest -q -s \
	  tests/e2e/test_operator_scenarios.py -k test_after_a_rolling_restart
	$(PY) -m tests.e2e.figures $(E2E_FIGURES) --out docs/e2e.md

# The operator's scenarios (issue 9, item 8) on one chart install and one pool, and the Teleport
# rollout (issue 10). Both are in `make test`; this target runs them alone.
SCENARIOS := tests/e2e/test_operator_scenarios.py
TELEPORT_ROLLOUT := tests/e2e/test_teleport_rollout.py

.PHONY: e2e-scenarios
e2e-scenarios: system-deps venv helm cluster-build goclients-build ## the operator's scenarios and the Teleport rollout alone (about 8 min)
	$(PY) -m pytest $(SCENARIOS) $(TELEPORT_ROLLOUT) $(PYTEST_ARGS)
