# The test control plane (tests/cluster): etcd, kube-apiserver, kube-controller-manager and kubectl
# built from Kubernetes' Go modules, a Python test kubelet, Debian's Prometheus.
APT_PACKAGES += prometheus
TEST_PREREQS += cluster-build
CLUSTER_RUN ?= $(CACHE)/cluster-run

.PHONY: cluster-build
cluster-build: venv ## build clusterbin and prometheus for the test cluster (cached by source hash; cold: ~20+ min)
	@CACHE=$(CACHE) $(PY) -m tests.cluster.build

.PHONY: cluster-up
cluster-up: system-deps cluster-build ## start the test cluster in the background; prints KUBECONFIG= and PROMETHEUS=
	@CACHE=$(CACHE) $(PY) -m tests.cluster.cluster up --run-dir $(CLUSTER_RUN)

.PHONY: cluster-down
cluster-down: ## stop every process cluster-up started
	@CACHE=$(CACHE) $(PY) -m tests.cluster.cluster down --run-dir $(CLUSTER_RUN)
