#!/usr/bin/env bash
# Wheels of the project's runtime dependencies for a GPU machine that has Python 3.12 and
# PyTorch but no package index (such as a lent, offline GPU box): downloads them here into
# .whl/ (git-ignore it), for `scripts/gpu-check.sh` to run there:
#
#   bash scripts/gpu-wheels.sh                          # here, with network
#   # there, from the repo root, with .whl/ copied along:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD MUJOCO_GL=disable bash scripts/gpu-check.sh
#
# The versions are the ones the CPU suite ran with; `--no-deps` is deliberate (the target keeps
# its own torch, numpy, scipy, matplotlib, rich, httpx, pytest, hypothesis). ~57 MB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${PYVER:-3.12}"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  annotated-doc==0.0.7 annotated-types==0.7.0 farama-notifications==0.0.6 fastapi==0.165.0 \
  glfw==2.11.0 grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 \
  gymnasium==1.4.0 hiredis==3.5.0 ijson==3.6.0 metaworld==3.1.1 mujoco==3.3.0 opentelemetry-api==1.45.2 \
  orjson==3.13.0 protobuf==7.36.2 pydantic==2.13.4 pydantic-core==2.46.4 \
  pydantic-settings==2.14.1 pyopengl==3.1.10 pytest-asyncio==1.5.0 pytest-timeout==2.4.0 \
  python-dotenv==1.2.2 redis==8.1.0 starlette==1.10.0 tenacity==9.2.1 typer==0.29.2 \
  typing-extensions==4.16.0 typing-inspection==0.4.2 uvicorn==0.54.0
echo "wheels in .whl/ ($(du -sh .whl | cut -f1))"
