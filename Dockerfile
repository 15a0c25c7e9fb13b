# syntax=docker/dockerfile:1
# The engine as a container: `docker build -t iot-forwarding-engine .`
#
#   docker run --rm -v "$PWD/rules.yaml:/etc/engine/rules.yaml:ro" \
#       -v engine-state:/var/lib/engine iot-forwarding-engine
#
# Stage 1 compiles the Cython core into a wheel; stage 2 is a slim runtime
# with no compiler, running as an unprivileged user. compose.yaml runs it
# with RabbitMQ and PostgreSQL for a local trial.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
# A C compiler for engine/_core.pyx (and any dependency without a wheel). Not
# pinned: this stage is thrown away, and pins break on every Debian point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY engine ./engine
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="iot-forwarding-engine" \
      org.opencontainers.image.description="IoTDA-style forwarding rules on device notifications" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 engine \
    && useradd --system --uid 10001 --gid engine --home-dir /var/lib/engine --create-home \
       --shell /usr/sbin/nologin engine
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-compile /wheels/*.whl && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/engine
ENV PYTHONUNBUFFERED=1
# State (backlog, default dead letters) lives in the working directory: mount a volume there.
VOLUME ["/var/lib/engine"]
# 9108: /metrics, /healthz, /readyz; 8088: HTTP ingest, when the rule file has one.
EXPOSE 9108 8088
# Ready = sources started and destinations open (503 before that and while stopping).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9108/readyz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["engine"]
CMD ["run", "/etc/engine/rules.yaml", "--status", "log", "--log-format", "json", \
     "--metrics-listen", "0.0.0.0:9108"]
