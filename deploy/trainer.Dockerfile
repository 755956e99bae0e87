# syntax=docker/dockerfile:1
#
# PCM trainer image: `pcm-train rl --selector grpc://HOST:50051 ...` (docs/design.md,
# "Console commands").
#
# CPU (default): python:3.11-slim with the CPU torch wheel.
#   docker build -f deploy/trainer.Dockerfile -t pcm-trainer .
# GPU: a CUDA base image and a CUDA torch index (see deploy/compose.gpu.yml, docs/deploy.md):
#   docker build -f deploy/trainer.Dockerfile -t pcm-trainer:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# LIBERO (large: bundles its assets): add --build-arg PCM_EXTRAS=libero.

ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Comma-separated optional-dependency groups of pyproject.toml to install besides `trainer`,
# e.g. "libero".
ARG PCM_EXTRAS=""

LABEL org.opencontainers.image.title="pcm-trainer" \
      org.opencontainers.image.description="PCM trainer client (masked GRPO, MetaWorld/LIBERO)"

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# System libraries: EGL/GL for MuJoCo's offscreen rendering (LIBERO cameras, MUJOCO_GL=egl;
# Mesa renders on CPU, the NVIDIA container runtime supplies the GPU's EGL), glib for OpenCV.
# A CUDA base image (Ubuntu) has no Python: install the distribution's, which must be >= 3.11
# (Ubuntu 24.04 has 3.12).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        libegl1 libegl-mesa0 libgl1 libopengl0 libglib2.0-0 \
 && if ! command -v python3 >/dev/null 2>&1; then \
        apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
    fi \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -c 'import sys; assert sys.version_info >= (3, 11), "PCM needs Python >= 3.11, base image has " + sys.version'

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# torch first, from the chosen index (CPU by default), so the `trainer` extra's `torch>=...`
# requirement is already met and pip never pulls the default CUDA wheels from PyPI.
RUN python3 -m venv /opt/venv \
 && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /src

# The `trainer` extra's dependencies from pyproject.toml alone (cached until it changes), then
# the sources.
COPY pyproject.toml ./
COPY scripts/requirements.py scripts/
RUN python scripts/requirements.py "trainer${PCM_EXTRAS:+,${PCM_EXTRAS}}" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

COPY . .
RUN pip install ".[trainer${PCM_EXTRAS:+,${PCM_EXTRAS}}]" \
 && rm -rf /src

RUN groupadd --system --gid 10001 pcm \
 && useradd --system --uid 10001 --gid pcm --home-dir /home/pcm --create-home \
        --shell /usr/sbin/nologin pcm

# MuJoCo renders headless through EGL (LIBERO); MetaWorld with state observations never renders.
ENV MUJOCO_GL=egl \
    PYOPENGL_PLATFORM=egl

USER 10001:10001
WORKDIR /home/pcm

# The trainer id defaults to the container hostname, which Docker makes unique per replica, so
# `docker compose up --scale trainer=3` gives three distinct trainers on one run.
CMD ["pcm-train", "--help"]
