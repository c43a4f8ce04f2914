# The chart's generated files, and the image's Dockerfile checked by hadolint.

.PHONY: chart-docs
chart-docs: venv ## regenerate the chart's values.schema.json and README values table from values.yaml
	$(PY) -m tests.chart.generate
