# The Prometheus load source (tests/prometheus): a standalone Debian Prometheus per test session
# on its own loopback address and free port (127.0.5.1), scraping exporter processes on
# 127.0.5.10 and up. The package's own service (port 9090) is never used: the image's
# policy-rc.d keeps apt from starting it, and if one runs anyway nothing here talks to it.
# openssl makes the throwaway CA and certificate of the TLS tests.
APT_PACKAGES += prometheus openssl

.PHONY: test-prometheus
test-prometheus: system-deps venv ## only the Prometheus load source and live `plan` tests (about 2 minutes)
	$(PY) -m pytest tests/prometheus $(PYTEST_ARGS)
