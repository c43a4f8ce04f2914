"""The test control plane: real etcd, kube-apiserver, kube-controller-manager and Prometheus, built
from Kubernetes' Go modules, plus the one fake, a small Python kubelet. See README.md here.

Rule: nothing here imports connbalance; tests of connbalance use this cluster, not the reverse.
"""
