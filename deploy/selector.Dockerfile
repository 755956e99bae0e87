# syntax=docker/dockerfile:1
#
# PCM selector image: `pcm-selector serve` (gRPC :50051; HTTP :8000 with /metrics, /healthz,
# /readyz), configured through PCM_* environment variables (docs/design.md, "Selector
# settings").
#
# Build from the repository root (the root .dockerignore keeps the context small):
#   docker build -f deploy/selector.Dockerfile -t pcm-selector .

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# build: a virtual environment with the project and its dependencies, copied whole into the
# runtime stage (same base image, same path, so the venv's interpreter links stay valid).
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src

# Only the `selector` extra (the contract and the service; no torch, no simulators). Its
# dependencies first, from pyproject.toml alone, so that editing the sources does not reinstall
# them (this layer is rebuilt only when pyproject.toml changes).
COPY pyproject.toml ./
COPY scripts/requirements.py scripts/
RUN python scripts/requirements.py selector > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# Then the project itself (no dependency resolution left to do).
COPY . .
RUN pip install --no-deps .

# ---------------------------------------------------------------------------------------------
# runtime: the venv and an unprivileged user, nothing else.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="pcm-selector" \
      org.opencontainers.image.description="PCM chunk selector (gRPC + HTTP, Prometheus /metrics)"

# A fixed numeric uid/gid so orchestrators can enforce runAsNonRoot.
RUN groupadd --system --gid 10001 pcm \
 && useradd --system --uid 10001 --gid pcm --home-dir /home/pcm --create-home \
        --shell /usr/sbin/nologin pcm

COPY --from=build /opt/venv /opt/venv

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PCM_HOST=0.0.0.0 \
    PCM_GRPC_PORT=50051 \
    PCM_HTTP_PORT=8000

USER 10001:10001
WORKDIR /home/pcm

EXPOSE 50051 8000

# Liveness: /healthz answers while the process is up (readiness, /readyz, also needs the store;
# docker-compose.yml uses that one so trainers start only once Redis is reachable). The slim
# image has no curl, so Python's urllib does the request; any non-2xx status raises, exit 1.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PCM_HTTP_PORT', '8000'), timeout=2)"]

CMD ["pcm-selector", "serve"]
