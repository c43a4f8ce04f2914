# The agent (issue 4): HAProxy is the peer in its benchmark; iproute2 (ss) is already a base package.
# nftables: reset mode's kernel steering, tested in network namespaces (issue 10).
APT_PACKAGES += haproxy nftables util-linux  # util-linux: setpriv, in the reset-mode start test

.PHONY: bench-agent
bench-agent: system-deps venv ## agent proxy mode vs direct and HAProxy, reset-scan cost: JSON (about 2-3 min)
	PYTHONPATH=$(CURDIR):$(CURDIR)/operator $(PY) -m tests.agent.bench

.PHONY: bench-agent-scale
bench-agent-scale: system-deps venv ## the agent at 100,000 sockets: reset scan and selection, idle CPU; proxy RSS at 20,000: JSON (about 2 min)
	PYTHONPATH=$(CURDIR):$(CURDIR)/operator $(PY) -m tests.agent.bench_scale
