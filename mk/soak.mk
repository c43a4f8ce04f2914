# The soak (tests/faults/soak.py): minutes of random rolling restarts, client churn and pod
# deletions against the simulated pool on the test control plane, the operator running through
# it all; one JSON document of what held. Not part of `make test` (a tiny run of it is).
SOAK_MINUTES ?= 20
SOAK_OUT ?= out/soak.json

.PHONY: soak
soak: system-deps venv cluster-build ## SOAK_MINUTES (default 20) of rollouts, churn and pod deletions under the operator; JSON to out/soak.json
	@mkdir -p $(dir $(SOAK_OUT))
	CACHE=$(CACHE) $(PY) -m tests.faults.soak --minutes $(SOAK_MINUTES) --cluster-run $(CLUSTER_RUN) --out $(SOAK_OUT)
