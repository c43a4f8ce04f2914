# The operator's end-to-end figures: the rollout scenario on the test cluster writes what it
# measured as JSON, and docs/e2e.md is rendered from it with the machine and its load average.
E2E_FIGURES ?= out/e2e.json

.PHONY: e2e-figures
e2e-figures: system-deps venv helm cluster-build ## the rollout scenario on the test cluster; its figures into docs/e2e.md
	@mkdir -p $(dir $(E2E_FIGURES))
	CONNBALANCE_E2E_FIGURES=$(abspath $(E2E_FIGURES)) $(PY) -m pytest -q -s \
	  tests/e2e/test_operator_scenarios.py -k test_after_a_rolling_restart
	$(PY) -m tests.e2e.figures $(E2E_FIGURES) --out docs/e2e.md
