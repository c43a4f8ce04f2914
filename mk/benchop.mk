# The operator's own cost (issue 14, item 5): N balancers x M pods on a test cluster of its own.
BENCH_OPERATOR_ARGS ?= --sizes 20x10,100x10 --docs docs/operator-bench.md

.PHONY: bench-operator
bench-operator: system-deps venv helm cluster-build ## the operator's RSS, CPU, API requests and PromQL per tick at 20 x 10 and 100 x 10 balancers x pods: JSON and docs/operator-bench.md
	PYTHONPATH=$(CURDIR):$(CURDIR)/operator $(PY) -m tests.benchop.run $(BENCH_OPERATOR_ARGS)
