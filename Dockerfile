# The operator and the agent in one image: `connbalance run` or `connbalance agent`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
# The product only: the simulator (operator/connbalance_sim, and the sim extra) stays out.
COPY operator/connbalance ./operator/connbalance
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 nftables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 65532:65532
ENTRYPOINT ["connbalance"]
CMD ["--help"]
