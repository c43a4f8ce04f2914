# The operator and the agent in one image: `connbalance run` or `connbalance agent`.
# Only their runtime dependencies: no simulator (connbalance_sim is a distribution of its own),
# no plotting, no test tools. `make lint` checks this file with hadolint.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
# The product only: the simulator (operator/connbalance_sim, and the sim extra) stays out.
COPY operator/connbalance ./operator/connbalance
# Wheels of connbalance and of its runtime dependencies alone (no extras).
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/connbalance/connbalance
LABEL org.opencontainers.image.title="connbalance" \
      org.opencontainers.image.description="Keeps long-lived client connections evenly spread over the pods of an HA server: the operator (connbalance run) and the pod-side agent (connbalance agent)." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
# What the agent's two modes run: iproute2 (ss, for reset mode's socket view) and nftables (nft,
# for reset mode's self-expiring steering rule). Not pinned to versions: the base image's Debian
# release fixes them, and its security updates should come in with every build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 nftables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
# Only what was built above: nothing is fetched from an index here.
RUN pip install --no-cache-dir --no-index --find-links /wheels /wheels/connbalance-*.whl \
    && rm -rf /wheels
ENV PYTHONUNBUFFERED=1
# Non-root by default; the agent in reset mode is given UID 0 and NET_ADMIN by its pod spec.
USER 65532:65532
ENTRYPOINT ["connbalance"]
CMD ["--help"]
