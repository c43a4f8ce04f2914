"""``make bench-operator``: the operator's own cost at N ConnectionBalancers x M pods, on the test
control plane and its Prometheus (``run``), with one shared exporter standing in for every pod's
metrics and the pods' agents (``loadmodel``)."""
